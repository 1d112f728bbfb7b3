"""Call deadlines against a real server: a wait longer than the client's per-call timeout is
answered by the server, a deadline that passes on the caller's side is told apart from an error
the server sent, and a watch ends quietly at its own timeout."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modelplane import CallDeadlineExceeded, Client, DeadlineExceeded, ModelplaneError
from modelplane.testing.onnx_models import mlp, save
from modelplane.v1 import operations_pb2, operations_pb2_grpc
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, start_controlplane
from tests.controlplane.test_cli import Cli
from tests.controlplane.test_deployments_api import deployed


@pytest.fixture
def cli(controlplane: RunningControlPlane, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(controlplane.address, capsys)


def _operation(controlplane: RunningControlPlane, error: ModelplaneError | None = None) -> str:
    """A running evaluation operation (nothing runs it: it stays undone), or with ``error``
    one that failed with it."""
    from controlplane.services import OperationService
    from controlplane.store import Store
    from modelplane.server import RequestContext

    ctx = RequestContext(principal="ci")
    store = Store.open(controlplane.db_url)
    try:
        ops = OperationService(store)
        op = ops.start(ctx, "evaluation", f"models/{unique()}/versions/1", lease_seconds=600)
        if error is not None:
            ops.finish(ctx, op.id, error=error)
    finally:
        store.close()
    return op.name


def test_the_server_answers_a_wait_before_the_calls_deadline(
    controlplane: RunningControlPlane,
) -> None:
    name = _operation(controlplane)
    request = operations_pb2.WaitOperationRequest(name=name)
    request.timeout.FromSeconds(30)
    with grpc.insecure_channel(controlplane.address) as channel:
        stub = operations_pb2_grpc.OperationsServiceStub(channel)
        for _ in range(3):
            op = stub.WaitOperation(
                request, timeout=1.0, metadata=(("x-modelplane-principal", "alice"),)
            )
            assert op.name == name and not op.done


def test_a_wait_may_outlast_the_clients_timeout(controlplane: RunningControlPlane) -> None:
    name = _operation(controlplane)
    with Client(controlplane.address, principal="alice", timeout=1) as c:
        started = time.monotonic()
        op = c.wait_operation(name, 3)
        assert not op.done and time.monotonic() - started >= 2.5
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as waited:
            c.operation_result(op, timeout=3)
        assert waited.value.reason == "OPERATION_TIMEOUT"
        assert time.monotonic() - started >= 2.9


def _slow_evaluation(client: Client, folder: Path) -> tuple[str, Path]:
    """A version whose evaluation on the returned data takes a few seconds here (a wide MLP
    over 150,000 rows)."""
    model = unique()
    client.create_model(model)
    onnx = save(mlp(4, (1024, 1024), 2, seed=5), folder / "slow.onnx")
    client.register_version(model, onnx, capture_env=False)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((150_000, 4)).astype(np.float32)
    columns = {f"f{i}": x[:, i] for i in range(4)}
    data = folder / "slow.parquet"
    pq.write_table(pa.table({**columns, "y": (x[:, 0] > 0).astype(np.int64)}), data)
    return model, data


def test_evaluate_wait_outlasts_the_global_timeout(
    cli: Cli, client: Client, tmp_path: Path
) -> None:
    model, data = _slow_evaluation(client, tmp_path)
    started = time.monotonic()
    code, out, err = cli.run(
        "--timeout",
        "1",
        "evaluate",
        model,
        "1",
        "--data",
        str(data),
        "--label",
        "y",
        "--features",
        "f0,f1,f2,f3",
        "--compare-to",
        "-",
        "--wait",
        "--wait-timeout",
        "120",
    )
    assert code == 0, err
    assert int(json.loads(out)["rows"]) == 150_000
    if time.monotonic() - started <= 1:
        pytest.skip("the evaluation ended within one call's deadline: nothing outlasted it")


@pytest.fixture
def busy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[tuple[Cli, str]]:
    """A control plane whose two RPC threads are each held by a 5 s WaitOperation, so that a
    call sent meanwhile waits for a thread, and its CLI. The fixture returns once a short call
    is seen waiting (on a loaded machine the two waits can take a while to be taken up)."""
    cp = start_controlplane(
        tmp_path, f"sqlite:///{tmp_path / 'cp.db'}", max_workers=1, max_watches=1, max_waits=2
    )
    request = operations_pb2.WaitOperationRequest(name=_operation(cp))
    request.timeout.FromSeconds(5)
    channel = grpc.insecure_channel(cp.address)
    stub = operations_pb2_grpc.OperationsServiceStub(channel)
    metadata = (("x-modelplane-principal", "alice"),)
    waits = [stub.WaitOperation.future(request, timeout=30, metadata=metadata) for _ in range(2)]
    probe = operations_pb2.ListOperationsRequest()
    give_up = time.monotonic() + 15
    while True:
        try:
            stub.ListOperations(probe, timeout=0.2, metadata=metadata)
        except grpc.RpcError as exc:
            if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                break  # both threads are held
            raise
        assert time.monotonic() < give_up, "the two waits never held the server's threads"
        time.sleep(0.05)
    try:
        yield Cli(cp.address, capsys), cp.address
    finally:
        for wait in waits:
            wait.result()
        channel.close()
        cp.handle.stop(0)


def test_a_deadline_passed_here_is_exit_4(busy: tuple[Cli, str]) -> None:
    cli, _ = busy
    code, out, err = cli.run("--timeout", "0.3", "models", "list")
    assert (code, out) == (4, "")
    assert "DEADLINE_EXCEEDED" in err and "--timeout" in err


def test_a_deadline_the_server_reports_stays_exit_3(
    cli: Cli, controlplane: RunningControlPlane
) -> None:
    failed = _operation(
        controlplane, DeadlineExceeded("ran for too long", reason="EVALUATION_TIMEOUT")
    )
    code, out, err = cli.run("operations", "wait", failed, "--timeout", "1")
    assert (code, out) == (3, "")
    assert "EVALUATION_TIMEOUT" in err


def test_the_sdk_tells_a_passed_deadline_from_a_reported_one(busy: tuple[Cli, str]) -> None:
    _, address = busy
    c = Client(address, principal="alice", timeout=0.3)
    with c, pytest.raises(CallDeadlineExceeded) as passed:
        c.get_model(unique())
    assert isinstance(passed.value, DeadlineExceeded)
    assert passed.value.reason == "DEADLINE_EXCEEDED"
    assert address in passed.value.message


def test_a_watch_ends_without_error_at_its_timeout(client: Client, tmp_path: Path) -> None:
    dep, _ = deployed(client, tmp_path)
    started = time.monotonic()
    states = list(client.watch_deployment(dep, replica="w", timeout=1.5))
    assert states and states[0].name == f"deployments/{dep}"
    assert 1.4 <= time.monotonic() - started < 10


def test_any_wait_length_and_no_client_timeout_are_taken(
    controlplane: RunningControlPlane,
) -> None:
    """A wait longer than the server waits is asked for as the server's longest (its call's
    deadline stays within what gRPC takes), and a client without a timeout waits without one."""
    failed = _operation(controlplane, error=DeadlineExceeded("slow", reason="EVALUATION_TIMEOUT"))
    with Client(controlplane.address, principal="alice", timeout=1) as c:
        assert c.wait_operation(failed, 1e10).done
    with Client(controlplane.address, principal="alice", timeout=None) as c:  # type: ignore[arg-type]
        assert c.wait_operation(failed, 5).done


def test_a_watch_of_a_server_that_never_answers_raises(tmp_path: Path) -> None:
    """Only a stream that answered and ran its whole time ends quietly: a server that
    accepts the connection and never answers is an error."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    try:
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        with (
            Client(address, principal="alice", timeout=5, retries=1) as c,
            pytest.raises(DeadlineExceeded),
        ):
            list(c.watch_deployment("d", replica="w", timeout=1))
    finally:
        silent.close()
