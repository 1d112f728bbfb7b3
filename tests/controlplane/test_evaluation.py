"""End-to-end evaluations of skl2onnx models on scikit-learn's bundled datasets, checked
against scikit-learn and fairlearn on the probabilities of a direct ONNX Runtime run."""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from fairlearn import metrics as flm
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import to_onnx
from sklearn import metrics as skm
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris, load_wine
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.multiclass import OneVsRestClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from controlplane.artifacts import inspect_onnx
from controlplane.evaluation import (
    CLASSIFICATION_METRICS,
    REGRESSION_METRICS,
    compare,
    evaluate,
    expected_calibration_error,
)
from controlplane.evaluation._predict import probabilities
from modelplane.errors import InvalidArgument
from modelplane.profiles import NumericFeature, build_profile
from modelplane.testing.onnx_models import mlp


def _onnx(model, x: np.ndarray) -> bytes:
    return to_onnx(model, x[:1], options={"zipmap": False}, target_opset=17).SerializeToString()


def _ort(onnx_bytes: bytes, x: np.ndarray) -> list[np.ndarray]:
    """The outputs of a direct ONNX Runtime run."""
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def _proba(onnx_bytes: bytes, x: np.ndarray) -> np.ndarray:
    """A skl2onnx classifier's probabilities from a direct run, as float64 rows summing to 1."""
    proba = _ort(onnx_bytes, x)[1].astype(np.float64)
    return proba / proba.sum(axis=1, keepdims=True)


@dataclass
class Binary:
    names: list[str]
    lr: bytes
    tree: bytes
    train: pa.Table
    test: pa.Table
    x_test: np.ndarray


@pytest.fixture(scope="module")
def binary() -> Binary:
    """Breast cancer with string labels; the test split made imbalanced (few malignant rows)
    and given a protected attribute derived from the median of 'mean radius'."""
    data = load_breast_cancer()
    names = [n.replace(" ", "_") for n in data.feature_names]
    x = data.data.astype(np.float32)
    y = np.array(["malignant", "benign"])[data.target]
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.4, random_state=0, stratify=y)
    rng = np.random.default_rng(0)
    malignant = np.flatnonzero(y_te == "malignant")
    keep = np.sort(np.r_[np.flatnonzero(y_te == "benign"), rng.choice(malignant, 16, False)])
    x_te, y_te = x_te[keep], y_te[keep]
    lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x_tr, y_tr)
    tree = DecisionTreeClassifier(max_depth=3, random_state=0).fit(x_tr, y_tr)
    median = float(np.median(x_tr[:, 0]))

    def table(xs: np.ndarray, ys: np.ndarray) -> pa.Table:
        cols: dict[str, object] = {n: xs[:, i].astype(np.float64) for i, n in enumerate(names)}
        cols["diagnosis"] = ys
        cols["size_group"] = np.where(xs[:, 0] > median, "large", "small")
        cols["site"] = np.array(["north", "south", "east"])[np.arange(len(ys)) % 3]
        return pa.table(cols)

    return Binary(
        names, _onnx(lr, x_tr), _onnx(tree, x_tr), table(x_tr, y_tr), table(x_te, y_te), x_te
    )


def _check_binary(report, y_true: np.ndarray, proba: np.ndarray, positive: str) -> None:
    y = (y_true == positive).astype(int)
    p = proba[:, 1]
    pred = (np.argmax(proba, axis=1) == 1).astype(int)
    m = report.metrics
    assert set(m) == set(CLASSIFICATION_METRICS)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred, zero_division=0))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["precision_macro"] == pytest.approx(
        skm.precision_score(y, pred, average="macro", zero_division=0)
    )
    assert m["recall_macro"] == pytest.approx(skm.recall_score(y, pred, average="macro"))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(y, p))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, proba), rel=1e-6)
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y, p), rel=1e-6)


