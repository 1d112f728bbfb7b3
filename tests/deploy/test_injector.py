"""What the webhook does to one pod: defaults, annotations, native and regular sidecars, GPU
pods, idempotence and refusals, checked on the patched pod itself."""

from __future__ import annotations

import argparse
import base64
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonpatch
import pytest

from controlplane.injector import (
    SIDECAR_NAME,
    BadReview,
    InjectorSettings,
    answer_review,
    decide,
)
from controlplane.injector.annotations import quantity_value
from controlplane.injector.patch import escape
from tests.deploy.conftest import injector_settings, validate_strict
from tests.deploy.pods import body, model_pod, review


@pytest.fixture
def settings(tls_files: tuple[Path, Path]) -> InjectorSettings:
    cert, key = tls_files
    return injector_settings(tls_cert=cert, tls_key=key, control_plane="cp.modelplane.svc:50051")


def _patched(pod: dict[str, Any], settings: InjectorSettings) -> dict[str, Any]:
    decision = decide(pod, settings)
    assert decision.allowed and decision.patch, decision
    return jsonpatch.apply_patch(pod, decision.patch)


def _sidecar(pod: dict[str, Any]) -> dict[str, Any]:
    containers = pod["spec"].get("initContainers", []) + pod["spec"]["containers"]
    (sidecar,) = [c for c in containers if c["name"] == SIDECAR_NAME]
    return sidecar


def _flag(container: dict[str, Any], flag: str) -> str:
    args = container["args"]
    return str(args[args.index(flag) + 1])


def test_labelled_pod_without_annotations_gets_a_native_sidecar(
    settings: InjectorSettings,
) -> None:
    pod = _patched(model_pod(), settings)
    validate_strict(pod)
    (sidecar,) = pod["spec"]["initContainers"]
    assert sidecar["name"] == SIDECAR_NAME and sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == settings.sidecar_image
    assert sidecar["command"] == ["modelplane"]
    assert sidecar["args"][:2] == ["sidecar", "serve"]
    assert _flag(sidecar, "--deployment") == "fraud"  # the app.kubernetes.io/name label
    assert _flag(sidecar, "--control-plane") == "cp.modelplane.svc:50051"
    assert _flag(sidecar, "--cache-dir") == "/var/cache/modelplane"
    assert _flag(sidecar, "--log-dir").startswith("/var/log/modelplane")
    assert _flag(sidecar, "--listen") == "0.0.0.0:8001"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert sidecar[probe]["grpc"] == {"port": 8001}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["modelplane-logs"] == {"name": "modelplane-logs", "emptyDir": {}}
    # The log volume is shared: the app container reads what the sidecar writes.
    (app,) = pod["spec"]["containers"]
    assert {"name": "modelplane-logs", "mountPath": "/var/log/modelplane", "readOnly": True} in app[
        "volumeMounts"
    ]
    assert pod["metadata"]["annotations"]["modelplane.dev/status"] == "injected"


def test_sidecar_args_are_accepted_by_the_cli(settings: InjectorSettings) -> None:
    from modelplane.cli import build_parser

    sidecar = _sidecar(_patched(model_pod(annotations={"modelplane.dev/gpu": "1"}), settings))
    parser = build_parser()
    serve = _subparser(_subparser(parser, "sidecar"), "serve")
    assert "--control-plane" in serve._option_string_actions
    args = parser.parse_args(sidecar["args"])
    assert args.log_dir.startswith("/var/log/modelplane")
    assert args.device == "cuda"
    from modelplane.cli.sidecar import _settings

    # SIGTERM: a native sidecar gets it once the app containers have exited and the pod's
    # endpoints are long gone: no shutdown delay, then the drain, within the pod's default
    # 30 s termination grace.
    settings_of_pod = _settings(args)
    assert settings_of_pod.shutdown_delay == 0.0 and settings_of_pod.drain_seconds == 15.0
    # A regular one gets it with the app: NOT_SERVING while the endpoints go.
    regular = settings.model_copy(update={"native_sidecars": False})
    sidecar = _sidecar(_patched(model_pod(), regular))
    settings_of_pod = _settings(parser.parse_args(sidecar["args"]))
    assert settings_of_pod.shutdown_delay == 10.0 and settings_of_pod.drain_seconds == 15.0
    assert settings_of_pod.shutdown_delay + settings_of_pod.drain_seconds < 30
    from sidecar.settings import SidecarSettings

    prefix = SidecarSettings.model_config["env_prefix"]
    for env in sidecar["env"]:
        if env["name"].startswith(prefix):
            assert env["name"][len(prefix) :].lower() in SidecarSettings.model_fields, env


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise AssertionError(f"no subcommand {name}")


