"""A CSV and a Parquet copy of one holdout evaluate alike when text looks like booleans: a
``True``/``False`` column read from a CSV is booleans to Arrow, but a model trained on pandas'
text classes, or taking that column as a string input, needs the text. Real skl2onnx models,
the evaluation engine on the files' bytes, compared with onnxruntime on the same rows."""

from __future__ import annotations

import io

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType, StringTensorType
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from controlplane.evaluation import evaluate
from modelplane.errors import InvalidArgument


def _both(frame: pd.DataFrame) -> tuple[bytes, bytes]:
    sink = io.BytesIO()
    frame.to_parquet(sink, index=False)
    return frame.to_csv(index=False).encode(), sink.getvalue()


def _frame(seed: int = 0, rows: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=rows)
    member = rng.choice(["True", "False"], rows)
    signal = x + np.where(member == "True", 1.0, -1.0) + rng.normal(scale=0.5, size=rows)
    return pd.DataFrame(
        {"x": x, "member": member, "outcome": np.where(signal > 0, "True", "False")}
    )


def test_text_classes_spelled_true_false_match_a_csv_label_column() -> None:
    """Before, the CSV's label column read as booleans and was spelled ``true``/``false``,
    which the model's classes ``False``/``True`` do not hold: UNKNOWN_LABELS."""
    train, holdout = _frame(0), _frame(1)[["x", "outcome"]]
    model = LogisticRegression().fit(train[["x"]].to_numpy(np.float32), train.outcome)
    onnx = to_onnx(
        model,
        initial_types=[("x", FloatTensorType([None, 1]))],
        options={id(model): {"zipmap": False}},
        target_opset=17,
    ).SerializeToString()
    csv, parquet = _both(holdout)
    reports = [evaluate(onnx, None, data, label="outcome") for data in (csv, parquet)]
    labels, _ = ort.InferenceSession(onnx).run(None, {"x": holdout[["x"]].to_numpy(np.float32)})
    expected = float(np.mean(labels == holdout.outcome.to_numpy()))
    for report in reports:
        assert report.metrics["accuracy"] == pytest.approx(expected, abs=1e-12)


def test_a_string_input_fed_from_a_csv_true_false_column_gets_the_text() -> None:
    """Before, the CSV column read as booleans was refused for the string input
    (NON_STRING_FEATURE, "encode it"), though it is text, as its Parquet copy shows."""
    train, holdout = _frame(2), _frame(3)
    pipe = Pipeline(
        [
            (
                "ct",
                ColumnTransformer(
                    [("num", "passthrough", ["x"]), ("cat", OneHotEncoder(), ["member"])]
                ),
            ),
            ("lr", LogisticRegression()),
        ]
    ).fit(train[["x", "member"]], train.outcome)
    onnx = to_onnx(
        pipe,
        initial_types=[("x", FloatTensorType([None, 1])), ("member", StringTensorType([None, 1]))],
        options={id(pipe): {"zipmap": False}},
        target_opset=17,
    ).SerializeToString()
    csv, parquet = _both(holdout)
    reports = [evaluate(onnx, None, data, label="outcome") for data in (csv, parquet)]
    feeds = {
        "x": holdout[["x"]].to_numpy(np.float32),
        "member": holdout[["member"]].to_numpy(object),
    }
    labels, _ = ort.InferenceSession(onnx).run(None, feeds)
    expected = float(np.mean(labels == holdout.outcome.to_numpy()))
    for report in reports:
        assert report.metrics["accuracy"] == pytest.approx(expected, abs=1e-12)

    empty = holdout.assign(member="")
    with pytest.raises(InvalidArgument) as err:
        evaluate(onnx, None, empty.to_csv(index=False).encode(), label="outcome")
    assert err.value.reason == "MISSING_VALUES" and "'member'" in err.value.message
