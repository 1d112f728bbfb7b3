"""The CLI's exit-code contract at its edges, against a real server: a bug is reported on one
line with its own code (never as exit 1, "a check failed"), and bad global options, waits,
rollout settings and JSON output keep to the table in the README."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelplane import Client
from modelplane.testing.processes import free_port
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, TrainedModel
from tests.controlplane.test_cli import Cli

BIN = Path(sys.executable).parent


@pytest.fixture
def cli(controlplane: RunningControlPlane, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(controlplane.address, capsys)


def test_an_unexpected_exception_is_one_line_and_exit_70(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique()
    assert cli.json("models", "create", name)["name"] == f"models/{name}"

    def broken(self: Client, model: str) -> object:
        raise KeyError("a bug")

    monkeypatch.setattr(Client, "get_model", broken)
    code, out, err = cli.run("models", "get", name)
    assert (code, out) == (70, "")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: internal error in the CLI (models): KeyError")


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "soon"])
def test_a_global_timeout_must_be_positive_seconds(cli: Cli, timeout: str) -> None:
    code, out, err = cli.run("--timeout", timeout, "models", "list")
    assert (code, out) == (2, "") and "--timeout" in err


def _operations(controlplane: RunningControlPlane) -> tuple[str, str, str]:
    """Three operations: one that succeeded, one that failed, one still running."""
    from controlplane.services import OperationService
    from controlplane.store import Store
    from modelplane.errors import InvalidArgument
    from modelplane.server import RequestContext

    ctx = RequestContext(principal="ci")
    store = Store.open(controlplane.db_url)
    try:
        ops = OperationService(store)
        target = f"models/{unique()}/versions/1"
        ok = ops.start(ctx, "evaluation", target)
        ops.finish(ctx, ok.id)
        failed = ops.start(ctx, "evaluation", target)
        ops.finish(ctx, failed.id, error=InvalidArgument("no column y", reason="UNKNOWN_COLUMN"))
        running = ops.start(ctx, "evaluation", target, lease_seconds=600)
    finally:
        store.close()
    return ok.name, failed.name, running.name


def test_operations_wait_exit_codes(cli: Cli, controlplane: RunningControlPlane) -> None:
    ok, failed, running = _operations(controlplane)
    assert cli.json("operations", "wait", ok, "--timeout", "1")["done"] is True
    code, out, err = cli.run("operations", "wait", failed, "--timeout", "1")
    assert (code, out) == (3, "")
    assert "INVALID_ARGUMENT" in err and "UNKNOWN_COLUMN" in err and "no column y" in err
    started = time.monotonic()
    code, out, err = cli.run("operations", "wait", running, "--timeout", "0.9")
    waited = time.monotonic() - started
    assert code == 5 and json.loads(out)["done"] is False and "still running" in err
    assert waited >= 0.8, waited  # 0.9 s is waited, not cut to 0
    code, out, err = cli.run("operations", "wait", running, "--timeout", "-1")
    assert (code, out) == (2, "") and "--timeout" in err


def test_evaluate_wait_exits_5_while_the_evaluation_goes_on(
    cli: Cli, controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    from tests.controlplane.test_evaluation_control import dataset, register

    with controlplane.client() as c:
        model_id, version = register(c, tmp_path, 10**12)
    data = str(dataset(tmp_path))
    args = ("evaluate", model_id, str(version), "--data", data, "--label", "target", "--wait")
    code, out, err = cli.run(*args, "--wait-timeout", "0.5")
    assert code == 5 and "still running" in err, err
    name = err.split("operations wait ")[-1].split()[0]
    assert json.loads(out)["name"] == name  # the operation, as operations wait prints it
    with controlplane.client() as c:
        assert not c.get_operation(name).done
    cancelled = cli.json("operations", "cancel", name)
    assert cancelled["done"] is True and cancelled["error"]["reason"] == "CANCELLED"
    code, out, err = cli.run("operations", "wait", name, "--timeout", "5")
    assert code == 3 and "CANCELLED" in err
    code, out, err = cli.run(*args, "--wait-timeout", "0")
    assert (code, out) == (2, "") and "--wait-timeout" in err


def test_operations_list_fetches_every_page(cli: Cli, controlplane: RunningControlPlane) -> None:
    from controlplane.services import OperationService
    from controlplane.store import Store
    from modelplane.server import RequestContext

    target = f"models/{unique()}/versions/1"
    store = Store.open(controlplane.db_url)
    try:
        ops = OperationService(store)
        made = {
            ops.start(RequestContext(principal="ci"), "evaluation", target).name for _ in range(55)
        }
    finally:
        store.close()
    listed = cli.json("operations", "list", "--target", target)  # the server's pages hold 50
    assert {o["name"] for o in listed["operations"]} == made and listed["next_page_token"] == ""
    page = cli.json("operations", "list", "--target", target, "--page-size", "20")
    assert len(page["operations"]) == 20 and page["next_page_token"]
    rest = cli.json(
        "operations", "list", "--target", target, "--page-token", page["next_page_token"]
    )
    assert len(rest["operations"]) == 35


@pytest.mark.parametrize(
    ("option", "value", "code", "says"),
    [
        ("--db", "mysql://x/y", 2, "unsupported database URL"),
        ("--db", "sqlite:///:memory:", 2, "an in-memory SQLite database cannot hold"),
        ("--db", "sqlite:///", 2, "an in-memory SQLite database cannot hold"),
        ("--db", "postgresql://u@127.0.0.1:notaport/x", 2, "--db"),
        ("--db", "postgresql://u@127.0.0.1:{closed}/x", 4, "cannot reach the database"),
        ("--listen", "notaport", 2, "--listen 'notaport': use HOST:PORT"),
        ("--log-level", "bogus", 2, "--log-level 'bogus'"),
        ("--max-upload-size", "0", 2, "max_upload_bytes: Input should be greater than 0"),
        ("--evaluation-timeout", "0s", 2, "evaluation_timeout_seconds: Input should be greater"),
        ("--evaluation-timeout", "soon", 2, "--evaluation-timeout"),
        ("--evaluation-workers", "0", 2, "evaluation_workers: Input should be greater than 0"),
        ("--max-watches", "0", 2, "max_watches: Input should be greater than 0"),
        ("--max-workers", "-1", 2, "max_workers: Input should be greater than 0"),
    ],
)
def test_controlplane_serve_refuses_bad_settings_in_one_line(
    tmp_path: Path, option: str, value: str, code: int, says: str
) -> None:
    argv = ["--listen", "127.0.0.1:0", "--artifact-root", str(tmp_path / "artifacts")]
    argv += [option, value.format(closed=free_port())]
    result = subprocess.run(
        [str(BIN / "modelplane"), "controlplane", "serve", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MODELPLANE_DB_URL": f"sqlite:///{tmp_path / 'cp.db'}"},
    )
    err = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert result.returncode == code, result.stderr
    assert len(err) == 1 and err[0].startswith("error: ") and says in err[0], result.stderr


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        (
            "EVALUATION_TIMEOUT_SECONDS",
            "inf",
            "evaluation_timeout_seconds: Input should be a finite",
        ),
        ("EVALUATION_TIMEOUT_SECONDS", "1e12", "evaluation_timeout_seconds: Input should be less"),
        ("OPERATION_LEASE_SECONDS", "nan", "operation_lease_seconds: Input should be a finite"),
        ("GRACE_SECONDS", "-inf", "grace_seconds: Input should be a finite"),
        ("GRACE_SECONDS", "1e12", "grace_seconds: Input should be less"),
        ("GRACE_SECONDS", "-5", "grace_seconds: Input should be greater than or equal to 0"),
        ("UPLOAD_IDLE_SECONDS", "0", "upload_idle_seconds: Input should be greater than 0"),
        ("UPLOAD_IDLE_SECONDS", "inf", "upload_idle_seconds: Input should be a finite"),
        ("UPLOAD_IDLE_SECONDS", "1e12", "upload_idle_seconds: Input should be less"),
        ("MAX_UPLOADS", "-1", "max_uploads: Input should be greater than or equal to 0"),
        # Intervals of loops: 0 would spin a CPU, a negative one is sent on to sidecars.
        ("RECONCILE_INTERVAL_SECONDS", "0", "reconcile_interval_seconds: Input should be greater"),
        ("WATCH_POLL_SECONDS", "0", "watch_poll_seconds: Input should be greater"),
        ("WATCH_HEARTBEAT_SECONDS", "0", "watch_heartbeat_seconds: Input should be greater"),
        ("REPORT_INTERVAL_SECONDS", "-1", "report_interval_seconds: Input should be greater"),
        ("REPORT_INTERVAL_SECONDS", "nan", "report_interval_seconds: Input should be a finite"),
        ("BLUE_GREEN_SWITCH_SECONDS", "-3", "blue_green_switch_seconds: Input should be greater"),
        ("REPORT_RETENTION_SECONDS", "-1", "report_retention_seconds: Input should be greater"),
        ("GUARD_MIN_REQUESTS", "-5", "guard_min_requests: Input should be greater"),
        ("BASELINE_SAMPLE_SIZE", "-1", "baseline_sample_size: Input should be greater"),
    ],
)
def test_controlplane_serve_refuses_seconds_no_timer_can_wait(
    tmp_path: Path, variable: str, value: str, says: str
) -> None:
    """Durations no timer can wait for, and the other limits read only from the environment."""
    argv = ["--listen", "127.0.0.1:0", "--artifact-root", str(tmp_path / "artifacts")]
    result = subprocess.run(
        [str(BIN / "modelplane"), "controlplane", "serve", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "MODELPLANE_DB_URL": f"sqlite:///{tmp_path / 'cp.db'}",
            f"MODELPLANE_{variable}": value,
        },
    )
    err = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert result.returncode == 2, result.stderr
    assert len(err) == 1 and err[0].startswith("error: ") and says in err[0], result.stderr


def test_versions_download_into_a_directory_names_out(
    cli: Cli, trained_model: TrainedModel, tmp_path: Path
) -> None:
    name = unique()
    cli.json("models", "create", name)
    cli.json("versions", "register", name, "--onnx", str(trained_model.onnx))
    folder = tmp_path / "downloads"
    folder.mkdir()
    code, out, err = cli.run("versions", "download", name, "1", "--out", str(folder))
    assert (code, out) == (2, "")
    assert err == f"error: --out {folder} is a directory: name the file to write\n"
    assert list(folder.iterdir()) == []


def test_audit_list_refuses_a_negative_limit(cli: Cli) -> None:
    cli.json("models", "create", unique())
    assert len(cli.json("audit", "list", "--limit", "1")["events"]) == 1
    code, out, err = cli.run("audit", "list", "--limit", "-1")
    assert (code, out) == (2, "")
    assert "argument --limit: '-1' is out of range" in err
