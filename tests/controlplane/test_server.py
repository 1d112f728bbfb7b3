"""The control-plane process: health, reflection, metrics, request logs, graceful SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from modelplane import Client
from modelplane.testing import wait_serving
from modelplane.testing.processes import alive, free_port


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status


def test_serve_process_health_metrics_and_sigterm(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    address = f"127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelplane.cli",
            "controlplane",
            "serve",
            "--listen",
            address,
            "--db",
            f"sqlite:///{tmp_path / 'db' / 'cp.db'}",
            "--artifact-root",
            str(tmp_path / "art"),
            "--metrics-listen",
            f"127.0.0.1:{metrics_port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_serving(address, timeout=60, proc=proc)
        with grpc.insecure_channel(address) as ch:
            refl = reflection_pb2_grpc.ServerReflectionStub(ch)
            answer = next(
                refl.ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")])
                )
            )
            services = {s.name for s in answer.list_services_response.service}
        assert {
            "modelplane.v1.RegistryService",
            "modelplane.v1.BlobService",
            "grpc.health.v1.Health",
        } <= services
        with Client(address, principal="carol") as c:
            c.create_model("served")
            assert c.get_model("served").created_by == "carol"
        metrics = (
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
            .read()
            .decode()
        )
        assert (
            'modelplane_controlplane_requests_total{code="OK",method="CreateModel"} 1.0' in metrics
        )
        assert "modelplane_controlplane_request_duration_seconds_bucket" in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        _, err = proc.communicate(timeout=5)
        # Every line is JSON, the migrations' standard-library log lines included.
        lines = [json.loads(x) for x in err.splitlines() if x.strip()]
        assert any(x.get("logger", "").startswith("alembic") for x in lines)
        rpc = [x for x in lines if x.get("event") == "rpc" and x.get("method") == "CreateModel"]
        assert (
            rpc
            and rpc[0]["principal"] == "carol"
            and rpc[0]["request_id"]
            and rpc[0]["code"] == "OK"
        )
        assert any(x.get("event") == "shutting down" for x in lines)
        # The server wrote nothing outside its database folder and artifact root.
        assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "db"]
        # It closed its store before exiting: the database file alone holds the model.
        assert not list((tmp_path / "db").glob("*-wal"))
        with sqlite3.connect(tmp_path / "db" / "cp.db") as conn:
            assert conn.execute("SELECT count(*) FROM models").fetchone() == (1,)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_health_turns_not_serving_before_stop(controlplane) -> None:  # type: ignore[no-untyped-def]
    assert _health(controlplane.address) == health_pb2.HealthCheckResponse.SERVING
    from modelplane.server.lifecycle import set_serving

    set_serving(controlplane.handle.health, controlplane.handle.service_names, False)
    assert _health(controlplane.address) == health_pb2.HealthCheckResponse.NOT_SERVING


def test_workers_share_the_port_and_merge_metrics(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    address = f"127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelplane.cli",
            "controlplane",
            "serve",
            "--listen",
            address,
            "--db",
            f"sqlite:///{tmp_path / 'cp.db'}",
            "--artifact-root",
            str(tmp_path / "art"),
            "--metrics-listen",
            f"127.0.0.1:{metrics_port}",
            "--workers",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_serving(address, timeout=60, proc=proc)
        names = [f"w-{i}" for i in range(20)]
        for name in names:  # new connections spread over the workers
            with Client(address, principal="erin") as c:
                c.create_model(name)
        with Client(address) as c:
            assert sorted(m.name for m in c.list_models()) == sorted(f"models/{n}" for n in names)
        deadline = time.monotonic() + 10
        while True:
            # The merged endpoint opens once every worker is ready.
            try:
                url = f"http://127.0.0.1:{metrics_port}/metrics"
                text = urllib.request.urlopen(url, timeout=5).read().decode()
            except OSError as exc:
                text = str(exc)
            if (
                'modelplane_controlplane_requests_total{code="OK",method="CreateModel"} 20.0'
                in text
            ):
                break
            assert time.monotonic() < deadline, text[-2000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        _, err = proc.communicate(timeout=5)
        served = [json.loads(x) for x in err.splitlines() if x.startswith("{") and '"rpc"' in x]
        assert len([x for x in served if x["method"] == "CreateModel"]) == 20
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _children(pid: int) -> list[int]:
    from modelplane.testing.processes import proc_stats

    return [child for child, fields in proc_stats() if int(fields[1]) == pid and fields[0] != "Z"]


def _environ(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_text().split("\0")
    return dict(e.partition("=")[::2] for e in entries if "=" in e)


def test_workers_end_with_a_killed_supervisor(tmp_path: Path) -> None:
    from modelplane.server.supervisor import sweep_stale_metrics_dirs

    port = free_port()
    address = f"127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "modelplane.cli", "controlplane", "serve",
            "--listen", address, "--db", f"sqlite:///{tmp_path / 'cp.db'}",
            "--artifact-root", str(tmp_path / "art"), "--metrics-listen", "127.0.0.1:0",
            "--workers", "2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    workers: list[int] = []
    try:
        wait_serving(address, timeout=60, proc=proc)
        workers = _children(proc.pid)
        assert len(workers) == 2
        metrics_dir = Path(_environ(workers[0])["PROMETHEUS_MULTIPROC_DIR"])
        assert metrics_dir.is_dir()
        proc.kill()  # no handler runs: nothing forwards a signal to the workers
        proc.wait()
        deadline = time.monotonic() + 60
        while any(alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(p) for p in workers)
        with socket.socket() as s:  # nothing serves on the port any more
            assert s.connect_ex(("127.0.0.1", port)) != 0
        # The dead supervisor's metrics folder goes at the next supervisor's start (a worker
        # shown dead, its main thread a zombie, may hold the lock until its last thread ends).
        deadline = time.monotonic() + 30
        while metrics_dir.exists() and time.monotonic() < deadline:
            sweep_stale_metrics_dirs()
            time.sleep(0.05)
        assert not metrics_dir.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_metrics_dir_sweep_keeps_folders_in_use(tmp_path: Path) -> None:
    from modelplane.server.supervisor import (
        METRICS_DIR_PREFIX,
        hold_dir,
        sweep_stale_metrics_dirs,
    )

    used, stale, foreign = (tmp_path / f"{METRICS_DIR_PREFIX}{n}" for n in ("a", "b", "c"))
    for d in (used, stale, foreign):
        d.mkdir()
    held = hold_dir(str(used), create=True)
    assert held is not None
    os.close(hold_dir(str(stale), create=True))  # type: ignore[arg-type]
    try:
        sweep_stale_metrics_dirs(str(tmp_path))
        assert used.is_dir() and foreign.is_dir()  # held; no lock file (not ours to judge)
        assert not stale.exists()
    finally:
        os.close(held)


def test_database_url_secrets_are_masked() -> None:
    from controlplane.server import _redacted

    assert _redacted("postgresql://bob:pw@db:5432/cp?sslmode=require&sslpassword=k3y") == (
        "postgresql://bob:***@db:5432/cp?sslmode=require&sslpassword=***"
    )
    assert _redacted("postgresql+psycopg://db/cp?password=pw&PassFile=/p") == (
        "postgresql+psycopg://db/cp?PassFile=***&password=***"
    )
    assert _redacted("sqlite:///var/lib/cp.db") == "sqlite:///var/lib/cp.db"
    assert "pw" not in _redacted("postgresql://bob:pw@[db")


@pytest.mark.postgres
def test_serve_logs_no_password_from_the_url_query(tmp_path: Path, pg_url: str) -> None:
    # The server accepts any password (trust): what matters is what it logs.
    secret = "query-s3cret-9c1f"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "modelplane.cli", "controlplane", "serve",
            "--listen", "127.0.0.1:0", "--db", f"{pg_url}?password={secret}&sslmode=disable",
            "--artifact-root", str(tmp_path / "art"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if '"control plane serving"' in line:
                break
        serving = json.loads(lines[-1])
        assert serving["db"].endswith("?password=***&sslmode=disable")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        lines.extend(proc.stderr)
        assert not [x for x in lines if secret in x]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _status_name(address: str) -> str:
    """Health of ``address`` over a new connection, as a load balancer's probe asks it."""
    try:
        return health_pb2.HealthCheckResponse.ServingStatus.Name(_health(address))
    except grpc.RpcError as exc:
        return exc.code().name