def test_regular_container_when_native_sidecars_are_off(settings: InjectorSettings) -> None:
    settings = settings.model_copy(update={"native_sidecars": False})
    pod = _patched(model_pod(initContainers=[{"name": "migrate", "image": "x:1"}]), settings)
    validate_strict(pod)
    assert [c["name"] for c in pod["spec"]["containers"]] == ["api", SIDECAR_NAME]
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["migrate"]
    assert all("restartPolicy" not in c for c in pod["spec"]["containers"])


def test_annotations_configure_the_sidecar(settings: InjectorSettings) -> None:
    annotations = {
        "modelplane.dev/deployment": "fraud-eu",
        "modelplane.dev/control-plane": "mp.other.svc:7000",
        "modelplane.dev/port": "9001",
        "modelplane.dev/resources": "cpu=2,memory=3Gi",
        "team.example.com/owner": "risk",
    }
    pod = _patched(model_pod(annotations=annotations), settings)
    validate_strict(pod)
    sidecar = _sidecar(pod)
    assert _flag(sidecar, "--deployment") == "fraud-eu"
    assert _flag(sidecar, "--control-plane") == "mp.other.svc:7000"
    assert _flag(sidecar, "--listen") == "0.0.0.0:9001"
    assert sidecar["readinessProbe"]["grpc"]["port"] == 9001
    assert sidecar["resources"] == {
        "requests": {"cpu": "2", "memory": "3Gi"},
        "limits": {"memory": "3Gi"},
    }
    # Existing annotations stay; ours is added beside them (the key's "/" escaped as ~1).
    assert pod["metadata"]["annotations"]["team.example.com/owner"] == "risk"
    assert pod["metadata"]["annotations"]["modelplane.dev/status"] == "injected"
    decision = decide(model_pod(annotations=annotations), settings)
    assert {
        "op": "add",
        "path": "/metadata/annotations/modelplane.dev~1status",
        "value": "injected",
    } in (decision.patch)


def test_gpu_pod(settings: InjectorSettings) -> None:
    resources = '{"requests": {"cpu": "4", "memory": "8Gi"}, "limits": {"memory": "16Gi"}}'
    pod = _patched(
        model_pod(
            annotations={"modelplane.dev/gpu": "2", "modelplane.dev/resources": resources},
            tolerations=[{"key": "dedicated", "operator": "Equal", "value": "ml"}],
        ),
        settings,
    )
    validate_strict(pod)
    sidecar = _sidecar(pod)
    assert sidecar["image"] == settings.sidecar_gpu_image
    assert sidecar["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert sidecar["resources"]["limits"] == {"memory": "16Gi", "nvidia.com/gpu": "2"}
    assert _flag(sidecar, "--device") == "cuda"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"][
        "tolerations"
    ]
    assert len(pod["spec"]["tolerations"]) == 2


def test_app_label_is_the_fallback_deployment(settings: InjectorSettings) -> None:
    pod = _patched(model_pod(labels={"app": "churn", "modelplane.dev/inject": "true"}), settings)
    assert _flag(_sidecar(pod), "--deployment") == "churn"


def test_pod_with_no_name_is_refused(settings: InjectorSettings) -> None:
    decision = decide(model_pod(labels={"modelplane.dev/inject": "true"}), settings)
    assert not decision.allowed and not decision.patch
    assert decision.reason == "INVALID_ANNOTATION"
    for words in ("modelplane.dev/deployment", "app.kubernetes.io/name", "app label"):
        assert words in decision.message


@pytest.mark.parametrize("name", ["Fraud_API", "fraud.v2", "1fraud", "-fraud"])
def test_a_label_that_is_no_deployment_id_gives_way_to_the_app_label(
    settings: InjectorSettings, name: str
) -> None:
    labels = {"app.kubernetes.io/name": name, "app": "fraud", "modelplane.dev/inject": "true"}
    pod = _patched(model_pod(labels=labels), settings)
    assert _flag(_sidecar(pod), "--deployment") == "fraud"


