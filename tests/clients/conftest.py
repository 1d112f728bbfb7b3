"""Fixtures for the other-language clients and the CI example: a live control plane, a small
ONNX classifier with labelled data it scores perfectly, and the check for the rollout CLI."""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from controlplane.server import start
from controlplane.settings import ControlPlaneSettings
from modelplane.server import GrpcServerHandle

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@dataclass
class LiveControlPlane:
    """A control plane on SQLite in a temporary folder, and its address."""

    handle: GrpcServerHandle
    address: str


@pytest.fixture(scope="module")
def live_controlplane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveControlPlane]:
    """One control plane per test module (each test uses its own model ids)."""
    tmp = tmp_path_factory.mktemp("cp")
    settings = ControlPlaneSettings(  # type: ignore[call-arg]  # the rest from defaults
        listen="127.0.0.1:0",
        db_url=f"sqlite:///{tmp / 'cp.db'}",
        artifact_root=str(tmp / "artifacts"),
        grace_seconds=1.0,
    )
    handle = start(settings)
    yield LiveControlPlane(handle, f"127.0.0.1:{handle.port}")
    handle.stop(0)


@dataclass
class Classifier:
    """A 4-feature MLP as ONNX, with train and holdout CSVs labelled by its own argmax."""

    onnx: Path
    train: Path
    holdout: Path
    label: str = "label"


@pytest.fixture(scope="session")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    """Labels are the model's own predictions, so its holdout ROC AUC is exactly 1."""
    import onnxruntime as ort
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from modelplane.testing import mlp, save

    folder = tmp_path_factory.mktemp("classifier")
    model = mlp(4, (8,), 2, seed=3)
    save(model, folder / "model.onnx")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for name, rows in (("train", 300), ("holdout", 200)):
        x = rng.normal(size=(rows, 4)).astype(np.float32)
        y = session.run(None, {"input": x})[0].argmax(axis=1)
        columns = {f"f{i}": x[:, i].astype(np.float64) for i in range(4)}
        pacsv.write_csv(pa.table({**columns, "label": y.astype(np.int64)}), folder / f"{name}.csv")
    return Classifier(folder / "model.onnx", folder / "train.csv", folder / "holdout.csv")


@pytest.fixture
def silent_server() -> Iterator[str]:
    """HOST:PORT of a listener that accepts connections and never answers on them."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:  # closed at teardown
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    listener.close()
    for conn in held:
        conn.close()