def test_binary_string_labels_imbalanced(binary: Binary) -> None:
    seen: list[float] = []
    report = evaluate(
        binary.lr,
        None,
        binary.test,
        label="diagnosis",
        feature_names=binary.names,
        progress=seen.append,
        chunk_rows=64,
    )
    proba = _proba(binary.lr, binary.x_test)
    y = np.asarray(binary.test.column("diagnosis"))
    assert np.mean(y == "malignant") < 0.15
    assert report.task == "classification"
    assert report.classes == ["benign", "malignant"]
    assert report.positive_class == "malignant"
    assert report.feature_names == binary.names
    _check_binary(report, y, proba, "malignant")
    assert seen[0] == 0.0 and seen[-1] == 1.0
    assert seen == sorted(seen) and len(seen) > 4
    doc = report.to_dict()
    assert json.loads(json.dumps(doc, allow_nan=False)) == doc


def test_ties_in_scores_with_a_decision_tree(binary: Binary) -> None:
    report = evaluate(binary.tree, None, binary.test, label="diagnosis", feature_names=binary.names)
    proba = _proba(binary.tree, binary.x_test)
    assert len(np.unique(proba[:, 1])) <= 8 < len(proba)
    _check_binary(report, np.asarray(binary.test.column("diagnosis")), proba, "malignant")