@pytest.mark.parametrize("name", ["Fraud_API", "fraud.v2", "1fraud", "-fraud"])
def test_a_pod_whose_labels_hold_no_deployment_id_is_refused(
    settings: InjectorSettings, name: str
) -> None:
    for labels in (
        {"app.kubernetes.io/name": name},
        {"app": name},
        {"app.kubernetes.io/name": name, "app": "Fraud"},
    ):
        pod = model_pod(labels={**labels, "modelplane.dev/inject": "true"})
        decision = decide(pod, settings)
        assert not decision.allowed and not decision.patch, labels
        assert decision.reason == "INVALID_ANNOTATION"
        assert "modelplane.dev/deployment" in decision.message and repr(name) in decision.message


@pytest.mark.parametrize(
    "labels",
    [
        {"app.kubernetes.io/name": "fraud"},
        {"app.kubernetes.io/name": "fraud", "modelplane.dev/inject": "false"},
    ],
)
def test_unmanaged_pods_are_left_alone(settings: InjectorSettings, labels: dict[str, str]) -> None:
    decision = decide(model_pod(labels=labels), settings)
    assert decision.allowed and not decision.patch and not decision.warnings


def test_injection_is_idempotent(settings: InjectorSettings) -> None:
    once = _patched(model_pod(), settings)
    again = decide(once, settings)
    assert again.allowed and again.patch == []
    off = settings.model_copy(update={"native_sidecars": False})
    assert decide(_patched(model_pod(), off), settings).patch == []


def test_existing_log_volume_is_shared_not_duplicated(settings: InjectorSettings) -> None:
    pod = model_pod(volumes=[{"name": "modelplane-logs", "emptyDir": {"medium": "Memory"}}])
    patched = _patched(pod, settings)
    validate_strict(patched)
    names = [v["name"] for v in patched["spec"]["volumes"]]
    assert names == ["modelplane-logs", "modelplane-cache"]


@pytest.mark.parametrize(
    "path", ["/var/log/modelplane/", "/var/log//modelplane", "/var/log/./modelplane"]
)
def test_an_app_mount_of_the_log_directory_in_another_spelling_gets_no_second_mount(
    settings: InjectorSettings, path: str
) -> None:
    pod = model_pod(volumes=[{"name": "modelplane-logs", "emptyDir": {}}])
    mounts = [{"name": "modelplane-logs", "mountPath": path}]
    pod["spec"]["containers"][0]["volumeMounts"] = mounts
    patched = _patched(pod, settings)
    assert patched["spec"]["containers"][0]["volumeMounts"] == mounts


def test_a_udp_port_of_the_sidecars_number_is_no_clash(settings: InjectorSettings) -> None:
    pod = model_pod(annotations={"modelplane.dev/port": "8081"})
    ports = pod["spec"]["containers"][0]["ports"]
    ports.append({"name": "stats", "containerPort": 8081, "protocol": "UDP"})
    patched = _patched(pod, settings)
    validate_strict(patched)
    tcp = dict(ports[-1], protocol="TCP", name="stats-tcp")
    ports[-1] = tcp
    refused = decide(pod, settings)
    assert not refused.allowed and "already uses port 8081" in refused.message