def test_sigterm_answers_not_serving_and_serves_through_the_shutdown_delay(
    tmp_path: Path,
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "modelplane.cli", "controlplane", "serve",
            "--listen", address, "--db", f"sqlite:///{tmp_path / 'cp.db'}",
            "--artifact-root", str(tmp_path / "art"), "--shutdown-delay", "2s",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_serving(address, timeout=60, proc=proc)
        proc.send_signal(signal.SIGTERM)
        seen = [_status_name(address)]
        deadline = time.monotonic() + 30
        while seen[-1] == "SERVING" and time.monotonic() < deadline:
            time.sleep(0.02)
            seen.append(_status_name(address))
        # A probe sees NOT_SERVING, and calls over new connections are still served.
        assert seen[-1] == "NOT_SERVING", seen
        with Client(address, principal="dave") as c:
            c.create_model("late")
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_stop_signal_while_starting_stops_the_server_once_started(tmp_path: Path) -> None:
    """SIGTERM that arrives while the server starts (as soon as it logs that it serves, say)
    is held and stops it gracefully once its handlers are in place, instead of killing it."""
    import threading

    from modelplane.server.lifecycle import STOP_SIGNALS, hold_stop_signals
    from tests.controlplane.conftest import start_controlplane

    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    try:
        hold_stop_signals()
        os.kill(os.getpid(), signal.SIGTERM)  # arrives before the server is up
        cp = start_controlplane(tmp_path, f"sqlite:///{tmp_path / 'cp.db'}")
        assert _health(cp.address) == health_pb2.HealthCheckResponse.SERVING
        cp.handle.stop_on_signals()
        waiter = threading.Thread(target=cp.handle.wait, daemon=True)
        waiter.start()
        waiter.join(60)
        assert not waiter.is_alive(), "the held SIGTERM did not stop the server"
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@pytest.mark.parametrize(("value", "workers"), [("auto", 0), ("AUTO", 0), ("0", 0), ("3", 3)])
def test_the_workers_variable_takes_what_the_option_takes(
    monkeypatch: pytest.MonkeyPatch, value: str, workers: int
) -> None:
    from controlplane.settings import ControlPlaneSettings

    monkeypatch.setenv("MODELPLANE_WORKERS", value)
    assert ControlPlaneSettings().workers == workers


def test_a_negative_workers_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from controlplane.settings import ControlPlaneSettings

    monkeypatch.setenv("MODELPLANE_WORKERS", "-2")
    with pytest.raises(ValidationError, match="workers"):
        ControlPlaneSettings()


def test_a_stopped_server_leaves_no_request_threads(tmp_path: Path) -> None:
    """gRPC's stop leaves its thread pool's idle threads running: a process that starts and
    stops servers (tests, an embedding application) must not collect them."""
    import threading

    from tests.controlplane.conftest import start_controlplane

    before = set(threading.enumerate())
    cp = start_controlplane(tmp_path, f"sqlite:///{tmp_path / 'cp.db'}")
    with cp.client() as c:
        for i in range(4):
            c.create_model(f"m{i}")
    ours = [t for t in threading.enumerate() if t not in before and t.name.startswith("rpc")]
    assert ours  # the calls ran on the pool's threads
    cp.handle.stop(0)
    deadline = time.monotonic() + 10
    while any(t.is_alive() for t in ours) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [t.name for t in ours if t.is_alive()]
