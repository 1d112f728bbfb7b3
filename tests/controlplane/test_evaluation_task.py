"""The task of an evaluation: a one-column sigmoid classifier with a label output (as torch and
keras export them) is read as a binary classifier, and a caller can set the task and the
positive class, in the engine and through a real control plane over gRPC (SDK and CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from onnx import TensorProto, helper, numpy_helper
from sklearn import metrics as skm
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from controlplane.evaluation import evaluate
from modelplane.cli import main
from modelplane.errors import InvalidArgument
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane

DATA = load_breast_cancer()
X = StandardScaler().fit_transform(DATA.data).astype(np.float32)
Y = DATA.target.astype(np.int64)
NAMES = [f"f{i}" for i in range(X.shape[1])]
CLF = LogisticRegression(max_iter=3000).fit(X, Y)
P = CLF.predict_proba(X)[:, 1]


def sigmoid_model(label_type: int | None = TensorProto.INT64) -> bytes:
    """``probability [-1, 1] = sigmoid(X W + b)`` and, unless ``label_type`` is None, a
    ``label [-1]`` output ``probability > 0.5`` cast to ``label_type``."""
    inits = [
        numpy_helper.from_array(CLF.coef_.T.astype(np.float32), "W"),
        numpy_helper.from_array(CLF.intercept_.astype(np.float32), "b"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        numpy_helper.from_array(np.array([-1], np.int64), "flat"),
    ]
    nodes = [
        helper.make_node("MatMul", ["X", "W"], ["z0"]),
        helper.make_node("Add", ["z0", "b"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["probability"]),
    ]
    outputs = [helper.make_tensor_value_info("probability", TensorProto.FLOAT, [None, 1])]
    if label_type is not None:
        nodes += [
            helper.make_node("Greater", ["probability", "half"], ["above"]),
            helper.make_node("Cast", ["above"], ["cast"], to=label_type),
            helper.make_node("Reshape", ["cast", "flat"], ["label"]),
        ]
        outputs.append(helper.make_tensor_value_info("label", label_type, [None]))
    graph = helper.make_graph(
        nodes,
        "sigmoid",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, X.shape[1]])],
        outputs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def table() -> pa.Table:
    return pa.table({**{n: X[:, i].astype(np.float64) for i, n in enumerate(NAMES)}, "y": Y})


def check_binary(metrics: dict, positive: int = 1) -> None:
    """Metrics of the sigmoid model against scikit-learn with ``positive`` as positive class."""
    y = np.equal(Y, positive)
    score = P if positive == 1 else 1.0 - P
    pred = (P > 0.5) == (positive == 1)
    assert metrics["accuracy"] == pytest.approx(skm.accuracy_score(Y, P > 0.5))
    assert metrics["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert metrics["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert metrics["roc_auc"] == pytest.approx(skm.roc_auc_score(y, score), abs=1e-6)
    assert metrics["pr_auc"] == pytest.approx(skm.average_precision_score(y, score), abs=1e-4)
    assert metrics["log_loss"] == pytest.approx(skm.log_loss(Y, P), rel=1e-4)
    assert metrics["brier"] == pytest.approx(skm.brier_score_loss(y, score), rel=1e-4)


@pytest.mark.parametrize(
    "label_type", [TensorProto.INT64, TensorProto.INT32, TensorProto.BOOL], ids=str
)
def test_one_sigmoid_column_with_a_label_output_is_a_binary_classifier(label_type: int) -> None:
    report = evaluate(sigmoid_model(label_type), None, table(), label="y", feature_names=NAMES)
    assert report.task == "classification"
    assert report.classes == [0, 1] and report.positive_class == 1
    check_binary(report.metrics)
    assert not [w for w in report.warnings if w.scope == "model"]


def test_the_task_and_positive_class_override_the_detection() -> None:
    with_label = sigmoid_model()
    as_regression = evaluate(with_label, None, table(), label="y", task="regression")
    assert as_regression.task == "regression"
    assert as_regression.metrics["rmse"] == pytest.approx(
        np.sqrt(skm.mean_squared_error(Y, P)), rel=1e-4
    )
    negative = evaluate(with_label, None, table(), label="y", positive_class=0)
    assert negative.positive_class == 0
    check_binary(negative.metrics, positive=0)
    # Without a label output one float column stays a regressor unless the task says otherwise.
    bare = sigmoid_model(None)
    assert evaluate(bare, None, table(), label="y").task == "regression"
    forced = evaluate(bare, None, table(), label="y", task="classification")
    assert forced.task == "classification"
    check_binary(forced.metrics)


def test_a_positive_class_needs_a_binary_classifier() -> None:
    for kwargs in ({"task": "regression"}, {}):
        with pytest.raises(InvalidArgument) as err:
            evaluate(sigmoid_model(None), None, table(), label="y", positive_class=1, **kwargs)
        assert err.value.reason == "POSITIVE_CLASS_NEEDS_BINARY"


@pytest.fixture()
def registered(
    controlplane: RunningControlPlane, tmp_path: Path
) -> tuple[RunningControlPlane, str, Path]:
    """A model whose versions 1 (alias champion) and 2 are the sigmoid model, and a dataset."""
    model_id = unique()
    path = tmp_path / "sigmoid.onnx"
    path.write_bytes(sigmoid_model())
    data = tmp_path / "data.parquet"
    pq.write_table(table(), data)
    with controlplane.client() as c:
        c.create_model(model_id)
        for _ in range(2):
            c.register_version(model_id, path, feature_names=NAMES)
        c.set_alias(model_id, "champion", 1)
    return controlplane, model_id, data


def test_task_and_positive_class_over_grpc(registered) -> None:
    controlplane, model_id, data = registered
    with controlplane.client() as c:
        detected = c.operation_result(c.evaluate(model_id, 2, data, label="y", compare_to="-"))
        assert detected.task == "classification"
        check_binary(dict(detected.metrics))
        regression = c.operation_result(
            c.evaluate(model_id, 2, data, label="y", task="regression", compare_to="-")
        )
        assert regression.task == "regression" and "rmse" in regression.metrics
        # The champion's stored evaluation has positive class 1; a comparison made with
        # positive class 0 evaluates the champion again with that class: same model, no change.
        c.operation_result(c.evaluate(model_id, 1, data, label="y"))
        negative = c.operation_result(c.evaluate(model_id, 2, data, label="y", positive_class=0))
        assert negative.report["positive_class"] == 0
        check_binary(dict(negative.metrics), positive=0)
        assert negative.compared_version == f"models/{model_id}/versions/1"
        assert dict(negative.deltas) == pytest.approx(dict.fromkeys(negative.metrics, 0.0))
        for kwargs, reason in (
            ({"task": "ranking"}, "INVALID_TASK"),
            ({"task": "regression", "positive_class": "1"}, "POSITIVE_CLASS_NEEDS_BINARY"),
            ({"positive_class": "a\nb"}, None),
        ):
            with pytest.raises(InvalidArgument) as err:
                c.evaluate(model_id, 2, data, label="y", **kwargs)  # type: ignore[arg-type]
            assert reason is None or err.value.reason == reason


def test_cli_evaluate_takes_the_task(registered, capsys: pytest.CaptureFixture[str]) -> None:
    controlplane, model_id, data = registered
    argv = ["--server", controlplane.address, "--output", "json", "evaluate", model_id, "2"]
    argv += ["--data", str(data), "--label", "y", "--compare-to", "-", "--wait"]
    capsys.readouterr()
    assert main([*argv, "--task", "regression"]) == 0
    assert json.loads(capsys.readouterr().out)["task"] == "regression"
    assert main([*argv, "--positive-class", "0"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["task"] == "classification" and doc["report"]["positive_class"] == 0
    check_binary(doc["metrics"], positive=0)
