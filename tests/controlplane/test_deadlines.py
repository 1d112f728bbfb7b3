"""Call deadlines against a real server: a wait longer than the client's per-call timeout is
answered by the server."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modelplane import Client, DeadlineExceeded, ModelplaneError
from modelplane.testing.onnx_models import mlp, save
from modelplane.v1 import operations_pb2, operations_pb2_grpc
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane
from tests.controlplane.test_cli import Cli


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
    assert time.monotonic() - started > 1  # it ran past one call's deadline
    assert int(json.loads(out)["rows"]) == 150_000
