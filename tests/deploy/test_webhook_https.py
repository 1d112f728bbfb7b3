"""The webhook over real HTTPS with real AdmissionReview JSON, and ``modelplane injector
serve`` as a process."""

from __future__ import annotations

import base64
import decimal
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import jsonpatch
import pytest

from controlplane.injector import SIDECAR_NAME
from tests.deploy.conftest import ROOT, validate_strict
from tests.deploy.pods import body, model_pod, review


def _post(
    port: int,
    cert: Path,
    payload: bytes,
    content_type: str = "application/json",
    path: str = "/inject",
) -> tuple[int, dict[str, Any]]:
    context = ssl.create_default_context(cafile=str(cert))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        conn.request("POST", path, body=payload, headers={"Content-Type": content_type})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def _admit(injector: Any, cert: Path, pod: dict[str, Any]) -> dict[str, Any]:
    doc = review(pod)
    status, answer = _post(injector.port, cert, body(doc))
    assert status == 200
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    assert answer["response"]["uid"] == doc["request"]["uid"]
    return dict(answer["response"])


def test_managed_pod_is_patched_into_a_valid_pod(
    injector: Any, tls_files: tuple[Path, Path]
) -> None:
    cert, _ = tls_files
    pod = model_pod()
    response = _admit(injector, cert, pod)
    assert response["allowed"] is True and response["patchType"] == "JSONPatch"
    patched = jsonpatch.apply_patch(pod, json.loads(base64.b64decode(response["patch"])))
    validate_strict(patched)
    native = injector.server.settings.native_sidecars
    where = "initContainers" if native else "containers"
    (sidecar,) = [c for c in patched["spec"][where] if c["name"] == SIDECAR_NAME]
    assert (sidecar.get("restartPolicy") == "Always") is native
    # Posting the patched pod again changes nothing: the webhook never injects twice.
    again = _admit(injector, cert, patched)
    assert again["allowed"] is True and "patch" not in again


def test_injected_sidecar_meets_the_restricted_pod_security_standard(
    injector: Any, tls_files: tuple[Path, Path]
) -> None:
    cert, _ = tls_files
    pod = model_pod()
    assert pod["spec"]["securityContext"] == {}  # the pod sets no seccomp profile of its own
    response = _admit(injector, cert, pod)
    patched = jsonpatch.apply_patch(pod, json.loads(base64.b64decode(response["patch"])))
    containers = patched["spec"].get("initContainers", []) + patched["spec"]["containers"]
    (sidecar,) = [c for c in containers if c["name"] == SIDECAR_NAME]
    assert sidecar["securityContext"] == {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def test_unmanaged_pod_is_allowed_unchanged(injector: Any, tls_files: tuple[Path, Path]) -> None:
    cert, _ = tls_files
    response = _admit(injector, cert, model_pod(labels={"app": "web"}))
    assert response == {"uid": response["uid"], "allowed": True}


@pytest.mark.parametrize(
    "labels", [{}, {"app.kubernetes.io/name": "Fraud_API"}, {"app": "fraud.v2"}]
)
def test_a_pod_without_a_deployment_id_is_refused(
    injector: Any, tls_files: tuple[Path, Path], labels: dict[str, str]
) -> None:
    cert, _ = tls_files
    pod = model_pod(labels={**labels, "modelplane.dev/inject": "true"})
    response = _admit(injector, cert, pod)
    assert response["allowed"] is False and "patch" not in response
    message = response["status"]["message"]
    assert "modelplane.dev/deployment" in message and "app.kubernetes.io/name" in message
    for value in labels.values():
        assert repr(value) in message


def test_an_invalid_name_label_gives_way_to_the_app_label(
    injector: Any, tls_files: tuple[Path, Path]
) -> None:
    cert, _ = tls_files
    labels = {
        "app.kubernetes.io/name": "Fraud_API",
        "app": "fraud",
        "modelplane.dev/inject": "true",
    }
    pod = model_pod(labels=labels)
    response = _admit(injector, cert, pod)
    assert response["allowed"] is True
    patched = jsonpatch.apply_patch(pod, json.loads(base64.b64decode(response["patch"])))
    containers = patched["spec"].get("initContainers", []) + patched["spec"]["containers"]
    (sidecar,) = [c for c in containers if c["name"] == SIDECAR_NAME]
    assert sidecar["args"][sidecar["args"].index("--deployment") + 1] == "fraud"


@pytest.mark.parametrize(
    ("annotation", "value"),
    [
        ("modelplane.dev/gpu", "many"),
        # JSON nested deeper than json.loads goes: refused, not failed with 500.
        ("modelplane.dev/resources", '{"requests": ' + "[" * 20000 + "]" * 20000 + "}"),
    ],
    ids=["gpu", "resources-nested-too-deep"],
)
def test_bad_annotation_is_refused_with_a_message(
    injector: Any, tls_files: tuple[Path, Path], annotation: str, value: str
) -> None:
    cert, _ = tls_files
    response = _admit(injector, cert, model_pod(annotations={annotation: value}))
    assert response["allowed"] is False and "patch" not in response
    assert response["status"]["code"] == 422
    assert f"annotation {annotation}:" in response["status"]["message"]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"this is not json", "MALFORMED_JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "MALFORMED_JSON"),
        (b'{"request": {"uid": "u", "n": ' + b"9" * 5000 + b"}}", "MALFORMED_JSON"),
        (b'{"apiVersion": "v1", "kind": "Pod"}', "NOT_ADMISSION_REVIEW"),
        (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}', "MISSING_REQUEST"),
    ],
)
def test_malformed_review_is_400_with_a_reason(
    injector: Any, tls_files: tuple[Path, Path], payload: bytes, reason: str
) -> None:
    cert, _ = tls_files
    status, answer = _post(injector.port, cert, payload)
    assert status == 400
    assert answer["reason"] == reason and answer["message"]