@pytest.mark.parametrize(
    ("annotation", "value", "words"),
    [
        ("modelplane.dev/port", "eighty", "not a port number"),
        ("modelplane.dev/port", "70000", "not a port number"),
        ("modelplane.dev/port", "9465", "metrics port"),
        ("modelplane.dev/port", "8080", "already uses port 8080"),
        ("modelplane.dev/port", "8002", "port name 'oip-grpc'"),
        ("modelplane.dev/gpu", "lots", "not a GPU count"),
        ("modelplane.dev/resources", "cpu", "not NAME=QUANTITY"),
        ("modelplane.dev/resources", "cpu=fast", "not a quantity"),
        ("modelplane.dev/resources", "gpu=1", "unknown resource"),
        ("modelplane.dev/resources", '{"requests": [1]}', "must be a mapping"),
        ("modelplane.dev/resources", '{"requests": ', "not valid JSON"),
        pytest.param(
            "modelplane.dev/resources",
            '{"requests": ' + "[" * 20000 + "]" * 20000 + "}",
            "nested too deep",
            id="resources-nested-too-deep",
        ),
        ("modelplane.dev/control-plane", "no-port", "not HOST:PORT"),
        ("modelplane.dev/control-plane", "http://cp.modelplane.svc:50051", "not HOST:PORT"),
        ("modelplane.dev/control-plane", "cp modelplane svc:50051", "not HOST:PORT"),
        ("modelplane.dev/control-plane", "cp.svc:50051/x:1", "not HOST:PORT"),
        (
            "modelplane.dev/resources",
            '{"requests": {"memory": "4Gi", "cpu": "2"}, "limits": {"memory": "1Gi", "cpu": "1"}}',
            "is above limits",
        ),
        (
            "modelplane.dev/resources",
            '{"requests": {"cpu": "1500m"}, "limits": {"cpu": "1"}}',
            "requests cpu=1500m is above limits cpu=1",
        ),
        (
            "modelplane.dev/resources",
            '{"requests": {"memory": "1Gi"}, "limits": {"memory": "1G"}}',
            "requests memory=1Gi is above limits memory=1G",
        ),
        (
            "modelplane.dev/resources",
            '{"requests": {"ephemeral-storage": "2e9"}, "limits": {"ephemeral-storage": "1Gi"}}',
            "is above limits",
        ),
        ("modelplane.dev/deployment", "Fraud_Model", "not a deployment id"),
        ("modelplane.dev/deployment", "1fraud", "not a deployment id"),
    ],
)
def test_bad_annotations_refuse_the_pod(
    settings: InjectorSettings, annotation: str, value: str, words: str
) -> None:
    pod = model_pod(annotations={annotation: value})
    if value == "8002":
        pod["spec"]["containers"][0]["ports"][0]["name"] = "oip-grpc"
    decision = decide(pod, settings)
    assert not decision.allowed and not decision.patch
    assert decision.reason == "INVALID_ANNOTATION"
    assert annotation in decision.message and words in decision.message


def test_answer_review_wraps_the_decision(settings: InjectorSettings) -> None:
    doc = review(model_pod(annotations={"modelplane.dev/port": "x"}))
    answer = answer_review(body(doc), settings)
    response = answer["response"]
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    assert response["uid"] == doc["request"]["uid"] and response["allowed"] is False
    assert response["status"]["code"] == 422
    assert "modelplane.dev/port" in response["status"]["message"]
    good = answer_review(body(review(model_pod())), settings)["response"]
    assert good["patchType"] == "JSONPatch"
    assert json.loads(base64.b64decode(good["patch"])) == decide(model_pod(), settings).patch


def test_only_pod_creation_is_mutated(settings: InjectorSettings) -> None:
    update = answer_review(body(review(model_pod(), operation="UPDATE")), settings)["response"]
    assert update["allowed"] is True and "patch" not in update
    doc = review(model_pod())
    doc["request"]["kind"] = {"group": "apps", "version": "v1", "kind": "Deployment"}
    assert "patch" not in answer_review(body(doc), settings)["response"]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "MALFORMED_JSON"),
        (b"\xff", "MALFORMED_JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "MALFORMED_JSON"),
        (b'{"request": {"n": ' + b"9" * 5000 + b"}}", "MALFORMED_JSON"),
        (b"[1, 2]", "NOT_ADMISSION_REVIEW"),
        (
            b'{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}',
            "NOT_ADMISSION_REVIEW",
        ),
        (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}', "MISSING_REQUEST"),
        (
            b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}',
            "MISSING_UID",
        ),
    ],
)
def test_malformed_reviews(settings: InjectorSettings, payload: bytes, reason: str) -> None:
    with pytest.raises(BadReview) as caught:
        answer_review(payload, settings)
    assert caught.value.reason == reason and caught.value.message


def _broken(where: str) -> dict[str, Any]:
    pod = model_pod()
    if where == "metadata":
        pod["metadata"] = None
    elif where == "labels":
        pod["metadata"]["labels"] = ["modelplane.dev/inject=true"]
    elif where == "annotations":
        pod["metadata"]["annotations"] = "modelplane.dev/port=9000"
    elif where == "containers":
        pod["spec"]["containers"] = [None]
    elif where == "ports":
        pod["spec"]["containers"][0]["ports"] = [None]
    elif where == "volumes":
        pod["spec"]["volumes"] = {"name": "x"}
    return pod


