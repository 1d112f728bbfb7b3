"""``modelplane labels send`` to several sidecars when one fails: every other sidecar still gets
every label, the output names each sidecar's outcome (what a failed one had answered before
it failed), and the exit code is the worst outcome's (3 refused, else 4 not reached)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from real_plane import RealPlane, real_managed, real_plane  # noqa: F401
from sidecar_helpers import raw_request, stub

from modelplane.cli import main
from modelplane.cli.labels import BATCH
from modelplane.testing.processes import free_port
from modelplane.v1 import sidecar_pb2, sidecar_pb2_grpc
from tests.conftest import grpc_service

NAME = "fraud"


@pytest.fixture
def replicas(
    real_managed: Any,  # noqa: F811
    real_plane: RealPlane,  # noqa: F811
    artifacts: dict[int, bytes],
) -> list[Any]:
    """Two managed sidecars, each of which answered one row under the id ``r1``."""
    real_plane.deploy({1: artifacts[1]})
    handles = [real_managed(), real_managed()]
    x = np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)
    for h in handles:
        assert h.wait_ready(60)
        stub(h.port).ModelInfer(raw_request(NAME, {"input": ("FP32", x)}, id="r1"))
    deadline = time.monotonic() + 10
    while any(len(h.observer.index) < 1 for h in handles) and time.monotonic() < deadline:
        time.sleep(0.02)
    return handles


class _BreaksAfterOneCall(sidecar_pb2_grpc.SidecarAdminServiceServicer):
    """A sidecar's admin service that takes the first batch of labels, then fails every call
    with UNAVAILABLE (a replica going away part-way through)."""

    def __init__(self) -> None:
        self.calls = 0

    def IngestLabels(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.calls += 1
        if self.calls > 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the replica is shutting down")
        return sidecar_pb2.IngestLabelsResponse(accepted=len(request.labels), matched=0)


@pytest.fixture
def breaking() -> Iterator[tuple[str, _BreaksAfterOneCall]]:
    """The address of a sidecar that fails on its second batch, and its service."""
    service = _BreaksAfterOneCall()
    with grpc_service(
        sidecar_pb2_grpc.add_SidecarAdminServiceServicer_to_server, service
    ) as address:
        yield address, service


def _send(
    capsys: pytest.CaptureFixture[str], path: Path, sidecars: list[str], *extra: str
) -> tuple[int, str, str]:
    """Run ``labels send`` with JSON output: (exit code, stdout, stderr)."""
    argv = ["--timeout", "3", "--output", "json", "labels", "send", str(path), *extra]
    for address in sidecars:
        argv += ["--sidecar", address]
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_a_sidecar_down_in_the_middle_leaves_the_others_sent_to(
    replicas: list[Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, c = replicas
    down = f"127.0.0.1:{free_port()}"
    labels = tmp_path / "labels.csv"
    labels.write_text("request_id,row,label\nr1,0,1\nnever-served,0,0\n")
    code, out, err = _send(capsys, labels, [a.address, down, c.address])
    assert code == 4, err
    sidecars = {s["sidecar"]: s for s in json.loads(out)["sidecars"]}
    assert list(sidecars) == [a.address, down, c.address]
    # The sidecar listed after the one that failed got every label too: it joined r1.
    for h in (a, c):
        assert sidecars[h.address] == {
            "sidecar": h.address,
            "outcome": "done",
            "delivered": 2,
            "accepted": 0,
            "matched": 1,
            "error": None,
        }
    failed = sidecars[down]
    assert (failed["outcome"], failed["delivered"]) == ("failed", 0)
    assert failed["error"]["status"] == "UNAVAILABLE"
    assert f"cannot reach the sidecar at {down}" in failed["error"]["message"]
    assert f"cannot reach the sidecar at {down}" in err
    assert f"2 of 3 sidecars have every label ({a.address}, {c.address})" in err
    assert f"send the file again to {down}" in err

    # The table says the same.
    assert main(["--timeout", "3", "labels", "send", str(labels), "--sidecar", down]) == 4
    table = capsys.readouterr().out
    assert down in table and "failed" in table


def test_a_sidecar_failing_part_way_says_which_batches_it_took(
    replicas: list[Any],
    breaking: tuple[str, _BreaksAfterOneCall],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """12,000 labels in batches of 5,000: a sidecar that answers the first batch and fails
    the second is reported with what it took, not as one that could not be reached."""
    a, _ = replicas
    broken, service = breaking
    count = 2 * BATCH + 2_000
    labels = tmp_path / "labels.csv"
    body = "".join(f"never-{i},0,{i % 2}\n" for i in range(count - 1))
    labels.write_text(f"request_id,row,label\n{body}r1,0,1\n")
    code, out, err = _send(capsys, labels, [broken, a.address])
    assert code == 4, err
    assert service.calls == 2
    document = json.loads(out)
    assert document["labels"] == count
    failed, done = document["sidecars"]
    assert (failed["sidecar"], failed["outcome"]) == (broken, "failed")
    assert (failed["delivered"], failed["accepted"]) == (BATCH, BATCH)
    message = failed["error"]["message"]
    assert "cannot reach" not in message and "cannot reach" not in err
    assert f"answered batch 1 of 3 (labels 1 to {BATCH} of {count})" in message
    assert f"then batch 2 (labels {BATCH + 1} to {2 * BATCH}) failed" in message
    assert "the replica is shutting down" in message
    assert message in err
    assert done == {
        "sidecar": a.address,
        "outcome": "done",
        "delivered": count,
        "accepted": 0,
        "matched": 1,
        "error": None,
    }


def test_a_sidecar_refusing_the_labels_is_exit_3_over_one_not_reached(
    replicas: list[Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A classifier's replica refuses a fractional target for a row it answered (an error it
    sent, exit 3); another sidecar was not reached (exit 4): the run exits 3, and the replica
    listed last is still sent to."""
    a, c = replicas
    down = f"127.0.0.1:{free_port()}"
    labels = tmp_path / "labels.csv"
    labels.write_text("request_id,row,label\nr1,0,0.5\n")
    code, out, err = _send(capsys, labels, [down, a.address, c.address], "--kind", "target")
    assert code == 3, err
    outcomes = json.loads(out)["sidecars"]
    assert [s["outcome"] for s in outcomes] == ["failed", "failed", "failed"]
    assert outcomes[0]["error"]["status"] == "UNAVAILABLE"
    for refused in outcomes[1:]:
        assert refused["error"]["status"] == "INVALID_ARGUMENT"
        assert refused["error"]["reason"] == "LABEL_TYPE_MISMATCH"
    assert "0 of 3 sidecars have every label" in err
