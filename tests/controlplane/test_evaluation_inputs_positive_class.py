"""``--positive-class`` for a model with integer classes takes any spelling of an integral
number, as the label column does: holdout labels stored as the floats 0.0/1.0 are classes 0
and 1, so ``1.0`` names class 1. A fraction is still no class. Driven through a real control
plane with the CLI; metrics checked against scikit-learn on a direct ONNX Runtime run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from sklearn import metrics as skm

from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, TrainedModel
from tests.controlplane.test_cli import Cli


@pytest.fixture
def cli(controlplane: RunningControlPlane, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(controlplane.address, capsys)


@pytest.fixture
def float_labels(trained_model: TrainedModel, tmp_path: Path) -> tuple[Path, np.ndarray]:
    """The holdout with its 0/1 labels stored as floats, and those labels."""
    table = pacsv.read_csv(trained_model.holdout)
    index = table.schema.get_field_index(trained_model.label)
    labels = table.column(index).cast(pa.float64())
    path = tmp_path / "holdout.parquet"
    pq.write_table(table.set_column(index, trained_model.label, labels), path)
    return path, labels.to_numpy()


def _scores(trained_model: TrainedModel) -> np.ndarray:
    """Class-1 probabilities of a direct onnxruntime run over the holdout."""
    table = pacsv.read_csv(trained_model.holdout)
    x = np.column_stack(
        [table.column(n).to_numpy().astype(np.float32) for n in trained_model.feature_names]
    )
    session = ort.InferenceSession(str(trained_model.onnx), providers=["CPUExecutionProvider"])
    proba = session.run(None, {session.get_inputs()[0].name: x})[1].astype(np.float64)
    return (proba / proba.sum(axis=1, keepdims=True))[:, 1]


def _evaluate(cli: Cli, name: str, data: Path, positive: str) -> tuple[int, str, str]:
    return cli.run(
        "evaluate", name, "1", "--data", str(data), "--label", "target",
        "--positive-class", positive, "--compare-to", "-", "--wait",
    )  # fmt: skip


def test_integer_classes_take_a_positive_class_spelled_as_an_integral_number(
    cli: Cli, trained_model: TrainedModel, float_labels: tuple[Path, np.ndarray]
) -> None:
    """Before, ``--positive-class 1.0`` was refused: UNKNOWN_POSITIVE_CLASS, "'1.0' is not one
    of the model's classes [0, 1]", though the labels 1.0 were taken as class 1."""
    data, labels = float_labels
    name = unique()
    cli.json("models", "create", name)
    cli.json("versions", "register", name, "--onnx", str(trained_model.onnx))
    score = _scores(trained_model)
    y = labels.astype(np.int64)
    predicted = (score > 0.5).astype(np.int64)
    for spelling, positive in (("1.0", 1), ("1", 1), (" 1 ", 1), ("+1.", 1), ("0.0", 0)):
        code, out, err = _evaluate(cli, name, data, spelling)
        assert code == 0, (spelling, err)
        report = json.loads(out)["report"]
        assert report["classes"] == [0, 1]
        assert report["positive_class"] == positive
        metrics = report["metrics"]
        expected = {
            "precision": skm.precision_score(y, predicted, pos_label=positive),
            "recall": skm.recall_score(y, predicted, pos_label=positive),
            "f1": skm.f1_score(y, predicted, pos_label=positive),
        }
        for metric, value in expected.items():
            assert metrics[metric] == pytest.approx(value, abs=1e-9), (spelling, metric)
        positive_score = score if positive == 1 else 1.0 - score
        assert metrics["pr_auc"] == pytest.approx(
            skm.average_precision_score(y == positive, positive_score), abs=1e-6
        )

    # A fraction, another number or other text is still no class, named with the classes.
    for spelling in ("1.5", "2.0", "0.1", "one", "1_0"):
        code, _, err = _evaluate(cli, name, data, spelling)
        assert code != 0, spelling
        assert "UNKNOWN_POSITIVE_CLASS" in err, err
        assert f"positive class {spelling!r} is not one of the model's classes [0, 1]" in err


@pytest.mark.parametrize(
    ("classes", "given", "index"),
    [
        ([0.0, 1.0], "1", 1),  # a float label output: whole numbers match any spelling
        ([0.0, 1.0], "+1.0", 1),
        ([0.0, 1.0], "0", 0),
        ([0.5, 1.0], "1", None),  # not every class is a whole number: only exact text
        (["0", "1"], "1.0", None),  # string classes are matched as written
    ],
)
def test_float_classes_that_are_whole_numbers_take_any_integral_spelling(
    classes: list[object], given: str, index: int | None
) -> None:
    from controlplane.evaluation._engine import _positive_index
    from modelplane.errors import InvalidArgument

    if index is None:
        with pytest.raises(InvalidArgument) as refused:
            _positive_index(classes, given)
        assert refused.value.reason == "UNKNOWN_POSITIVE_CLASS"
    else:
        assert _positive_index(classes, given) == index