def test_positive_class_can_be_chosen(binary: Binary) -> None:
    report = evaluate(
        binary.lr,
        None,
        binary.test,
        label="diagnosis",
        feature_names=binary.names,
        positive_class="benign",
    )
    proba = _proba(binary.lr, binary.x_test)
    y = np.asarray(binary.test.column("diagnosis")) == "benign"
    assert report.positive_class == "benign"
    assert report.metrics["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba[:, 0]))
    assert report.metrics["recall"] == pytest.approx(
        skm.recall_score(y, np.argmax(proba, axis=1) == 0)
    )


def test_slices_match_metrics_on_each_subset(binary: Binary) -> None:
    report = evaluate(
        binary.lr,
        None,
        binary.test,
        label="diagnosis",
        feature_names=binary.names,
        slices=["site", "size_group"],
    )
    proba = _proba(binary.lr, binary.x_test)
    y = np.asarray(binary.test.column("diagnosis"))
    site = np.asarray(binary.test.column("site"))
    assert [s.value for s in report.slices["site"]] == ["east", "north", "south"]
    for s in report.slices["site"]:
        rows = site == s.value
        assert s.count == int(rows.sum())
        expected = skm.roc_auc_score(y[rows] == "malignant", proba[rows, 1])
        assert s.metrics["roc_auc"] == pytest.approx(expected)
        assert s.metrics["accuracy"] == pytest.approx(
            np.mean(np.where(proba[rows, 1] > proba[rows, 0], "malignant", "benign") == y[rows])
        )
    doc = report.to_dict()
    assert doc["slices"]["size_group"]["small"]["count"] == int(
        np.sum(np.asarray(binary.test.column("size_group")) == "small")
    )


def test_too_many_slice_values_are_pooled(binary: Binary) -> None:
    table = binary.test.append_column("row_id", pa.array(np.arange(binary.test.num_rows) % 7))
    report = evaluate(
        binary.lr,
        None,
        table,
        label="diagnosis",
        feature_names=binary.names,
        slices=["row_id"],
        max_slices=4,
    )
    values = [s.value for s in report.slices["row_id"]]
    assert len(values) == 4 and values[-1] == "<other>"
    assert sum(s.count for s in report.slices["row_id"]) == table.num_rows
    assert any(w.code == "SLICES_POOLED" for w in report.warnings)


def test_fairness_matches_fairlearn_on_a_derived_attribute(binary: Binary) -> None:
    report = evaluate(
        binary.lr,
        None,
        binary.test,
        label="diagnosis",
        feature_names=binary.names,
        protected=["size_group"],
    )
    proba = _proba(binary.lr, binary.x_test)
    y = (np.asarray(binary.test.column("diagnosis")) == "malignant").astype(int)
    pred = (proba[:, 1] > proba[:, 0]).astype(int)
    group = np.asarray(binary.test.column("size_group"))
    fair = report.fairness["size_group"]
    assert all(g.tpr is not None and g.fpr is not None for g in fair.groups)
    kw = {"sensitive_features": group}
    assert fair.demographic_parity_difference == pytest.approx(
        flm.demographic_parity_difference(y, pred, **kw)
    )
    assert fair.demographic_parity_ratio == pytest.approx(
        flm.demographic_parity_ratio(y, pred, **kw)
    )
    assert fair.equal_opportunity_difference == pytest.approx(
        flm.equal_opportunity_difference(y, pred, **kw)
    )
    assert fair.equalized_odds_difference == pytest.approx(
        flm.equalized_odds_difference(y, pred, **kw)
    )
    by_group = flm.MetricFrame(
        metrics=flm.selection_rate, y_true=y, y_pred=pred, sensitive_features=group
    ).by_group
    doc = report.to_dict()["fairness"]["size_group"]
    for name in ("large", "small"):
        assert doc["groups"][name]["selection_rate"] == pytest.approx(by_group[name])
    assert doc["demographic_parity_ratio"] == pytest.approx(fair.demographic_parity_ratio)


def test_zeros_of_either_sign_and_dictionary_nans_form_one_group_each(binary: Binary) -> None:
    """-0.0 and 0.0 are one group, and NaN in a dictionary-encoded float column is missing like
    null, as fairlearn (which groups by numpy equality) and the slices agree."""
    n = binary.test.num_rows
    rng = np.random.default_rng(5)
    zero = rng.choice([-0.0, 0.0, 1.0], n)
    level = rng.choice([1.5, 2.5, np.nan], n).tolist()
    level = [None if i % 11 == 0 else v for i, v in enumerate(level)]
    table = binary.test.append_column("zero", pa.array(zero)).append_column(
        "level", pa.array(level, pa.float64()).dictionary_encode()
    )
    columns = ["zero", "level"]
    report = evaluate(
        binary.lr,
        None,
        table,
        label="diagnosis",
        feature_names=binary.names,
        slices=columns,
        protected=columns,
    )
    assert [s.value for s in report.slices["zero"]] == ["0", "1"]
    assert [s.value for s in report.slices["level"]] == ["1.5", "2.5", "<null>"]
    proba = _proba(binary.lr, binary.x_test)
    y = (np.asarray(binary.test.column("diagnosis")) == "malignant").astype(int)
    pred = (proba[:, 1] > proba[:, 0]).astype(int)
    groups = {
        "zero": zero,
        "level": np.array(["<null>" if v is None or np.isnan(v) else str(v) for v in level]),
    }
    for name, group in groups.items():
        fair = report.fairness[name]
        assert len(fair.groups) == len(np.unique(group))
        assert [s.count for s in report.slices[name]] == np.unique(group, return_counts=True)[
            1
        ].tolist()
        kw = {"sensitive_features": group}
        assert fair.demographic_parity_difference == pytest.approx(
            flm.demographic_parity_difference(y, pred, **kw)
        )
        assert fair.equalized_odds_difference == pytest.approx(
            flm.equalized_odds_difference(y, pred, **kw)
        )


def test_validation_against_the_baseline_profile(binary: Binary) -> None:
    train = binary.train.append_column(
        "region", pa.array(np.array(["n", "s"])[np.arange(binary.train.num_rows) % 2])
    )
    profile = build_profile(train, [*binary.names, "region"])
    clean = binary.test.append_column(
        "region", pa.array(np.array(["n", "s"])[np.arange(binary.test.num_rows) % 2])
    )
    ok = evaluate(
        binary.lr,
        None,
        clean,
        label="diagnosis",
        feature_names=binary.names,
        slices=["site"],
        protected=["size_group"],
        baseline=profile,
    )
    assert ok.validation is not None
    assert ok.validation.passed, ok.validation.failures
    assert ok.validation.extra_columns == []
    radius = ok.validation.features["mean_radius"]
    ref = profile.feature("mean_radius")
    assert isinstance(ref, NumericFeature)
    low, high = ref.min, ref.max
    values = np.asarray(clean.column("mean_radius"))
    assert radius.out_of_range_share == pytest.approx(np.mean((values < low) | (values > high)))

    n = binary.test.num_rows
    shifted = pc.add(binary.test.column("mean_radius"), 100.0)
    holes = np.asarray(binary.test.column("mean_texture")).copy()
    holes[: n // 5] = np.nan
    drifted = (
        binary.test.set_column(
            binary.test.schema.get_field_index("mean_radius"), "mean_radius", shifted
        )
        .set_column(
            binary.test.schema.get_field_index("mean_texture"), "mean_texture", pa.array(holes)
        )
        .append_column("extra", pa.array(np.zeros(n)))
    )
    regions = np.array(["n", "s", "west"])[np.arange(n) % 3]
    bad = evaluate(
        binary.tree,
        None,
        drifted.append_column("region", pa.array(regions)),
        label="diagnosis",
        feature_names=binary.names,
        slices=["site"],
        protected=["size_group"],
        baseline=profile,
    )
    v = bad.validation
    assert v is not None and not v.passed
    assert v.features["mean_radius"].out_of_range_share == pytest.approx(1.0)
    assert v.features["mean_texture"].missing_share == pytest.approx((n // 5) / n)
    assert v.features["region"].unseen_categories == ["west"]
    assert v.features["region"].unseen_category_share == pytest.approx(np.mean(regions == "west"))
    assert v.extra_columns == ["extra"]
    assert len(v.failures) == 3

    retyped = evaluate(
        binary.lr,
        None,
        binary.test.append_column("region", pa.array(np.ones(n))),
        label="diagnosis",
        feature_names=binary.names,
        slices=["site"],
        protected=["size_group"],
        baseline=profile,
    )
    assert retyped.validation is not None
    assert retyped.validation.dtype_changes == [
        {"feature": "region", "expected": "categorical", "actual": "numeric"}
    ]
    missing = evaluate(
        binary.lr,
        None,
        binary.test,
        label="diagnosis",
        feature_names=binary.names,
        slices=["site"],
        protected=["size_group"],
        baseline=profile,
    )
    assert missing.validation is not None
    assert missing.validation.missing_columns == ["region"] and not missing.validation.passed
    doc = missing.to_dict()["validation"]
    assert doc["passed"] is False and doc["thresholds"]["max_out_of_range_share"] == 0.05


def test_compare_gives_deltas_on_the_same_dataset(binary: Binary) -> None:
    sink = io.BytesIO()
    pq.write_table(binary.test, sink)
    data = sink.getvalue()
    current = evaluate(binary.lr, None, data, label="diagnosis", feature_names=binary.names)
    reference = evaluate(binary.tree, None, data, label="diagnosis", feature_names=binary.names)
    assert current.dataset_sha256 is not None
    assert current.dataset_sha256 == reference.dataset_sha256
    delta = compare(current, reference)
    for name in CLASSIFICATION_METRICS:
        now, before = current.metrics[name], reference.metrics[name]
        assert now is not None and before is not None
        assert delta[name] == pytest.approx(now - before)
    stored = json.loads(json.dumps(reference.to_dict()))
    assert compare(current.to_dict(), stored) == delta
    other = evaluate(
        binary.lr, None, binary.test.slice(0, 50), label="diagnosis", feature_names=binary.names
    )
    with pytest.raises(InvalidArgument) as err:
        compare(current, other)
    assert err.value.reason == "DATASET_MISMATCH"


def test_signature_from_the_registry_is_accepted(binary: Binary) -> None:
    _, signature = inspect_onnx(binary.lr, "0" * 64)
    report = evaluate(
        binary.lr, signature, binary.test, label="diagnosis", feature_names=binary.names
    )
    assert report.metrics["accuracy"] is not None


@dataclass
class Multiclass:
    names: list[str]
    x: np.ndarray
    y: np.ndarray
    table: pa.Table


@pytest.fixture(scope="module")
def wine() -> Multiclass:
    data = load_wine()
    names = [n.replace("/", "_") for n in data.feature_names]
    x = data.data.astype(np.float32)
    y = np.array(["barolo", "grignolino", "barbera"])[data.target]
    cols: dict[str, object] = {n: x[:, i] for i, n in enumerate(names)}
    cols["cultivar"] = y
    return Multiclass(names, x, y, pa.table(cols))


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_multiclass_string_labels_from_csv(wine: Multiclass, kind: str) -> None:
    if kind == "linear":
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    else:
        model = make_pipeline(StandardScaler(), MLPClassifier((8,), max_iter=300, random_state=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(wine.x, wine.y)
    onnx_bytes = _onnx(model, wine.x)
    sink = io.BytesIO()
    pacsv.write_csv(wine.table, sink)
    report = evaluate(onnx_bytes, None, sink.getvalue(), label="cultivar")
    proba = _proba(onnx_bytes, wine.x)
    classes = list(model.classes_)
    assert report.classes == classes
    y = np.array([classes.index(v) for v in wine.y])
    pred = np.argmax(proba, axis=1)
    m = report.metrics
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, average="weighted"))
    assert m["recall_macro"] == pytest.approx(skm.recall_score(y, pred, average="macro"))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr"), rel=1e-6)
    onehot = np.eye(3)[y]
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(onehot, proba), rel=1e-6)
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, proba), rel=1e-5)
    assert m["brier"] == pytest.approx(np.mean(np.sum((proba - onehot) ** 2, axis=1)), rel=1e-5)
    assert report.positive_class is None


def test_logits_are_softmaxed_with_a_warning(wine: Multiclass) -> None:
    model = mlp(features=4, hidden=(8,), outputs=3, softmax=False).SerializeToString()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    (logits,) = _ort(model, x)
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    y = rng.integers(0, 3, size=200)
    table = pa.table({**{f"x{i}": x[:, i] for i in range(4)}, "y": y})
    report = evaluate(model, None, table, label="y")
    assert report.classes == [0, 1, 2]
    assert any(w.code == "SCORES_NOT_PROBABILITIES" for w in report.warnings)
    assert report.metrics["log_loss"] == pytest.approx(skm.log_loss(y, expected), rel=1e-5)


def test_one_vs_rest_sigmoid_heads_are_renormalised_like_sklearn() -> None:
    """Per-class sigmoids whose rows do not sum to 1 are probabilities to renormalise, as
    OneVsRestClassifier.predict_proba does, not logits to softmax."""
    data = load_iris()
    x = data.data.astype(np.float32)
    ovr = OneVsRestClassifier(LogisticRegression(max_iter=3000)).fit(x, data.target)
    weights = np.column_stack([e.coef_[0] for e in ovr.estimators_]).astype(np.float32)
    bias = np.array([e.intercept_[0] for e in ovr.estimators_], np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["z0"]),
            helper.make_node("Add", ["z0", "b"], ["z"]),
            helper.make_node("Sigmoid", ["z"], ["probabilities"]),
        ],
        "ovr",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3])],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx_bytes = model.SerializeToString()
    (raw,) = _ort(onnx_bytes, x)
    assert np.abs(raw.sum(axis=1) - 1.0).max() > 0.1
    y = data.target
    table = pa.table({**{f"f{i}": x[:, i].astype(np.float64) for i in range(4)}, "y": y})
    report = evaluate(onnx_bytes, None, table, label="y")
    codes = [w.code for w in report.warnings]
    assert "PROBABILITIES_RENORMALISED" in codes and "SCORES_NOT_PROBABILITIES" not in codes
    proba = ovr.predict_proba(x)
    onehot = np.eye(3)[y]
    m = report.metrics
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, proba), rel=1e-5)
    assert m["brier"] == pytest.approx(np.mean(np.sum((proba - onehot) ** 2, axis=1)), rel=1e-5)
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr"), rel=1e-6)
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(onehot, proba), rel=1e-6)
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y
    assert m["ece"] == pytest.approx(expected_calibration_error(confidence, correct), abs=1e-6)


