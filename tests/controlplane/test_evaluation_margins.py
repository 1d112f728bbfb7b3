"""Margin classifiers and undefined metrics: a binary model whose one score column is a
decision function (skl2onnx's LinearSVC, RidgeClassifier; torch logits) is evaluated through a
sigmoid and matches scikit-learn on its decision scores; weighted averages equal
scikit-learn's to the last bit; and undefined metrics are absent from the gate's rule
variables, so ``has()`` guards them, through a real control plane."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from google.protobuf import json_format
from onnx import TensorProto, helper, numpy_helper
from scipy.special import expit, softmax
from skl2onnx import to_onnx
from sklearn import metrics as skm
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression, RidgeClassifier, SGDClassifier
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

from controlplane.evaluation import classification_metrics, evaluate
from controlplane.evaluation._predict import probabilities
from modelplane.errors import InvalidArgument
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, TrainedModel
from tests.controlplane.test_governance_evaluation import register

DATA = load_breast_cancer()
X = StandardScaler().fit_transform(DATA.data).astype(np.float32)
Y = DATA.target.astype(np.int64)
TRAIN, TEST = slice(0, 300), slice(300, None)
NAMES = [f"f{i}" for i in range(X.shape[1])]


def holdout() -> pa.Table:
    return pa.table({**{n: X[TEST, i] for i, n in enumerate(NAMES)}, "y": Y[TEST]})


def margin_model(kind: str) -> tuple[Any, bytes]:
    """A binary classifier without probabilities, fitted on the first 300 rows and exported
    with skl2onnx: LinearSVC and RidgeClassifier give one decision-score column ``[N, 1]``, a
    hinge-loss SGDClassifier two columns ``(-d, d)``."""
    if kind == "linear_svc":
        model: Any = LinearSVC(dual=False)
    elif kind == "ridge":
        model = RidgeClassifier()
    else:
        model = SGDClassifier(loss="hinge", random_state=0)
    model.fit(X[TRAIN], Y[TRAIN])
    options = {id(model): {"zipmap": False}} if kind == "sgd_hinge" else None
    onnx_model = to_onnx(model, X[:1], options=options, target_opset=17)
    return model, onnx_model.SerializeToString()


@pytest.mark.parametrize("task", [None, "classification"])
@pytest.mark.parametrize("kind", ["linear_svc", "ridge", "sgd_hinge"])
def test_binary_margin_classifiers_match_scikit_learn_on_decision_scores(
    kind: str, task: str | None
) -> None:
    model, onnx_bytes = margin_model(kind)
    report = evaluate(onnx_bytes, None, holdout(), label="y", feature_names=NAMES, task=task)
    y, decision = Y[TEST], model.decision_function(X[TEST])
    pred = model.predict(X[TEST])
    assert report.task == "classification" and report.classes == [0, 1]
    assert report.positive_class == 1
    m = report.metrics
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, decision), abs=1e-12)
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(y, decision), abs=1e-12)
    assert m["accuracy"] == skm.accuracy_score(y, pred)
    assert m["f1"] == skm.f1_score(y, pred)
    (warning,) = [w for w in report.warnings if w.scope == "model"]
    assert warning.code == "SCORES_NOT_PROBABILITIES"
    assert "'probabilities'" in warning.message
    if kind == "sgd_hinge":
        assert "softmax" in warning.message
    else:
        # One column: the sigmoid of the decision score is the positive class's probability.
        assert "sigmoid" in warning.message
        p = expit(decision)
        assert m["log_loss"] == pytest.approx(skm.log_loss(y, p), rel=1e-5)
        assert m["brier"] == pytest.approx(skm.brier_score_loss(y, p), rel=1e-5)


def logit_model() -> bytes:
    """``logit [-1, 1] = X W + b`` of a logistic regression, with no Sigmoid node, no name
    marking a probability and no label output, as a torch model trained with
    ``BCEWithLogitsLoss`` exports it."""
    clf = LogisticRegression(max_iter=3000).fit(X[TRAIN], Y[TRAIN])
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["X", "W"], ["z"]),
            helper.make_node("Add", ["z", "b"], ["logit"]),
        ],
        "logits",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, X.shape[1]])],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, [None, 1])],
        [
            numpy_helper.from_array(clf.coef_.T.astype(np.float32), "W"),
            numpy_helper.from_array(clf.intercept_.astype(np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.mark.parametrize("kind", ["ridge", "linear_svc", "ridge_multiclass"])
def test_margins_that_all_fall_inside_0_1_are_still_margins(kind: str) -> None:
    """A linear classifier's decision scores can all lie in [0, 1] (strongly regularised on
    unscaled features, say: here the fitted coefficients are scaled and shifted to make it
    so, which for two classes means class 1 on every row); the graph shows them to be
    margins, so they are cut at 0 and ranked as they are, not read as probabilities (which
    cut them at 0.5 and, with every label output saying class 1, reversed the ranking)."""
    x, y = X[TEST], Y[TEST]
    if kind == "ridge_multiclass":
        y3 = np.where(X[:, 0] > 1.0, 2, Y)  # three classes: the target, one split off it
        model: Any = RidgeClassifier().fit(X[TRAIN], y3[TRAIN])
        y = y3[TEST]
    else:
        model = (RidgeClassifier() if kind == "ridge" else LinearSVC(dual=False)).fit(
            X[TRAIN], Y[TRAIN]
        )
    d = model.decision_function(X)
    scale = 0.9 / (d.max() - d.min())
    model.coef_ = model.coef_ * scale
    model.intercept_ = model.intercept_ * scale + (0.05 - d.min() * scale)
    decision = model.decision_function(x)
    assert decision.min() >= 0.0 and decision.max() <= 1.0  # the case under test
    onnx_bytes = to_onnx(model, X[:1], target_opset=17).SerializeToString()
    table = pa.table({**{n: x[:, i] for i, n in enumerate(NAMES)}, "y": y})
    report = evaluate(onnx_bytes, None, table, label="y", feature_names=NAMES)
    pred = model.predict(x)
    m = report.metrics
    assert m["accuracy"] == skm.accuracy_score(y, pred)
    if kind == "ridge_multiclass":
        assert len(set(pred)) == 3
        assert m["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"), abs=1e-12)
        ovr = skm.roc_auc_score(y, softmax(decision, axis=1), multi_class="ovr")
        assert m["roc_auc"] == pytest.approx(ovr, abs=1e-9)
    else:
        assert set(pred) == {1}
        assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, decision), abs=1e-12)
        assert m["recall"] == skm.recall_score(y, pred)
    codes = {w.code for w in report.warnings if w.scope == "model"}
    assert "SCORES_NOT_PROBABILITIES" in codes
    assert not codes & {"SCORE_COLUMNS_REVERSED", "LABEL_OUTPUT_DISAGREES"}


def test_a_binary_svc_whose_score_columns_are_reversed_is_read_the_right_way_round() -> None:
    # skl2onnx exports a binary SVC without probabilities with its scores as (d, -d), the
    # reverse of its class table [0, 1]; read as given, roc_auc was 7.5e-5 and accuracy 0.02.
    model = SVC().fit(X[TRAIN], Y[TRAIN])
    onnx_bytes = to_onnx(
        model, X[:1], options={id(model): {"zipmap": False}}, target_opset=17
    ).SerializeToString()
    report = evaluate(onnx_bytes, None, holdout(), label="y", feature_names=NAMES)
    y, pred = Y[TEST], model.predict(X[TEST])
    assert report.classes == [0, 1] and report.positive_class == 1
    m = report.metrics
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, model.decision_function(X[TEST])))
    assert m["accuracy"] == skm.accuracy_score(y, pred)
    assert m["precision"] == skm.precision_score(y, pred)
    assert m["recall"] == skm.recall_score(y, pred)
    codes = {w.code for w in report.warnings}
    assert "SCORE_COLUMNS_REVERSED" in codes and "LABEL_OUTPUT_DISAGREES" not in codes


def test_a_logit_column_is_a_classifier_when_the_task_says_so() -> None:
    onnx_bytes = logit_model()
    x = np.column_stack([holdout().column(n).to_numpy() for n in NAMES])
    clf = LogisticRegression(max_iter=3000).fit(X[TRAIN], Y[TRAIN])
    assert evaluate(onnx_bytes, None, holdout(), label="y").task == "regression"
    report = evaluate(onnx_bytes, None, holdout(), label="y", task="classification")
    y, p = Y[TEST], clf.predict_proba(x)[:, 1]
    assert report.task == "classification" and report.classes == [0, 1]
    assert report.metrics["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-9)
    assert report.metrics["accuracy"] == skm.accuracy_score(y, clf.predict(x))
    assert report.metrics["log_loss"] == pytest.approx(skm.log_loss(y, p), rel=1e-5)
    assert [w.code for w in report.warnings if w.scope == "model"] == ["SCORES_NOT_PROBABILITIES"]


def test_a_column_only_its_name_calls_probabilities_is_refused_when_out_of_range() -> None:
    # A model with one output named "probability" but holding unbounded values, no label
    # output and no task given: it may be a regressor as well as a classifier's logits.
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])
    out = helper.make_tensor_value_info("probability", TensorProto.FLOAT, [None, 1])
    w = numpy_helper.from_array(np.array([[3.0], [-2.0]], np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["probability"])], "g", [x], [out], [w]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx_bytes = model.SerializeToString()
    rng = np.random.default_rng(0)
    data = rng.normal(size=(200, 2)).astype(np.float32)
    table = pa.table({"a": data[:, 0], "b": data[:, 1], "y": (data[:, 0] > 0).astype(np.int64)})
    with pytest.raises(InvalidArgument) as refused:
        evaluate(onnx_bytes, None, table, label="y", feature_names=["a", "b"])
    assert refused.value.reason == "UNUSABLE_MODEL_OUTPUT"
    assert "'classification'" in str(refused.value) and "'regression'" in str(refused.value)
    report = evaluate(
        onnx_bytes, None, table, label="y", feature_names=["a", "b"], task="classification"
    )
    assert report.metrics["roc_auc"] == pytest.approx(
        skm.roc_auc_score(table.column("y").to_numpy(), data @ np.array([3.0, -2.0]))
    )


def test_one_column_reading() -> None:
    warnings: list = []
    # Within float rounding of [0, 1]: a probability, clipped.
    proba = probabilities(np.array([[0.25], [1.0 + 1e-7], [-1e-7]]), "p", warnings)
    assert proba == pytest.approx(np.array([[0.75, 0.25], [0.0, 1.0], [1.0, 0.0]]))
    assert warnings == []
    # Outside it: a logit, through a sigmoid that neither overflows nor loses small values.
    scores = np.array([-800.0, -3.0, 0.0, 2.0, 800.0])
    proba = probabilities(scores, "score", warnings)
    assert proba[:, 1] == pytest.approx(expit(scores), rel=1e-15, abs=0.0)
    assert proba[:, 0] == pytest.approx(expit(-scores), rel=1e-15, abs=0.0)
    assert np.argmax(proba, axis=1).tolist() == [0, 0, 0, 1, 1]
    assert [w.code for w in warnings] == ["SCORES_NOT_PROBABILITIES"]
    assert "'score'" in warnings[0].message and "sigmoid" in warnings[0].message
    # Where nothing but its name made the model a classifier, the column may be a prediction.
    with pytest.raises(InvalidArgument) as err:
        probabilities(scores, "problem_count", [], may_be_regression=True)
    assert err.value.reason == "UNUSABLE_MODEL_OUTPUT"
    assert "'classification'" in err.value.message and "'regression'" in err.value.message


def test_weighted_recall_is_the_accuracy_to_the_last_bit() -> None:
    # A confusion matrix (rows: true class, columns: predicted) where summing the per-class
    # recalls times their support lands one ulp below 0.9.
    cm = np.array([[58, 9, 0, 0], [0, 64, 4, 0], [0, 0, 69, 9], [6, 0, 0, 61]])
    cells = [(t, p) for t in range(4) for p in range(4) for _ in range(cm[t, p])]
    y, pred = (np.array(c) for c in zip(*cells, strict=True))
    proba = np.eye(4)[pred] * 0.9 + 0.025
    m, _ = classification_metrics(y, proba)
    assert m["accuracy"] == 0.9 == skm.accuracy_score(y, pred)
    assert m["recall"] == m["accuracy"] == skm.recall_score(y, pred, average="weighted")
    assert m["precision"] == skm.precision_score(y, pred, average="weighted")
    assert m["f1"] == skm.f1_score(y, pred, average="weighted")


def test_weighted_averages_equal_scikit_learn_bit_for_bit() -> None:
    rng = np.random.default_rng(7)
    for trial in range(300):
        k, n = int(rng.integers(3, 12)), int(rng.integers(5, 400))
        y = rng.integers(0, k, n)
        pred = np.where(rng.random(n) < rng.random(), y, rng.integers(0, k, n))
        if trial % 3 == 0:
            pred[pred == 1] = 0  # a class never predicted
        if trial % 4 == 0:
            y[y == 2] = 0  # a class absent from the labels
        m, _ = classification_metrics(y, np.eye(k)[pred] * 0.9 + 0.1 / k)
        p, _, f, _ = skm.precision_recall_fscore_support(
            y, pred, average="weighted", zero_division=0
        )
        assert (m["precision"], m["f1"]) == (p, f), (trial, k, n)
        assert m["recall"] == m["accuracy"], (trial, k, n)


def single_class_holdout(trained: TrainedModel, folder: Path) -> Path:
    """The holdout's positive rows only (so roc_auc and every group's FPR are undefined), with
    a protected column ``g``."""
    table = pacsv.read_csv(trained.holdout)
    table = table.filter(pc.equal(table.column("target"), 1))
    groups = np.where(np.arange(table.num_rows) % 2 == 0, "a", "b")
    path = folder / "positives.parquet"
    pq.write_table(table.append_column("g", pa.array(groups)), path)
    return path


def test_has_guards_undefined_metrics_and_deltas_in_a_gate(
    controlplane: RunningControlPlane, trained_model: TrainedModel, tmp_path: Path
) -> None:
    model_id = unique()
    data = single_class_holdout(trained_model, tmp_path)
    guarded = [
        "!has(metrics.roc_auc) || metrics.roc_auc >= 0.9",
        '!has(fairness["g"].groups["a"].fpr) || fairness["g"].groups["a"].fpr <= 0.1',
        "has(metrics.accuracy) && metrics.accuracy >= 0.5",
        "!has(delta.roc_auc) || delta.roc_auc >= -0.005",
        "delta.accuracy >= -0.005",
    ]
    with controlplane.client("alice") as c:
        first = register(c, trained_model, model_id)
        c.operation_result(c.evaluate(model_id, first, data, label="target", protected=["g"]))
        c.set_alias(model_id, "staging", first)
        version = register(c, trained_model, model_id)
        op = c.evaluate(model_id, version, data, label="target", protected=["g"])
        ev = c.operation_result(op, timeout=120)
        assert "roc_auc" not in ev.metrics and ev.metrics["accuracy"] > 0.5
        warnings = json_format.MessageToDict(ev.report)["warnings"]
        assert ("SINGLE_CLASS", "roc_auc") in [(w["code"], w.get("metric")) for w in warnings]
        c.create_policy(unique("guarded"), target="staging", rules=guarded)
        c.create_policy(unique("strict"), target="strict", rules=["metrics.roc_auc >= 0.9"])
        passed = c.evaluate_gate(model_id, version, "staging")
        failed = c.evaluate_gate(model_id, version, "strict")
    assert passed.passed and [r.outcome for r in passed.results] == ["passed"] * 5
    assert passed.compared_version == f"models/{model_id}/versions/{first}"
    assert [list(r.missing) for r in passed.results] == [
        ["metrics.roc_auc"],
        ["fairness.g.groups.a.fpr"],
        [],
        ["delta.roc_auc"],
        [],
    ]
    assert not failed.passed
    (result,) = failed.results
    assert result.outcome == "error" and list(result.missing) == ["metrics.roc_auc"]
    assert "no such key 'roc_auc'" in result.message
    assert f"metrics.roc_auc is undefined in {ev.name}" in result.message
