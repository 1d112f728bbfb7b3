"""The task of an evaluation: a one-column classifier (a Sigmoid or Softmax output, an output
named ``*prob*``, or one beside a label output named ``*label*``, as torch and keras export
them) is read as a binary classifier and any other float column as a regression value, as the
managed sidecar reads them; boolean label outputs give the classes False and True; and a
caller can set the task and the positive class, in the engine and through a real control plane
over gRPC (SDK and CLI)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from onnx import TensorProto, helper, numpy_helper
from sklearn import metrics as skm
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.preprocessing import StandardScaler

from controlplane.evaluation import evaluate
from modelplane.cli import main
from modelplane.errors import InvalidArgument
from sidecar.managed.compare import OutputRule
from sidecar.signature import signature_of
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane

DATA = load_breast_cancer()
X = StandardScaler().fit_transform(DATA.data).astype(np.float32)
Y = DATA.target.astype(np.int64)
NAMES = [f"f{i}" for i in range(X.shape[1])]
CLF = LogisticRegression(max_iter=3000).fit(X, Y)
P = CLF.predict_proba(X)[:, 1]


def binary_model(
    score: str = "probability",
    head: str = "Sigmoid",
    labels: Sequence[tuple[str, int]] = (("label", TensorProto.INT64),),
) -> bytes:
    """``score [-1, 1] = sigmoid(X W + b)``, made by a Sigmoid node (``head="Sigmoid"``) or by
    adding 0 to it (``head="Add"``: same values, no probability op), and for each ``(name,
    type)`` of ``labels`` an output ``name [-1]`` = ``score > 0.5`` cast to ``type``."""
    inits = [
        numpy_helper.from_array(CLF.coef_.T.astype(np.float32), "W"),
        numpy_helper.from_array(CLF.intercept_.astype(np.float32), "b"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array([-1], np.int64), "flat"),
    ]
    nodes = [
        helper.make_node("MatMul", ["X", "W"], ["z0"]),
        helper.make_node("Add", ["z0", "b"], ["z"]),
    ]
    if head == "Sigmoid":
        nodes.append(helper.make_node("Sigmoid", ["z"], [score]))
    else:
        nodes.append(helper.make_node("Sigmoid", ["z"], ["p"]))
        nodes.append(helper.make_node(head, ["p", "zero"], [score]))
    outputs = [helper.make_tensor_value_info(score, TensorProto.FLOAT, [None, 1])]
    nodes.append(helper.make_node("Greater", [score, "half"], ["above"]))
    for name, label_type in labels:
        nodes += [
            helper.make_node("Cast", ["above"], [f"{name}_cast"], to=label_type),
            helper.make_node("Reshape", [f"{name}_cast", "flat"], [name]),
        ]
        outputs.append(helper.make_tensor_value_info(name, label_type, [None]))
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


def sigmoid_model(label_type: int | None = TensorProto.INT64) -> bytes:
    """``probability [-1, 1] = sigmoid(X W + b)`` and, unless ``label_type`` is None, a
    ``label [-1]`` output ``probability > 0.5`` cast to ``label_type``."""
    return binary_model(labels=() if label_type is None else (("label", label_type),))


DIABETES = load_diabetes()
RX = DIABETES.data.astype(np.float32)
RY = DIABETES.target
REG = LinearRegression().fit(RX, RY)
RPRED = REG.predict(RX)


def regressor_with_count() -> bytes:
    """``prediction [-1, 1] = X W + b`` (a linear regression) and ``count [-1, 1]``, the
    prediction rounded and cast to INT64: an integer output that is no class label."""
    inits = [
        numpy_helper.from_array(REG.coef_.reshape(-1, 1).astype(np.float32), "W"),
        numpy_helper.from_array(np.array([REG.intercept_], np.float32), "b"),
    ]
    nodes = [
        helper.make_node("MatMul", ["X", "W"], ["z"]),
        helper.make_node("Add", ["z", "b"], ["prediction"]),
        helper.make_node("Round", ["prediction"], ["rounded"]),
        helper.make_node("Cast", ["rounded"], ["count"], to=TensorProto.INT64),
    ]
    graph = helper.make_graph(
        nodes,
        "regressor",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, RX.shape[1]])],
        [
            helper.make_tensor_value_info("prediction", TensorProto.FLOAT, [None, 1]),
            helper.make_tensor_value_info("count", TensorProto.INT64, [None, 1]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def regression_table() -> pa.Table:
    return pa.table({**{f"r{i}": RX[:, i].astype(np.float64) for i in range(RX.shape[1])}, "y": RY})


def sidecar_reads_a_regression(model: bytes, tmp_path: Path) -> bool:
    """Whether the managed sidecar's label rule reads ``model`` as a regressor."""
    path = tmp_path / "model.onnx"
    path.write_bytes(model)
    rule: Any = OutputRule.of(signature_of(ort.InferenceSession(str(path))), path)
    assert rule.regression or rule.label_output is not None
    return bool(rule.regression)


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
    kind = bool if label_type == TensorProto.BOOL else int
    assert [type(c) for c in report.classes] == [kind, kind]
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
    # A column no rule reads as a probability is a regressor unless the task says otherwise.
    bare = binary_model("score", head="Add", labels=())
    assert evaluate(bare, None, table(), label="y").task == "regression"
    forced = evaluate(bare, None, table(), label="y", task="classification")
    assert forced.task == "classification"
    check_binary(forced.metrics)