def test_a_pod_of_the_wrong_shape_is_400_and_the_webhook_keeps_serving(
    injector: Any, tls_files: tuple[Path, Path]
) -> None:
    cert, _ = tls_files
    doc = review(model_pod())
    doc["request"]["object"]["spec"]["containers"] = [None]
    status, answer = _post(injector.port, cert, json.dumps(doc).encode())
    assert status == 400 and answer["reason"] == "MALFORMED_POD"
    status, answer = _post(injector.port, cert, json.dumps(review(model_pod())).encode())
    assert status == 200 and answer["response"]["allowed"] is True


def test_wrong_content_type_is_415(injector: Any, tls_files: tuple[Path, Path]) -> None:
    cert, _ = tls_files
    status, answer = _post(injector.port, cert, body(review(model_pod())), "text/plain")
    assert status == 415 and answer["reason"] == "UNSUPPORTED_MEDIA_TYPE"
    assert "application/json" in answer["message"]


def test_wrong_path_and_size(injector: Any, tls_files: tuple[Path, Path]) -> None:
    cert, _ = tls_files
    status, answer = _post(injector.port, cert, b"{}", path="/mutate")
    assert status == 404 and answer["reason"] == "NOT_FOUND"
    huge = body(review(model_pod(annotations={"x": "y" * (5 * 1024 * 1024)})))
    status, answer = _post(injector.port, cert, huge)
    assert status == 413 and answer["reason"] == "BODY_TOO_LARGE"


def test_plain_http_and_health(injector: Any, tls_files: tuple[Path, Path]) -> None:
    cert, _ = tls_files
    plain = http.client.HTTPConnection("127.0.0.1", injector.port, timeout=5)
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        plain.request("GET", "/healthz")
        plain.getresponse().read()
    plain.close()
    # The server survives the failed handshake.
    context = ssl.create_default_context(cafile=str(cert))
    conn = http.client.HTTPSConnection("127.0.0.1", injector.port, context=context, timeout=5)
    conn.request("GET", "/healthz")
    assert conn.getresponse().status == 200
    conn.close()


