"""``modelplane labels send`` against a real managed sidecar: labels join the predictions the
replica served, land in its label log, and bad files or addresses get the CLI's exit codes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from modelplane import Client
from modelplane.cli import main
from modelplane.oip import grpc_service_pb2_grpc as pbg
from modelplane.testing.processes import Server, controlplane, free_port, sidecar
from modelplane.testing.traffic import infer
from tests.conftest import unique
from tests.rollouts.harness import register, rows

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Server, list[str], list[int]]]:
    """A managed sidecar that answered 20 requests: (sidecar, request ids, predicted labels)."""
    cp = controlplane(tmp_path, f"sqlite:///{tmp_path / 'cp.db'}").start()
    sc: Server | None = None
    try:
        client = Client(cp.address, principal="alice", timeout=30)
        model = unique("m")
        v = register(client, tmp_path, model, champion={"seed": 0})
        client.create_deployment(model, model=model, champion_version=v["champion"])
        sc = sidecar(tmp_path, cp.address, model, name="sc").start()
        ids, predicted = [], []
        import numpy as np

        with grpc.insecure_channel(sc.address) as ch:
            stub = pbg.GRPCInferenceServiceStub(ch)
            for i, row in enumerate(rows(20)):
                reply = infer(stub, model, row, request_id=f"req-{i}")
                scores = np.frombuffer(reply.raw_output_contents[0], np.float32)
                ids.append(f"req-{i}")
                predicted.append(int(scores.argmax()))
        yield sc, ids, predicted
    finally:
        if sc is not None:
            sc.stop()
        cp.stop()


def test_labels_join_the_served_predictions(
    served: tuple[Server, list[str], list[int]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sc, ids, predicted = served
    labels = tmp_path / "labels.csv"
    truth = [p if i % 4 else 1 - p for i, p in enumerate(predicted)]  # a quarter wrong
    pacsv.write_csv(
        pa.table(
            {
                "request_id": [*ids, "never-served"],
                "row": [0] * (len(ids) + 1),
                "label": [*truth, 1],
            }
        ),
        labels,
    )
    capsys.readouterr()
    code = main(["--output", "json", "labels", "send", str(labels), "--sidecar", sc.address])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["labels"] == len(ids) + 1
    assert out["sidecars"] == [
        {
            "sidecar": sc.address,
            "outcome": "done",
            "delivered": len(ids) + 1,
            "accepted": len(ids) + 1,
            "matched": 20,
            "error": None,
        }
    ]
    label_logs = list((tmp_path / "sc" / "log").rglob("labels-*.arrows"))
    assert label_logs, "the sidecar wrote no label log"


def test_labels_bad_input(
    served: tuple[Server, list[str], list[int]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sc, ids, _ = served
    no_label = tmp_path / "no-label.csv"
    pacsv.write_csv(pa.table({"request_id": ids}), no_label)
    assert main(["labels", "send", str(no_label), "--sidecar", sc.address]) == 2
    assert "label" in capsys.readouterr().err
    assert main(["labels", "send", str(tmp_path / "missing.csv"), "--sidecar", sc.address]) == 2
    empty_id = tmp_path / "empty-id.csv"
    pacsv.write_csv(pa.table({"request_id": [""], "label": [1]}), empty_id)
    assert main(["labels", "send", str(empty_id), "--sidecar", sc.address]) == 2
    assert "line 2: the request_id cell is empty" in capsys.readouterr().err
    good = tmp_path / "good.csv"
    pacsv.write_csv(pa.table({"request_id": ids[:1], "label": [0]}), good)
    nobody = f"127.0.0.1:{free_port()}"
    assert main(["--timeout", "3", "labels", "send", str(good), "--sidecar", nobody]) == 4