def test_a_positive_class_needs_a_binary_classifier() -> None:
    for model, task in (
        (sigmoid_model(None), "regression"),
        (binary_model("score", head="Add", labels=()), None),
    ):
        with pytest.raises(InvalidArgument) as err:
            evaluate(model, None, table(), label="y", positive_class=1, task=task)
        assert err.value.reason == "POSITIVE_CLASS_NEEDS_BINARY"


def test_a_regressor_with_an_integer_output_is_a_regressor(tmp_path: Path) -> None:
    model = regressor_with_count()
    report = evaluate(model, None, regression_table(), label="y")
    assert report.task == "regression" and report.classes == []
    assert report.metrics["mae"] == pytest.approx(skm.mean_absolute_error(RY, RPRED), rel=1e-4)
    assert report.metrics["rmse"] == pytest.approx(
        np.sqrt(skm.mean_squared_error(RY, RPRED)), rel=1e-4
    )
    assert report.metrics["r2"] == pytest.approx(skm.r2_score(RY, RPRED), rel=1e-4)
    (warning,) = [w for w in report.warnings if w.code == "REGRESSION_ASSUMED"]
    assert warning.scope == "model" and "'count'" in warning.message
    assert "set the task to 'classification'" in warning.message
    assert sidecar_reads_a_regression(model, tmp_path)
    # The task still decides: as a classifier its predictions are logits, and its count no
    # class labels.
    with pytest.raises(InvalidArgument) as err:
        evaluate(model, None, regression_table(), label="y", task="classification")
    assert err.value.reason == "CLASSES_UNKNOWN"
    assert "set the task to 'regression'" in err.value.message


def test_a_probability_op_or_name_makes_a_classifier_with_or_without_labels(
    tmp_path: Path,
) -> None:
    # Sigmoid makes the column a probability whatever the outputs are named; "prob" in the
    # name does when the op does not. The sidecar reads each model the same way.
    for model in (
        binary_model("out", labels=(("cls", TensorProto.INT64),)),
        binary_model("out", labels=()),
        binary_model("Out_Prob", head="Add", labels=()),
    ):
        report = evaluate(model, None, table(), label="y")
        assert report.task == "classification" and report.positive_class == 1
        check_binary(report.metrics)
        assert not [w for w in report.warnings if w.scope == "model"]
        assert not sidecar_reads_a_regression(model, tmp_path)


def test_a_label_named_output_makes_a_classifier_and_another_integer_output_does_not(
    tmp_path: Path,
) -> None:
    for name in ("label", "predicted_LABEL"):
        # The score comes from Add (no probability op, no "prob" in its name).
        model = binary_model(
            "out", head="Add", labels=(("count", TensorProto.INT64), (name, TensorProto.INT32))
        )
        report = evaluate(model, None, table(), label="y")
        assert report.task == "classification" and report.classes == [0, 1]
        check_binary(report.metrics)
        assert not [w for w in report.warnings if w.scope == "model"]
        assert not sidecar_reads_a_regression(model, tmp_path)
    unlabelled = binary_model("out", head="Add", labels=(("count", TensorProto.INT64),))
    report = evaluate(unlabelled, None, table(), label="y")
    assert report.task == "regression"
    assert [w.code for w in report.warnings if w.scope == "model"] == ["REGRESSION_ASSUMED"]
    assert sidecar_reads_a_regression(unlabelled, tmp_path)
    forced = evaluate(unlabelled, None, table(), label="y", task="classification")
    assert forced.task == "classification"
    check_binary(forced.metrics)


def test_boolean_label_outputs_have_the_classes_false_and_true() -> None:
    model = sigmoid_model(TensorProto.BOOL)
    features = {n: X[:, i].astype(np.float64) for i, n in enumerate(NAMES)}
    spellings = {
        "booleans": Y.astype(bool).tolist(),
        "integers": Y.tolist(),
        "text": [
            ("True" if v else "false") if i % 2 else ("TRUE" if v else "False")
            for i, v in enumerate(Y)
        ],
    }
    for kind, labels in spellings.items():
        data = pa.table({**features, "y": labels})
        report = evaluate(model, None, data, label="y")
        assert report.classes == [False, True], kind
        assert all(isinstance(c, bool) for c in report.classes)
        assert report.positive_class is True
        check_binary(report.metrics)
        for given in ("true", "True", "TRUE", "1", True, 1):
            chosen = evaluate(model, None, data, label="y", positive_class=given)
            assert chosen.positive_class is True, given
            check_binary(chosen.metrics)
        for given in ("false", "False", "0", False, 0):
            chosen = evaluate(model, None, data, label="y", positive_class=given)
            assert chosen.positive_class is False, given
            check_binary(chosen.metrics, positive=0)
    assert evaluate(model, None, table(), label="y").to_dict()["positive_class"] is True
    with pytest.raises(InvalidArgument) as err:
        evaluate(model, None, table(), label="y", positive_class="yes")
    assert err.value.reason == "UNKNOWN_POSITIVE_CLASS"
    for bad in (["yes", "no"] * (len(Y) // 2) + ["yes"] * (len(Y) % 2), (Y * 2).tolist()):
        with pytest.raises(InvalidArgument) as err:
            evaluate(model, None, pa.table({**features, "y": bad}), label="y")
        assert err.value.reason == "UNKNOWN_LABELS"


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