def test_cli_serves_until_sigterm(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    env = {**os.environ, "MODELPLANE_INJECTOR_NATIVE_SIDECARS": "off"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelplane.cli", "injector", "serve", "--listen", "127.0.0.1:0",
         "--health-listen", "127.0.0.1:0",
         "--tls-cert", str(cert), "--tls-key", str(key), "--control-plane", "cp:50051",
         "--sidecar-image", "modelplane/sidecar:test", "--shutdown-delay", "0"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["event"] == "injector ready"
        pod = model_pod()
        status, answer = _post(ready["port"], cert, body(review(pod)))
        assert status == 200
        patched = jsonpatch.apply_patch(
            pod, json.loads(base64.b64decode(answer["response"]["patch"]))
        )
        sidecar = patched["spec"]["containers"][-1]
        assert sidecar["image"] == "modelplane/sidecar:test"
        assert "cp:50051" in sidecar["args"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _get(port: int, cert: Path, path: str) -> tuple[int, str | None]:
    """The status of ``GET path`` over a new connection, and its Connection header."""
    context = ssl.create_default_context(cafile=str(cert))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("Connection")
    finally:
        conn.close()


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        # The listener closed while this probe sat in its backlog: the next one is refused.
        return False
    return False


def test_sigterm_answers_not_ready_serves_through_the_delay_and_answers_reviews_in_flight(
    tls_files: tuple[Path, Path],
) -> None:
    cert, key = tls_files
    env = {
        **os.environ,
        "MODELPLANE_INJECTOR_SHUTDOWN_DELAY_SECONDS": "5",
        "MODELPLANE_INJECTOR_GRACE_SECONDS": "5",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelplane.cli", "injector", "serve", "--listen", "127.0.0.1:0",
         "--health-listen", "127.0.0.1:0",
         "--tls-cert", str(cert), "--tls-key", str(key)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        port = json.loads(proc.stdout.readline())["port"]
        assert _get(port, cert, "/healthz") == (200, None)
        # A review in flight: its headers and half its body sent before SIGTERM.
        payload = body(review(model_pod()))
        context = ssl.create_default_context(cafile=str(cert))
        plain = socket.create_connection(("127.0.0.1", port), timeout=10)
        in_flight = context.wrap_socket(plain, server_hostname="127.0.0.1")
        in_flight.sendall(
            b"POST /inject HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload[:100]
        )
        time.sleep(0.3)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        # Not ready at once, but still alive and still answering reviews, over connections
        # that close after each answer.
        status = 200
        while status == 200 and time.monotonic() - signalled < 4:
            status, _ = _get(port, cert, "/healthz")
        assert status == 503
        assert _get(port, cert, "/livez")[0] == 200
        status, answer = _post(port, cert, body(review(model_pod())))
        assert status == 200 and answer["response"]["allowed"] is True
        assert _get(port, cert, "/livez")[1] == "close"
        # The listener closes once the delay is over...
        while not _refused(port) and time.monotonic() - signalled < 15:
            time.sleep(0.05)
        assert _refused(port) and time.monotonic() - signalled >= 4.9
        # ...and the review in flight is still answered before the process exits.
        in_flight.sendall(payload[100:])
        response = http.client.HTTPResponse(in_flight)  # type: ignore[arg-type]
        response.begin()
        assert response.status == 200
        assert json.loads(response.read())["response"]["allowed"] is True
        in_flight.close()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_stop_waits_for_reviews_in_flight_up_to_the_grace(tls_files: tuple[Path, Path]) -> None:
    from controlplane.injector import start
    from tests.deploy.conftest import injector_settings

    cert, key = tls_files
    settings = injector_settings(
        listen="127.0.0.1:0",
        tls_cert=cert,
        tls_key=key,
        shutdown_delay_seconds=0,
        grace_seconds=1,
    )
    handle = start(settings)
    context = ssl.create_default_context(cafile=str(cert))
    plain = socket.create_connection(("127.0.0.1", handle.port), timeout=10)
    with context.wrap_socket(plain, server_hostname="127.0.0.1") as stuck:
        # A review whose body never comes.
        stuck.sendall(
            b"POST /inject HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{"
        )
        time.sleep(0.3)
        began = time.monotonic()
        handle.stop()
        waited = time.monotonic() - began
        # Stop returned with the review still in flight: it waited the grace out, not for the
        # review (whose body never comes) to end.
        assert handle.server.wait_answered(0) == 1
    assert waited >= 0.9


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--listen", "127.0.0.1:0"], "tls_cert"),
        (["--shutdown-delay", "soon"], "--shutdown-delay"),
        (["--tls-cert", "/nonexistent.crt", "--tls-key", "/nonexistent.key"], "cannot serve"),
        (["--native-sidecars", "maybe"], "invalid choice"),
    ],
)
def test_cli_refuses_bad_options(args: list[str], words: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "modelplane.cli", "injector", "serve", "--listen", "127.0.0.1:0",
         *args],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode in (1, 2)
    assert words in done.stderr


@pytest.mark.parametrize(
    ("annotation", "value"),
    [
        ("modelplane.dev/port", "\u00b2"),
        ("modelplane.dev/port", "\u0668\u0660\u0660\u0662"),
        ("modelplane.dev/gpu", "\u00b2"),
        ("modelplane.dev/control-plane", "cp.modelplane.svc:\u00b9"),
        ("modelplane.dev/resources", "memory=1e9999999"),
        ("modelplane.dev/resources", "cpu=1e-9999999"),
        ("modelplane.dev/resources", "memory=\u0661Gi"),
        (
            "modelplane.dev/resources",
            '{"requests": {"cpu": "1e999999999"}, "limits": {"cpu": "1"}}',
        ),
    ],
)
def test_non_ascii_digits_and_huge_exponents_refuse_the_pod_naming_the_annotation(
    injector: Any, tls_files: tuple[Path, Path], annotation: str, value: str
) -> None:
    cert, _ = tls_files
    response = _admit(injector, cert, model_pod(annotations={annotation: value}))
    assert response["allowed"] is False and "patch" not in response
    assert annotation in response["status"]["message"]


@pytest.mark.parametrize("error", [ValueError("bad"), decimal.InvalidOperation()])
def test_an_unforeseen_error_reading_the_annotations_refuses_the_pod(
    injector: Any, tls_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    def broken(*args: Any) -> Any:
        raise error

    monkeypatch.setattr("controlplane.injector.mutate.read_spec", broken)
    cert, _ = tls_files
    response = _admit(injector, cert, model_pod())
    assert response["allowed"] is False and "patch" not in response
    assert "modelplane.dev/" in response["status"]["message"]


def test_init_containers_that_run_to_completion_may_use_the_sidecar_ports(
    injector: Any, tls_files: tuple[Path, Path]
) -> None:
    cert, _ = tls_files
    migrate = {
        "name": "migrate",
        "image": "registry.example.com/migrate:1",
        "ports": [{"name": "mp-metrics", "containerPort": 8001}, {"containerPort": 9465}],
    }
    pod = model_pod(initContainers=[migrate])
    response = _admit(injector, cert, pod)
    assert response["allowed"] is True
    patched = jsonpatch.apply_patch(pod, json.loads(base64.b64decode(response["patch"])))
    validate_strict(patched)
    # A native sidecar of the pod's own runs beside ours: its ports still count.
    proxy = {**migrate, "name": "proxy", "restartPolicy": "Always"}
    for ports in ([{"containerPort": 9465}], [{"name": "oip-grpc", "containerPort": 1}]):
        response = _admit(injector, cert, model_pod(initContainers=[{**proxy, "ports": ports}]))
        assert response["allowed"] is False
        assert "'proxy'" in response["status"]["message"]


def _raw(port: int, cert: Path, request: bytes) -> tuple[int, dict[str, Any]]:
    """Send ``request`` as it is (headers http.client would not send) and read the answer."""
    context = ssl.create_default_context(cafile=str(cert))
    plain = socket.create_connection(("127.0.0.1", port), timeout=10)
    with context.wrap_socket(plain, server_hostname="127.0.0.1") as conn:
        conn.sendall(request)
        response = http.client.HTTPResponse(conn)
        response.begin()
        return response.status, json.loads(response.read())


@pytest.mark.parametrize(
    ("path", "content_type", "length", "status", "reason"),
    [
        ("/inject", "application/json", b"\xb2", 411, "LENGTH_REQUIRED"),
        ("/inject", "application/json", b"\xd9\xa2", 411, "LENGTH_REQUIRED"),
        ("/inject", "application/json", b"9" * 5000, 413, "BODY_TOO_LARGE"),
        ("/mutate", "application/json", b"\xb2", 404, "NOT_FOUND"),
        ("/inject", "text/plain", b"\xb9", 415, "UNSUPPORTED_MEDIA_TYPE"),
    ],
)
def test_a_content_length_of_other_than_ascii_digits_gets_a_json_answer(
    injector: Any,
    tls_files: tuple[Path, Path],
    path: str,
    content_type: str,
    length: bytes,
    status: int,
    reason: str,
) -> None:
    cert, _ = tls_files
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n".encode()
        + b"Content-Length: "
        + length
        + b"\r\n\r\n{}"
    )
    assert _raw(injector.port, cert, request) == (status, {"reason": reason, "message": ANY})
    status, answer = _post(injector.port, cert, body(review(model_pod())))
    assert status == 200 and answer["response"]["allowed"] is True


def _wrong_type(where: str) -> dict[str, Any]:
    doc = review(model_pod(annotations={"modelplane.dev/gpu": "1"}))
    pod = doc["request"]["object"]
    if where == "tolerations":
        pod["spec"]["tolerations"] = "x"
    elif where == "containerPort":
        pod["spec"]["containers"][0]["ports"] = [{"containerPort": [1]}]
    elif where == "port name":
        pod["spec"]["containers"][0]["ports"] = [{"name": ["oip-grpc"], "containerPort": 1}]
    elif where == "container name":
        pod["spec"]["containers"][0]["name"] = {"a": 1}
    elif where == "volume name":
        pod["spec"]["volumes"] = [{"name": ["modelplane-logs"], "emptyDir": {}}]
    return doc


@pytest.mark.parametrize(
    "where", ["tolerations", "containerPort", "port name", "container name", "volume name"]
)
def test_pod_fields_of_the_wrong_json_type_are_400_malformed_pod(
    injector: Any, tls_files: tuple[Path, Path], where: str
) -> None:
    cert, _ = tls_files
    status, answer = _post(injector.port, cert, body(_wrong_type(where)))
    assert status == 400 and answer["reason"] == "MALFORMED_POD" and answer["message"]


@pytest.mark.parametrize("containers", [None, []])
def test_a_labelled_pod_without_containers_is_refused(
    injector: Any, tls_files: tuple[Path, Path], containers: list[Any] | None
) -> None:
    cert, _ = tls_files
    pod = model_pod()
    if containers is None:
        del pod["spec"]["containers"]
    else:
        pod["spec"]["containers"] = containers
    response = _admit(injector, cert, pod)
    assert response["allowed"] is False and "patch" not in response
    assert "spec.containers" in response["status"]["message"]


@pytest.mark.parametrize(
    ("volume", "kind"),
    [
        ({"name": "modelplane-cache", "configMap": {"name": "settings"}}, "configMap"),
        ({"name": "modelplane-logs", "secret": {"secretName": "keys"}}, "secret"),
    ],
)
def test_a_pod_volume_of_the_sidecars_name_that_is_no_emptydir_is_refused(
    injector: Any, tls_files: tuple[Path, Path], volume: dict[str, Any], kind: str
) -> None:
    cert, _ = tls_files
    response = _admit(injector, cert, model_pod(volumes=[volume]))
    assert response["allowed"] is False and "patch" not in response
    assert response["status"]["code"] == 422
    message = response["status"]["message"]
    assert repr(volume["name"]) in message and kind in message and "emptyDir" in message
    # An emptyDir of that name is shared with the sidecar.
    pod = model_pod(volumes=[{"name": volume["name"], "emptyDir": {"medium": "Memory"}}])
    response = _admit(injector, cert, pod)
    assert response["allowed"] is True
    patched = jsonpatch.apply_patch(pod, json.loads(base64.b64decode(response["patch"])))
    validate_strict(patched)
    assert sorted(v["name"] for v in patched["spec"]["volumes"]) == [
        "modelplane-cache",
        "modelplane-logs",
    ]


def test_an_app_mounting_another_volume_at_the_log_directory_is_refused(
    injector: Any, tls_files: tuple[Path, Path]
) -> None:
    cert, _ = tls_files
    pod = model_pod(volumes=[{"name": "data", "emptyDir": {}}])
    pod["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "data", "mountPath": "/var/log/modelplane/"}
    ]
    response = _admit(injector, cert, pod)
    assert response["allowed"] is False and "patch" not in response
    message = response["status"]["message"]
    assert "'api'" in message and "'data'" in message and "/var/log/modelplane" in message


def test_unknown_annotations_under_the_prefix_get_warnings_naming_the_closest(
    injector: Any, tls_files: tuple[Path, Path]
) -> None:
    cert, _ = tls_files
    annotations = {
        "modelplane.dev/prot": "8081",
        "modelplane.dev/resource": "cpu=1",
        "modelplane.dev/zzz": "1",
        "example.com/prot": "1",
        "modelplane.dev/gpu": "0",
    }
    response = _admit(injector, cert, model_pod(annotations=annotations))
    assert response["allowed"] is True and "patch" in response
    assert response["warnings"] == [
        "annotation modelplane.dev/prot is not one modelplane reads and is ignored; "
        "did you mean modelplane.dev/port?",
        "annotation modelplane.dev/resource is not one modelplane reads and is ignored; "
        "did you mean modelplane.dev/resources?",
        "annotation modelplane.dev/zzz is not one modelplane reads and is ignored",
    ]
    # A refused pod gets them too; a pod with only known annotations gets none.
    refused = _admit(
        injector, cert, model_pod(annotations={**annotations, "modelplane.dev/port": "x"})
    )
    assert refused["allowed"] is False and len(refused["warnings"]) == 3
    assert "warnings" not in _admit(
        injector, cert, model_pod(annotations={"modelplane.dev/gpu": "0"})
    )


@pytest.mark.parametrize(
    ("grace", "native_delay", "regular_delay", "drain_native", "drain_regular"),
    [
        (None, 0.0, 10.0, 15.0, 15.0),
        (30, 0.0, 10.0, 15.0, 15.0),
        (120, 0.0, 10.0, 15.0, 15.0),
        (5, 0.0, 1.666, 4.166, 2.5),
        (0, 0.0, 0.0, 0.0, 0.0),
    ],
)
def test_the_sidecars_shutdown_fits_the_pods_termination_grace(
    injector: Any,
    tls_files: tuple[Path, Path],
    grace: int | None,
    native_delay: float,
    regular_delay: float,
    drain_native: float,
    drain_regular: float,
) -> None:
    from modelplane.cli import build_parser
    from modelplane.cli.sidecar import _settings

    cert, _ = tls_files
    pod = model_pod() if grace is None else model_pod(terminationGracePeriodSeconds=grace)
    response = _admit(injector, cert, pod)
    assert response["allowed"] is True
    patched = jsonpatch.apply_patch(pod, json.loads(base64.b64decode(response["patch"])))
    validate_strict(patched)
    native = injector.server.settings.native_sidecars
    where = "initContainers" if native else "containers"
    (sidecar,) = [c for c in patched["spec"][where] if c["name"] == SIDECAR_NAME]
    sidecar_settings = _settings(build_parser().parse_args(sidecar["args"]))
    delay, drain = sidecar_settings.shutdown_delay, sidecar_settings.drain_seconds
    assert (delay, drain) == (
        (native_delay, drain_native) if native else (regular_delay, drain_regular)
    )
    # Within five sixths of the grace, the rest a margin before SIGKILL.
    assert delay + drain <= (30 if grace is None else grace) * 5 / 6
    warnings = response.get("warnings", [])
    if delay + drain < (0 if native else 10) + 15:
        (warning,) = warnings
        assert f"terminationGracePeriodSeconds {grace}" in warning and "cut to" in warning
    else:
        assert warnings == []


@pytest.mark.parametrize(
    ("path", "content_type", "length", "status"),
    [
        ("/mutate", "application/json", b"2", 404),
        ("/inject", "text/plain", b"2", 415),
        ("/inject", "application/json", b"x", 411),
        ("/inject", "application/json", b"9" * 30, 413),
    ],
)
def test_answers_that_close_the_connection_say_so(
    injector: Any,
    tls_files: tuple[Path, Path],
    path: str,
    content_type: str,
    length: bytes,
    status: int,
) -> None:
    cert, _ = tls_files
    context = ssl.create_default_context(cafile=str(cert))
    plain = socket.create_connection(("127.0.0.1", injector.port), timeout=10)
    with context.wrap_socket(plain, server_hostname="127.0.0.1") as conn:
        conn.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n".encode()
            + b"Content-Length: " + length + b"\r\n\r\n{}"
        )  # fmt: skip
        response = http.client.HTTPResponse(conn)  # type: ignore[arg-type]
        response.begin()
        response.read()
        assert response.status == status
        assert response.getheader("Connection") == "close"
        # The server did close it.
        assert conn.recv(1) == b""
    # A review's answer keeps the connection open.
    conn2 = http.client.HTTPSConnection("127.0.0.1", injector.port, context=context, timeout=10)
    conn2.request(
        "POST", "/inject", body(review(model_pod())), {"Content-Type": "application/json"}
    )
    answer = conn2.getresponse()
    answer.read()
    assert answer.status == 200 and answer.getheader("Connection") is None
    conn2.close()


def _sidecar_of(injector: Any, pod: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    patched = jsonpatch.apply_patch(pod, json.loads(base64.b64decode(response["patch"])))
    validate_strict(patched)
    where = "initContainers" if injector.server.settings.native_sidecars else "containers"
    (sidecar,) = [c for c in patched["spec"][where] if c["name"] == SIDECAR_NAME]
    return dict(sidecar)


@pytest.mark.parametrize("value", ["fraud", "deployments/fraud"])
def test_the_deployment_annotation_takes_name_or_deployments_slash_name(
    injector: Any, tls_files: tuple[Path, Path], value: str
) -> None:
    cert, _ = tls_files
    pod = model_pod(
        labels={"modelplane.dev/inject": "true"},
        annotations={"modelplane.dev/deployment": value},
    )
    response = _admit(injector, cert, pod)
    assert response["allowed"] is True
    args = _sidecar_of(injector, pod, response)["args"]
    assert args[args.index("--deployment") + 1] == "fraud"
    bad = _admit(injector, cert, model_pod(annotations={"modelplane.dev/deployment": "models/x"}))
    assert bad["allowed"] is False


def test_a_host_network_pod_gets_a_warning_about_the_node_ports(
    injector: Any, tls_files: tuple[Path, Path]
) -> None:
    cert, _ = tls_files
    response = _admit(injector, cert, model_pod(hostNetwork=True))
    assert response["allowed"] is True
    (warning,) = response["warnings"]
    assert "hostNetwork" in warning and "8001" in warning and "9465" in warning
    assert "warnings" not in _admit(injector, cert, model_pod(hostNetwork=False))


@pytest.mark.parametrize(
    ("value", "resources"),
    [
        (
            "cpu=500m",
            {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
        ),
        (
            "memory=2Gi",
            {"requests": {"cpu": "250m", "memory": "2Gi"}, "limits": {"memory": "2Gi"}},
        ),
        (
            "ephemeral-storage=1Gi",
            {
                "requests": {"cpu": "250m", "memory": "512Mi", "ephemeral-storage": "1Gi"},
                "limits": {"memory": "1Gi"},
            },
        ),
    ],
)
def test_resources_not_named_keep_their_defaults(
    injector: Any, tls_files: tuple[Path, Path], value: str, resources: dict[str, Any]
) -> None:
    cert, _ = tls_files
    pod = model_pod(annotations={"modelplane.dev/resources": value})
    response = _admit(injector, cert, pod)
    assert response["allowed"] is True
    assert _sidecar_of(injector, pod, response)["resources"] == resources


@pytest.mark.parametrize("value", ["True", "TRUE", "yes"])
def test_only_the_label_value_the_object_selector_matches_asks_for_injection(
    injector: Any, tls_files: tuple[Path, Path], value: str
) -> None:
    from tests.deploy.conftest import load_yaml

    (webhook,) = load_yaml(ROOT / "deploy/base/injector/mutatingwebhook.yaml")[0]["webhooks"]
    assert webhook["objectSelector"]["matchLabels"] == {"modelplane.dev/inject": "true"}
    cert, _ = tls_files
    labels = {"app.kubernetes.io/name": "fraud", "modelplane.dev/inject": value}
    response = _admit(injector, cert, model_pod(labels=labels))
    assert response["allowed"] is True and "patch" not in response
