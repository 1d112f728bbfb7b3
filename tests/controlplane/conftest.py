"""Fixtures for control-plane tests: a real server on a free port, and real models and data."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from controlplane.server import start
from controlplane.settings import ControlPlaneSettings
from modelplane import Client
from modelplane.errors import PermissionDenied
from modelplane.server import GrpcServerHandle


@dataclass
class RunningControlPlane:
    handle: GrpcServerHandle
    address: str
    artifact_root: Path
    db_url: str

    def client(self, principal: str = "alice") -> Client:
        return Client(self.address, principal=principal, timeout=30)


def start_controlplane(tmp: Path, db_url: str, **overrides: object) -> RunningControlPlane:
    """A control plane in this process on ``db_url``, its artifacts under ``tmp``, with
    ``overrides`` of :class:`ControlPlaneSettings`; the caller stops it."""
    settings = ControlPlaneSettings(
        listen="127.0.0.1:0",
        db_url=db_url,
        artifact_root=str(tmp / "artifacts"),
        grace_seconds=1.0,
        **overrides,  # type: ignore[arg-type]
    )
    handle = start(settings)
    return RunningControlPlane(handle, f"127.0.0.1:{handle.port}", tmp / "artifacts", db_url)


@pytest.fixture
def controlplane(tmp_path: Path) -> Iterator[RunningControlPlane]:
    """A control plane on SQLite in a temporary folder (upload limit 8 MiB)."""
    cp = start_controlplane(
        tmp_path, f"sqlite:///{tmp_path / 'cp.db'}", max_upload_bytes=8 * 1024 * 1024
    )
    yield cp
    cp.handle.stop(0)


@pytest.fixture
def controlplane_any(tmp_path: Path, db_url: str) -> Iterator[RunningControlPlane]:
    """A control plane on each backend (SQLite and PostgreSQL)."""
    cp = start_controlplane(tmp_path, db_url)
    yield cp
    cp.handle.stop(0)


@pytest.fixture
def client(controlplane: RunningControlPlane) -> Iterator[Client]:
    with controlplane.client() as c:
        yield c


@dataclass
class TrainedModel:
    onnx: Path
    train: Path
    holdout: Path
    feature_names: list[str]
    label: str


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """A logistic regression on scikit-learn's bundled breast-cancer data, exported with skl2onnx,
    with its train split as Parquet and its holdout split as CSV."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    data = load_breast_cancer()
    names = [n.replace(" ", "_") for n in data.feature_names]
    x = data.data.astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, data.target, test_size=0.25, random_state=0)
    clf = LogisticRegression(max_iter=5000).fit(x_tr, y_tr)
    folder = tmp_path_factory.mktemp("model")
    onx = to_onnx(clf, x_tr[:1], options={id(clf): {"zipmap": False}}, target_opset=17)
    (folder / "model.onnx").write_bytes(onx.SerializeToString())

    def table(xs: np.ndarray, ys: np.ndarray) -> pa.Table:
        cols = {n: xs[:, i].astype(np.float64) for i, n in enumerate(names)}
        cols["target"] = ys.astype(np.int64)
        return pa.table(cols)

    pq.write_table(table(x_tr, y_tr), folder / "train.parquet")
    import pyarrow.csv as pacsv

    pacsv.write_csv(table(x_te, y_te), folder / "holdout.csv")
    return TrainedModel(
        folder / "model.onnx", folder / "train.parquet", folder / "holdout.csv", names, "target"
    )


def serve_refused(
    tmp: Path, *options: str, db: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``modelplane controlplane serve OPTIONS`` run to its end (for settings it must refuse at
    start) on ``db`` (a SQLite file under ``tmp`` by default), with the MODELPLANE_ settings of
    this process left out and ``env`` added."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MODELPLANE_")}
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "modelplane"),
            *("controlplane", "serve", "--db", db or f"sqlite:///{tmp / 'cp.db'}"),
            *("--artifact-root", str(tmp / "artifacts"), *options),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, **(env or {})},
    )


def refused(call: Callable[[], object], reason: str = "MODEL_NOT_IN_SCOPE") -> PermissionDenied:
    """The PERMISSION_DENIED that ``call`` raises, checked to carry ``reason``."""
    with pytest.raises(PermissionDenied) as denied:
        call()
    assert denied.value.reason == reason, denied.value
    return denied.value
