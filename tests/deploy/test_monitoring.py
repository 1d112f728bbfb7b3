"""The Grafana dashboard, the Prometheus alert rules and the HPA's adapter rules parse, and
every metric they name is one the servers really export."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, load_yaml

_METRIC = re.compile(r"\bmodelplane_[a-z0-9_]+\b")


@pytest.fixture(scope="module")
def exported() -> set[str]:
    """Every series name the sidecar, drift, prediction-log and control-plane metrics expose,
    taken from the metric objects themselves."""
    from prometheus_client import CollectorRegistry

    from modelplane.server.interceptor import RpcMetrics
    from modelplane.server.logging import export_write_errors
    from sidecar.driftfeed import DriftGauges
    from sidecar.metrics import SidecarMetrics
    from sidecar.predlog.metrics import PredictionLogMetrics

    registry = CollectorRegistry()
    SidecarMetrics(registry, "m", "1", "CPUExecutionProvider")
    DriftGauges(registry, "m", "1")
    PredictionLogMetrics(registry)
    RpcMetrics("modelplane_controlplane", registry)
    export_write_errors(registry)
    names: set[str] = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    for family in registry.collect():
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
    return names


def _promql(expr: str) -> str:
    """``expr`` with Grafana's variables replaced by values PromQL accepts."""
    return (
        expr.replace("$__rate_interval", "5m")
        .replace("$namespace", "ml-serving")
        .replace("$model", "fraud")
    )


def test_alert_rules(exported: set[str]) -> None:
    import promql_parser

    doc = yaml.safe_load((DEPLOY / "monitoring/prometheus-rules.yaml").read_text())
    assert set(doc) == {"groups"}
    alerts: dict[str, dict[str, Any]] = {}
    for group in doc["groups"]:
        assert set(group) <= {"name", "interval", "rules"}
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert rule["alert"] not in alerts, rule["alert"]
            alerts[rule["alert"]] = rule
            promql_parser.parse(rule["expr"])
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
            names = set(_METRIC.findall(rule["expr"]))
            assert names and names <= exported, names - exported
    text = " ".join(r["expr"] for r in alerts.values())
    assert "modelplane_drift_" in text  # drift
    assert "modelplane_inference_requests_total" in text  # error rate
    assert "modelplane_inference_request_duration_seconds_bucket" in text  # latency
    assert "modelplane_log_write_errors_total" in text  # logs lost


def test_grafana_dashboard(exported: set[str]) -> None:
    import promql_parser

    dashboard = json.loads((DEPLOY / "monitoring/grafana-dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["title"]
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "model"} <= variables
    used: set[str] = set()
    for panel in panels:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
            promql_parser.parse(_promql(target["expr"]))
            used |= set(_METRIC.findall(target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            used |= set(_METRIC.findall(variable["definition"]))
    assert used <= exported, used - exported
    for metric in (
        "modelplane_inference_in_flight_requests",
        "modelplane_inference_queue_rows",
        "modelplane_drift_psi",
        "modelplane_controlplane_requests_total",
    ):
        assert metric in used


def test_hpa_metrics_come_from_the_adapter_rules(exported: set[str]) -> None:
    (hpa,) = load_yaml(DEPLOY / "examples/hpa.yaml")
    (adapter,) = load_yaml(DEPLOY / "examples/prometheus-adapter-config.yaml")
    rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    published = {rule["name"]["as"] for rule in rules}
    for rule in rules:
        (series,) = _METRIC.findall(rule["seriesQuery"])
        assert series in exported
        assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    assert wanted == {
        "modelplane_inference_in_flight_requests",
        "modelplane_inference_queue_rows",
    }
    assert wanted <= published
    deployments = load_yaml(DEPLOY / "examples/model-deployment.yaml")
    target = hpa["spec"]["scaleTargetRef"]
    assert any(
        d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"] for d in deployments
    )


def _long_calls() -> set[str]:
    """Control-plane methods whose duration is not a unary call's: every streaming RPC (timed
    until the stream ends) and WaitOperation (a long-poll), read from the service descriptors."""
    import importlib

    names = {"WaitOperation"}
    for api in (
        "audit",
        "blobs",
        "deployments",
        "evaluation",
        "governance",
        "operations",
        "registry",
    ):
        module = importlib.import_module(f"modelplane.v1.{api}_pb2")
        for service in module.DESCRIPTOR.services_by_name.values():
            names |= {m.name for m in service.methods if m.client_streaming or m.server_streaming}
    return names


def test_control_plane_latency_leaves_out_streams_and_long_polls() -> None:
    long_calls = _long_calls()
    assert {"WatchDeployment", "UploadBlob", "DownloadBlob", "ExportAuditEvents"} <= long_calls
    rules = yaml.safe_load((DEPLOY / "monitoring/prometheus-rules.yaml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    dashboard = json.loads((DEPLOY / "monitoring/grafana-dashboard.json").read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    timed = [e for e in exprs if "modelplane_controlplane_request_duration_seconds" in e]
    assert timed
    for expr in timed:
        matcher = re.search(r'method!~"([^"]*)"', expr)
        assert matcher, expr
        left_out = set(matcher.group(1).split("|"))
        assert long_calls <= left_out, long_calls - left_out
