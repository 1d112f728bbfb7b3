"""What ModelplaneDriftPSIHigh fires on, worked out on example series: the 100-row guard
applies to the window of the process whose PSI it is, before the series of all pods are
aggregated. promtool (a Go binary, not on PyPI) is not at hand, so a small evaluator of the
PromQL the rule uses (selectors, comparisons with a number, ``and`` with ``on``/``ignoring``,
``max by``) runs the parsed expression; the labels the two gauges carry come from the gauge
objects themselves."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.deploy.conftest import DEPLOY

Series = list[tuple[dict[str, str], float]]
_TARGET = {"namespace": "ml-serving", "job": "sidecars"}  # added by the scrape


def _psi_rule() -> str:
    doc = yaml.safe_load((DEPLOY / "monitoring/prometheus-rules.yaml").read_text())
    (expr,) = [
        r["expr"]
        for g in doc["groups"]
        for r in g["rules"]
        if r["alert"] == "ModelplaneDriftPSIHigh"
    ]
    return str(expr)


def _evaluate(node: Any, data: dict[str, Series]) -> Series:
    """The instant vector ``node`` (a promql_parser expression) yields over ``data``."""
    import promql_parser as p

    if isinstance(node, p.ParenExpr):
        return _evaluate(node.expr, data)
    if isinstance(node, p.VectorSelector):
        assert not node.matchers.matchers, "only bare metric names are evaluated here"
        return list(data.get(node.name, []))
    if isinstance(node, p.AggregateExpr):
        assert str(node.op) == "max" and str(node.modifier).startswith("by"), node
        groups: dict[tuple[tuple[str, str], ...], float] = {}
        for labels, value in _evaluate(node.expr, data):
            key = tuple((k, labels[k]) for k in node.modifier.labels if k in labels)
            groups[key] = max(groups.get(key, value), value)
        return [(dict(k), v) for k, v in groups.items()]
    assert isinstance(node, p.BinaryExpr), type(node)
    op = str(node.op)
    if op == "and":
        matching = node.modifier.matching if node.modifier else None

        def signature(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
            if matching is None:
                return tuple(sorted(labels.items()))
            keep = set(matching.labels)
            if str(matching.type).endswith("Include"):  # on (...)
                return tuple(sorted((k, v) for k, v in labels.items() if k in keep))
            return tuple(sorted((k, v) for k, v in labels.items() if k not in keep))

        right = {signature(labels) for labels, _ in _evaluate(node.rhs, data)}
        return [(lab, v) for lab, v in _evaluate(node.lhs, data) if signature(lab) in right]
    assert isinstance(node.rhs, p.NumberLiteral) and not node.modifier, node
    compare = {">": lambda a, b: a > b, ">=": lambda a, b: a >= b}[op]
    return [(lab, v) for lab, v in _evaluate(node.lhs, data) if compare(v, node.rhs.val)]


def _fires(expr: str, data: dict[str, Series]) -> Series:
    import promql_parser

    return _evaluate(promql_parser.parse(expr), data)


@pytest.fixture(scope="module")
def gauge_labels() -> dict[str, set[str]]:
    """The label names of modelplane_drift_psi and modelplane_drift_window_rows, read from the
    sidecar's gauges (one worker; with several, prometheus_client adds ``pid`` to both)."""
    from prometheus_client import CollectorRegistry

    from sidecar.driftfeed import DriftFamilies

    families = DriftFamilies(CollectorRegistry())
    return {
        "psi": set(families.psi._labelnames),
        "rows": set(families.rows._labelnames),
    }


def test_psi_has_exactly_the_rows_labels_and_feature(gauge_labels: dict[str, set[str]]) -> None:
    # So ``ignoring (feature)`` pairs each PSI series with the window of its own process.
    assert gauge_labels["psi"] - gauge_labels["rows"] == {"feature"}
    assert gauge_labels["rows"] <= gauge_labels["psi"]


def _pods(*pods: tuple[str, str, float, float]) -> dict[str, Series]:
    """(pod, pid, PSI of feature amount, window rows) per sidecar process."""
    data: dict[str, Series] = {"modelplane_drift_psi": [], "modelplane_drift_window_rows": []}
    for pod, pid, psi, rows in pods:
        own = {**_TARGET, "pod": pod, "pid": pid, "model": "fraud", "version": "3"}
        data["modelplane_drift_psi"].append(({**own, "feature": "amount"}, psi))
        data["modelplane_drift_psi"].append(({**own, "feature": "age"}, 0.01))
        data["modelplane_drift_window_rows"].append((own, rows))
    return data


def test_a_small_window_does_not_fire_because_another_pod_saw_many_rows() -> None:
    expr = _psi_rule()
    assert _fires(expr, _pods(("a", "1", 0.9, 12), ("b", "1", 0.1, 5000))) == []
    # The same across the workers of one pod.
    assert _fires(expr, _pods(("a", "1", 0.9, 12), ("a", "2", 0.1, 5000))) == []


def test_a_high_psi_over_a_full_window_fires_once_per_feature_with_its_psi() -> None:
    expr = _psi_rule()
    fired = _fires(expr, _pods(("a", "1", 0.9, 150), ("b", "1", 0.4, 5000), ("c", "1", 0.2, 9)))
    want = {"namespace": "ml-serving", "model": "fraud", "version": "3", "feature": "amount"}
    assert fired == [(want, 0.9)]
    assert _fires(expr, _pods(("a", "1", 0.2, 150), ("b", "1", 0.25, 5000))) == []


def test_the_row_guard_is_inside_the_aggregation() -> None:
    import promql_parser as p

    tree = p.parse(_psi_rule())
    assert isinstance(tree, p.AggregateExpr)
    assert set(tree.modifier.labels) == {"namespace", "model", "version", "feature"}
    inner = tree.expr.expr if isinstance(tree.expr, p.ParenExpr) else tree.expr
    assert isinstance(inner, p.BinaryExpr) and str(inner.op) == "and"
    assert list(inner.modifier.matching.labels) == ["feature"]
    assert str(inner.modifier.matching.type).endswith("Exclude")  # ignoring (feature)
