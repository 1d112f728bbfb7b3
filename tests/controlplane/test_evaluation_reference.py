"""The reference (champion) side of a server-side evaluation, through a real control plane: it
reads its own features, never the challenger's, and a reference that cannot run leaves the
challenger's evaluation standing, with a warning and no deltas."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from skl2onnx import to_onnx
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression

from modelplane import Client
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane

DATA = load_breast_cancer()
X = DATA.data.astype(np.float32)
Y = DATA.target


def model(columns: list[int], path: Path) -> Path:
    clf = LogisticRegression(max_iter=5000).fit(X[:, columns], Y)
    onx = to_onnx(clf, X[:1, columns], options={id(clf): {"zipmap": False}}, target_opset=17)
    path.write_bytes(onx.SerializeToString())
    return path


def dataset(path: Path, names: list[str], columns: list[int]) -> Path:
    table = {n: X[:, c].astype(np.float64) for n, c in zip(names, columns, strict=True)}
    table["target"] = Y.astype(np.int64)
    pq.write_table(pa.table(table), path)
    return path


FIVE = [f"f{i}" for i in range(5)]


def champion_and_challenger(
    c: Client, folder: Path, champion_columns: list[int], champion_names: list[str]
) -> tuple[str, int, int]:
    model_id = unique()
    c.create_model(model_id)
    champ = model(champion_columns, folder / f"{model_id}-champ.onnx")
    v1 = int(c.register_version(model_id, champ, feature_names=champion_names).version)
    c.set_alias(model_id, "champion", v1)
    chall = model(list(range(5)), folder / f"{model_id}-chall.onnx")
    v2 = int(c.register_version(model_id, chall, feature_names=FIVE).version)
    return model_id, v1, v2


def _warnings(ev) -> list[str]:
    return [w["code"] for w in ev.report["warnings"]]


@pytest.mark.parametrize(
    "names", [["a", "b", "c"], []], ids=["features-absent", "no-feature-names"]
)
def test_a_reference_that_cannot_run_leaves_a_warning(
    controlplane_any: RunningControlPlane, tmp_path: Path, names: list[str]
) -> None:
    data = dataset(tmp_path / "d.parquet", FIVE, list(range(5)))
    with controlplane_any.client() as c:
        model_id, _, v2 = champion_and_challenger(c, tmp_path, [0, 1, 2], names)
        ev = c.operation_result(c.evaluate(model_id, v2, data, label="target"))
    assert ev.compared_version == "" and dict(ev.deltas) == {}
    assert ev.metrics["roc_auc"] > 0.9
    assert "REFERENCE_EVALUATION_FAILED" in _warnings(ev)
    reason = "MISSING_FEATURES" if names else "UNKNOWN_FEATURES"
    assert any(reason in w["message"] for w in ev.report["warnings"])


def test_the_reference_is_not_fed_the_challengers_columns(
    controlplane_any: RunningControlPlane, tmp_path: Path
) -> None:
    # The champion was trained on columns 10-14 and registered under their names g0-g4, which
    # the dataset lacks: it must not be run on the challenger's f0-f4 instead.
    data = dataset(tmp_path / "d.parquet", FIVE, list(range(5)))
    with controlplane_any.client() as c:
        model_id, _, v2 = champion_and_challenger(
            c, tmp_path, list(range(10, 15)), [f"g{i}" for i in range(5)]
        )
        ev = c.operation_result(c.evaluate(model_id, v2, data, label="target"))
    assert ev.compared_version == "" and dict(ev.deltas) == {}
    assert "REFERENCE_EVALUATION_FAILED" in _warnings(ev)


def test_the_challengers_features_override_is_not_applied_to_the_reference(
    controlplane_any: RunningControlPlane, tmp_path: Path
) -> None:
    data = dataset(tmp_path / "d.parquet", FIVE, list(range(5)))
    with controlplane_any.client() as c:
        model_id, v1, v2 = champion_and_challenger(c, tmp_path, [0, 1, 2], FIVE[:3])
        ev = c.operation_result(c.evaluate(model_id, v2, data, label="target", features=FIVE))
        champion = c.operation_result(
            c.evaluate(model_id, v1, data, label="target", compare_to="-")
        )
    assert ev.compared_version == f"models/{model_id}/versions/{v1}"
    assert ev.deltas["roc_auc"] == pytest.approx(
        ev.metrics["roc_auc"] - champion.metrics["roc_auc"]
    )