def test_probability_matrices_are_read_as_a_whole() -> None:
    warnings: list = []
    tidy = probabilities(np.array([[0.3, 0.7], [0.5, 0.5004]]), "p", warnings)
    assert tidy == pytest.approx(np.array([[0.3, 0.7], [0.5 / 1.0004, 0.5004 / 1.0004]]))
    assert warnings == []
    sigmoids = probabilities(np.array([[0.2, 0.6], [0.0, 0.0], [1.0, 1.0]]), "p", warnings)
    assert sigmoids == pytest.approx(np.array([[0.25, 0.75], [0.5, 0.5], [0.5, 0.5]]))
    assert [w.code for w in warnings] == ["PROBABILITIES_RENORMALISED"]
    warnings.clear()
    logits = probabilities(np.array([[0.2, 0.6], [2.0, -1.0]]), "p", warnings)
    assert logits[0] == pytest.approx(np.exp([0.2, 0.6]) / np.exp([0.2, 0.6]).sum())
    assert [w.code for w in warnings] == ["SCORES_NOT_PROBABILITIES"]


def test_r2_of_a_slice_with_constant_labels_is_undefined() -> None:
    """Labels such as 0.1 have a mean one ulp off; r2 is still undefined, not -1e37."""
    data = load_diabetes()
    x = data.data.astype(np.float32)
    model = LinearRegression().fit(x, data.target)
    onnx_bytes = to_onnx(model, x[:1], target_opset=17).SerializeToString()
    segment = np.where(np.arange(len(x)) % 4 == 0, "flat", "other")
    y = np.where(segment == "flat", 0.1, data.target)
    table = pa.table({**{f"f{i}": x[:, i] for i in range(10)}, "y": y, "segment": segment})
    report = evaluate(onnx_bytes, None, table, label="y", slices=["segment"])
    (pred,) = _ort(onnx_bytes, x)
    pred = pred.ravel().astype(np.float64)
    flat, other = report.slices["segment"]
    assert flat.value == "flat" and flat.metrics["r2"] is None
    assert [(w.code, w.metric) for w in report.warnings if w.scope == "slice:segment=flat"] == [
        ("CONSTANT_LABELS", "r2")
    ]
    rows = segment == "other"
    assert other.metrics["r2"] == pytest.approx(skm.r2_score(y[rows], pred[rows]))
    assert report.metrics["r2"] == pytest.approx(skm.r2_score(y, pred))