@pytest.mark.parametrize(
    "where", ["metadata", "labels", "annotations", "containers", "ports", "volumes"]
)
def test_pods_with_parts_of_the_wrong_type_are_bad_reviews(
    settings: InjectorSettings, where: str
) -> None:
    doc = review(model_pod())
    doc["request"]["object"] = _broken(where)
    with pytest.raises(BadReview) as caught:
        answer_review(body(doc), settings)
    assert caught.value.reason == "MALFORMED_POD" and caught.value.message


def test_pod_review_without_object(settings: InjectorSettings) -> None:
    doc = review(model_pod())
    doc["request"]["object"] = None
    with pytest.raises(BadReview) as caught:
        answer_review(body(doc), settings)
    assert caught.value.reason == "MISSING_OBJECT"


def test_escape() -> None:
    assert escape("modelplane.dev/status") == "modelplane.dev~1status"
    assert escape("a~b/c") == "a~0b~1c"


def test_settings_read_on_off(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    off = injector_settings(tls_cert=cert, tls_key=key, native_sidecars="off")
    assert off.native_sidecars is False
    with pytest.raises(ValueError):
        injector_settings(tls_cert=cert, tls_key=key, control_plane="nowhere")


@pytest.mark.parametrize(
    ("requests", "limits"),
    [
        ({"cpu": "500m", "memory": "1G"}, {"cpu": "0.5", "memory": "1Gi"}),
        ({"cpu": "999m"}, {"cpu": "1"}),
        ({"memory": "1024Mi"}, {"memory": "1Gi"}),
        ({"memory": "1k"}, {"memory": "1Ki"}),
        ({"memory": "1E"}, {"memory": "1Ei"}),
        ({"memory": "1Pi"}, {"memory": "2Ei"}),
    ],
)
def test_requests_within_their_limits_are_kept_as_written(
    settings: InjectorSettings, requests: dict[str, str], limits: dict[str, str]
) -> None:
    resources = json.dumps({"requests": requests, "limits": limits})
    pod = _patched(model_pod(annotations={"modelplane.dev/resources": resources}), settings)
    assert _sidecar(pod)["resources"] == {"requests": requests, "limits": limits}


@pytest.mark.parametrize(
    "address", ["http://cp.svc:50051", "cp svc:50051", "cp.svc:50051/x", "[zz]:1", "cp:0"]
)
def test_the_default_control_plane_must_be_a_grpc_address(
    tls_files: tuple[Path, Path], address: str
) -> None:
    cert, key = tls_files
    with pytest.raises(ValueError, match="not HOST:PORT"):
        injector_settings(tls_cert=cert, tls_key=key, control_plane=address)
    for good in ("10.0.0.7:50051", "[fd00::7]:50051", "cp.modelplane.svc.cluster.local.:50051"):
        assert injector_settings(tls_cert=cert, tls_key=key, control_plane=good).control_plane


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", Decimal("0.5")),
        ("2", Decimal(2)),
        ("1Ki", Decimal(1024)),
        ("1Gi", Decimal(2**30)),
        ("1Pi", Decimal(2**50)),
        ("1Ei", Decimal(2**60)),
        ("1k", Decimal(1000)),
        ("1G", Decimal(10**9)),
        ("1E", Decimal(10**18)),
        ("1E3", Decimal(1000)),
        ("5e-3", Decimal("0.005")),
        ("+.5Mi", Decimal(2**19)),
    ],
)
def test_quantity_value_reads_every_suffix(text: str, value: Decimal) -> None:
    assert quantity_value(text) == value


@pytest.mark.parametrize(
    ("resources", "words"),
    [
        ("memory=1Eix", "not a quantity"),
        ("memory=1e", "not a quantity"),
        ("memory=1EiB", "not a quantity"),
        ('{"requests": {"memory": "2Ei"}, "limits": {"memory": "1Ei"}}', "is above limits"),
        ('{"requests": {"memory": "1Ei"}, "limits": {"memory": "1E"}}', "is above limits"),
    ],
)
def test_exbi_and_exa_quantities_are_compared_or_refused_by_name(
    settings: InjectorSettings, resources: str, words: str
) -> None:
    decision = decide(model_pod(annotations={"modelplane.dev/resources": resources}), settings)
    assert not decision.allowed and decision.reason == "INVALID_ANNOTATION"
    assert "modelplane.dev/resources" in decision.message and words in decision.message