def test_regression_on_diabetes() -> None:
    data = load_diabetes()
    x = data.data.astype(np.float32)
    model = LinearRegression().fit(x, data.target)
    onnx_bytes = to_onnx(model, x[:1], target_opset=17).SerializeToString()
    table = pa.table(
        {**{n: x[:, i] for i, n in enumerate(data.feature_names)}, "progression": data.target}
    )
    report = evaluate(
        onnx_bytes,
        None,
        table,
        label="progression",
        feature_names=list(data.feature_names),
        slices=["sex"],
    )
    (pred,) = _ort(onnx_bytes, x)
    pred = pred.ravel().astype(np.float64)
    y = data.target
    assert report.task == "regression"
    assert set(report.metrics) == set(REGRESSION_METRICS)
    assert report.metrics["mae"] == pytest.approx(skm.mean_absolute_error(y, pred))
    assert report.metrics["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, pred)))
    assert report.metrics["mape"] == pytest.approx(skm.mean_absolute_percentage_error(y, pred))
    assert report.metrics["r2"] == pytest.approx(skm.r2_score(y, pred))
    assert len(report.slices["sex"]) == 2
    # As a classifier its predictions are logits, and the labels none of its classes.
    with pytest.raises(InvalidArgument) as err:
        evaluate(onnx_bytes, None, table, label="progression", task="classification")
    assert err.value.reason == "UNKNOWN_LABELS" and "[0, 1]" in err.value.message


def test_several_named_inputs_take_their_columns() -> None:
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["b", "two"], ["b2"]),
            helper.make_node("Add", ["a", "b2"], ["y"]),
        ],
        "sum",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 1]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["n", 1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1])],
        initializer=[helper.make_tensor("two", TensorProto.FLOAT, [1], [2.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=50), rng.normal(size=50)
    target = a + 2 * b + 0.5
    table = pa.table({"b": b, "noise": rng.normal(size=50), "a": a, "t": target})
    report = evaluate(model.SerializeToString(), None, table, label="t")
    assert report.feature_names == ["a", "b"]
    assert report.metrics["mae"] == pytest.approx(0.5, abs=1e-5)
    assert report.validation is not None and report.validation.extra_columns == ["noise"]


def test_integer_classes_that_are_not_column_indices(wine: Multiclass) -> None:
    codes = np.array([{"barolo": 5, "grignolino": 7, "barbera": 9}[v] for v in wine.y])
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(wine.x, codes)
    onnx_bytes = _onnx(model, wine.x)
    table = wine.table.drop_columns(["cultivar"]).append_column("code", pa.array(codes))
    report = evaluate(onnx_bytes, None, table, label="code")
    assert report.classes == [5, 7, 9]
    proba = _proba(onnx_bytes, wine.x)
    y = np.searchsorted([5, 7, 9], codes)
    assert report.metrics["accuracy"] == pytest.approx(
        skm.accuracy_score(y, np.argmax(proba, axis=1))
    )
    assert report.metrics["log_loss"] == pytest.approx(skm.log_loss(y, proba), rel=1e-5)
