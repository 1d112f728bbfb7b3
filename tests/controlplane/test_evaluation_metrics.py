"""The evaluation metrics against scikit-learn, fairlearn and straightforward loops, on data
with class imbalance and many tied scores."""

from __future__ import annotations

import numpy as np
import pytest
from fairlearn import metrics as flm
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize

from controlplane.evaluation import (
    ECE_EDGES,
    average_precision,
    classification_metrics,
    expected_calibration_error,
    regression_metrics,
    roc_auc,
)
from controlplane.evaluation._fairness import fairness_report
from controlplane.evaluation._grouping import cap_groups, group_rows


def _tied_binary(seed: int, n: int = 600, positive_share: float = 0.08):
    """Imbalanced labels and scores rounded to one decimal, so most scores tie."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < positive_share
    scores = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0.0, 1.0).round(1)
    return y, scores


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranking_metrics_match_sklearn_with_ties_and_imbalance(seed: int) -> None:
    y, scores = _tied_binary(seed)
    assert len(np.unique(scores)) <= 11
    assert roc_auc(scores, y) == pytest.approx(skm.roc_auc_score(y, scores), abs=1e-12)
    assert average_precision(scores, y) == pytest.approx(
        skm.average_precision_score(y, scores), abs=1e-12
    )


def test_ranking_metrics_undefined_without_both_classes() -> None:
    scores = np.array([0.1, 0.4, 0.4, 0.9])
    assert roc_auc(scores, np.ones(4, dtype=bool)) is None
    assert roc_auc(scores, np.zeros(4, dtype=bool)) is None
    assert average_precision(scores, np.zeros(4, dtype=bool)) is None
    assert average_precision(scores, np.ones(4, dtype=bool)) == pytest.approx(1.0)


def _ece_loop(confidence: np.ndarray, correct: np.ndarray) -> float:
    """ECE written out bin by bin with explicit comparisons against the documented edges."""
    total = 0.0
    n = len(confidence)
    for b in range(10):
        lo, hi = ECE_EDGES[b], ECE_EDGES[b + 1]
        members = [
            i for i in range(n) if lo <= confidence[i] < hi or (b == 9 and confidence[i] == 1.0)
        ]
        if members:
            acc = sum(float(correct[i]) for i in members) / len(members)
            conf = sum(float(confidence[i]) for i in members) / len(members)
            total += len(members) / n * abs(acc - conf)
    return total


def test_ece_matches_a_loop_including_values_on_bin_edges() -> None:
    rng = np.random.default_rng(5)
    conf = np.concatenate([rng.random(300), ECE_EDGES, ECE_EDGES, [0.0, 1.0, 0.3, 0.7]])
    correct = rng.random(len(conf)) < conf
    assert expected_calibration_error(conf, correct) == pytest.approx(
        _ece_loop(conf, correct), abs=1e-12
    )
    perfect = np.array([0.25, 0.25, 0.25, 0.25])
    assert expected_calibration_error(perfect, np.array([True, False, False, False])) == 0.0


def test_binary_classification_metrics_match_sklearn() -> None:
    y_bool, scores = _tied_binary(3)
    y = y_bool.astype(np.int64)
    proba = np.column_stack([1 - scores, scores])
    got, warnings = classification_metrics(y, proba, positive=1)
    assert warnings == []
    pred = np.argmax(proba, axis=1)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    for name, fn in (
        ("precision", skm.precision_score),
        ("recall", skm.recall_score),
        ("f1", skm.f1_score),
    ):
        assert got[name] == pytest.approx(fn(y, pred, zero_division=0)), name
        assert got[f"{name}_macro"] == pytest.approx(
            fn(y, pred, average="macro", zero_division=0)
        ), name
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y, scores))
    assert got["pr_auc"] == pytest.approx(skm.average_precision_score(y, scores))
    assert got["log_loss"] == pytest.approx(skm.log_loss(y, proba), rel=1e-9)
    assert got["brier"] == pytest.approx(skm.brier_score_loss(y, scores))
    assert got["ece"] == pytest.approx(_ece_loop(scores, y_bool), abs=1e-12)


def test_binary_metrics_with_class_zero_as_positive() -> None:
    y_bool, scores = _tied_binary(4)
    y = y_bool.astype(np.int64)
    proba = np.column_stack([1 - scores, scores])
    got, _ = classification_metrics(y, proba, positive=0)
    pred = np.argmax(proba, axis=1)
    assert got["precision"] == pytest.approx(skm.precision_score(y, pred, pos_label=0))
    assert got["recall"] == pytest.approx(skm.recall_score(y, pred, pos_label=0))
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(1 - y, proba[:, 0]))
    assert got["pr_auc"] == pytest.approx(skm.average_precision_score(1 - y, proba[:, 0]))
    assert got["brier"] == pytest.approx(skm.brier_score_loss(1 - y, proba[:, 0]))


def _multiclass(seed: int, n: int = 500):
    rng = np.random.default_rng(seed)
    y = rng.choice(4, size=n, p=[0.6, 0.25, 0.1, 0.05])
    logits = rng.normal(size=(n, 4)) + 1.5 * np.eye(4)[y]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    proba = proba.round(2)
    proba /= proba.sum(axis=1, keepdims=True)
    return y, proba


def test_multiclass_metrics_match_sklearn() -> None:
    y, proba = _multiclass(7)
    got, warnings = classification_metrics(y, proba)
    assert warnings == []
    pred = np.argmax(proba, axis=1)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    for name, fn in (
        ("precision", skm.precision_score),
        ("recall", skm.recall_score),
        ("f1", skm.f1_score),
    ):
        assert got[name] == pytest.approx(fn(y, pred, average="weighted", zero_division=0))
        assert got[f"{name}_macro"] == pytest.approx(fn(y, pred, average="macro", zero_division=0))
    assert got["roc_auc"] == pytest.approx(
        skm.roc_auc_score(y, proba, multi_class="ovr", average="macro")
    )
    onehot = label_binarize(y, classes=[0, 1, 2, 3])
    assert got["pr_auc"] == pytest.approx(
        skm.average_precision_score(onehot, proba, average="macro")
    )
    assert got["log_loss"] == pytest.approx(skm.log_loss(y, proba), rel=1e-9)
    assert got["brier"] == pytest.approx(float(np.mean(np.sum((proba - onehot) ** 2, axis=1))))
    assert got["ece"] == pytest.approx(_ece_loop(proba.max(axis=1), pred == y), abs=1e-12)


def test_multiclass_auc_skips_absent_classes_with_a_warning() -> None:
    y, proba = _multiclass(8)
    keep = y != 3
    got, warnings = classification_metrics(y[keep], proba[keep], scope="slice:s=a")
    present = [0, 1, 2]
    expected = np.mean([skm.roc_auc_score(y[keep] == c, proba[keep][:, c]) for c in present])
    assert got["roc_auc"] == pytest.approx(expected)
    assert {(w.code, w.metric, w.scope) for w in warnings} == {
        ("CLASSES_SKIPPED", "roc_auc", "slice:s=a"),
        ("CLASSES_SKIPPED", "pr_auc", "slice:s=a"),
    }


def test_single_class_gives_none_and_a_warning() -> None:
    proba = np.array([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    got, warnings = classification_metrics(np.array([1, 1, 1]), proba)
    assert got["roc_auc"] is None
    assert got["pr_auc"] == pytest.approx(1.0)
    assert [(w.code, w.metric) for w in warnings] == [("SINGLE_CLASS", "roc_auc")]
    assert got["accuracy"] == pytest.approx(1 / 3)
    got0, warnings0 = classification_metrics(np.array([0, 0, 0]), proba)
    assert got0["roc_auc"] is None and got0["pr_auc"] is None
    assert {w.metric for w in warnings0} == {"roc_auc", "pr_auc"}


def test_regression_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(11)
    y = rng.normal(50, 20, size=400)
    pred = y + rng.normal(0, 5, size=400)
    got, warnings = regression_metrics(y, pred)
    assert warnings == []
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(y, pred))
    assert got["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, pred)))
    assert got["mape"] == pytest.approx(skm.mean_absolute_percentage_error(y, pred))
    assert got["r2"] == pytest.approx(skm.r2_score(y, pred))
    flat, flat_warnings = regression_metrics(np.full(5, 3.0), np.arange(5.0))
    assert flat["r2"] is None
    assert [w.code for w in flat_warnings] == ["CONSTANT_LABELS"]


@pytest.mark.parametrize("magnitude", [1e160, 1e200, 1e300])
def test_regression_metrics_of_huge_values_do_not_overflow(magnitude: float) -> None:
    """Labels whose squares are beyond float64: sklearn on the values divided by the magnitude
    is the reference (mae and rmse scale with it; r2 and mape do not change)."""
    rng = np.random.default_rng(5)
    y_unit = rng.normal(0, 1, size=300)
    pred_unit = y_unit + rng.normal(0, 0.3, size=300)
    got, warnings = regression_metrics(y_unit * magnitude, pred_unit * magnitude)
    assert warnings == []
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(y_unit, pred_unit) * magnitude)
    rmse = np.sqrt(skm.mean_squared_error(y_unit, pred_unit))
    assert got["rmse"] == pytest.approx(rmse * magnitude)
    assert got["r2"] == pytest.approx(skm.r2_score(y_unit, pred_unit))
    assert got["mape"] == pytest.approx(skm.mean_absolute_percentage_error(y_unit, pred_unit))


@pytest.mark.parametrize("exponent", [-565, -1000, -1060])
def test_regression_metrics_of_tiny_values_do_not_underflow(exponent: int) -> None:
    """Labels near 1e-170 (2**-565), 1e-301 and subnormal 1e-319, whose squares underflow:
    sklearn on the same values times 2**-exponent (exact) is the reference."""
    rng = np.random.default_rng(6)
    y = np.ldexp(rng.normal(0, 1, size=300), exponent)
    pred = np.ldexp(rng.normal(0, 1, size=300), exponent)
    got, warnings = regression_metrics(y, pred)
    assert warnings == []
    y_unit, pred_unit = np.ldexp(y, -exponent), np.ldexp(pred, -exponent)
    scale = float(np.ldexp(1.0, exponent))
    # Only figures in the subnormal range round to fewer digits.
    rel = 1e-6 if exponent > -1000 else 1e-3
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(y_unit, pred_unit) * scale, rel)
    rmse = np.sqrt(skm.mean_squared_error(y_unit, pred_unit))
    assert got["rmse"] == pytest.approx(rmse * scale, rel)
    assert got["r2"] == pytest.approx(skm.r2_score(y_unit, pred_unit))


def test_a_metric_beyond_float64_is_none_with_a_warning() -> None:
    y = np.array([1.7e308, -1.7e308, 1.0, 2.0])
    got, warnings = regression_metrics(y, -y)
    # The mean error, (2 * 3.4e308 + 6) / 4, is within float64; its root mean square is not.
    assert got["mae"] == pytest.approx(1.7e308) and got["rmse"] is None
    assert [(w.code, w.metric) for w in warnings] == [("METRIC_OVERFLOW", "rmse")]
    assert got["r2"] == pytest.approx(skm.r2_score(y / 1e308, -y / 1e308))
    assert got["mape"] == pytest.approx(2.0)
    # A zero label beside labels near the top of float64: its floor is still eps.
    near_top = np.array([1e308, 0.0, 5e307, 1.0])
    exact, none = regression_metrics(near_top, near_top + np.array([0.0, 1e-10, 0.0, 0.5]))
    assert none == [] and exact["mape"] == pytest.approx((1e-10 / 2.220446049250313e-16 + 0.5) / 4)


@pytest.mark.parametrize("value", [0.1, 0.3, 1 / 3, 7.7, 123.456])
@pytest.mark.parametrize("n", [3, 7, 1000])
def test_r2_is_undefined_for_constant_labels_whose_mean_is_inexact(value: float, n: int) -> None:
    y = np.full(n, value)
    got, warnings = regression_metrics(y, y + 0.01)
    assert got["r2"] is None
    assert [(w.code, w.metric) for w in warnings] == [("CONSTANT_LABELS", "r2")]
    assert got["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, y + 0.01)))
    almost = y.copy()
    almost[0] = np.nextafter(value, np.inf)
    varied, none = regression_metrics(almost, almost)
    assert varied["r2"] == pytest.approx(1.0) and none == []


def test_fairness_matches_fairlearn() -> None:
    import pyarrow as pa

    rng = np.random.default_rng(13)
    n = 800
    group = rng.choice(["a", "b", "c"], size=n, p=[0.6, 0.3, 0.1])
    y = rng.random(n) < np.where(group == "a", 0.3, 0.5)
    pred = rng.random(n) < np.where(group == "c", 0.2, 0.45)
    rep = fairness_report("g", group_rows(pa.chunked_array([group])), y, pred, "1")
    kw = {"sensitive_features": group}
    assert rep.demographic_parity_difference == pytest.approx(
        flm.demographic_parity_difference(y, pred, **kw)
    )
    assert rep.demographic_parity_ratio == pytest.approx(
        flm.demographic_parity_ratio(y, pred, **kw)
    )
    assert rep.equal_opportunity_difference == pytest.approx(
        flm.equal_opportunity_difference(y, pred, **kw)
    )
    assert rep.equalized_odds_difference == pytest.approx(
        flm.equalized_odds_difference(y, pred, **kw)
    )
    frame = flm.MetricFrame(
        metrics={
            "selection_rate": flm.selection_rate,
            "tpr": flm.true_positive_rate,
            "fpr": flm.false_positive_rate,
            "count": flm.count,
        },
        y_true=y,
        y_pred=pred,
        sensitive_features=group,
    )
    for g in rep.groups:
        row = frame.by_group.loc[g.group]
        assert g.selection_rate == pytest.approx(row["selection_rate"])
        assert g.tpr == pytest.approx(row["tpr"])
        assert g.fpr == pytest.approx(row["fpr"])
        assert g.count == row["count"]
        assert g.accuracy == pytest.approx(np.mean(pred[group == g.group] == y[group == g.group]))


def test_fairness_leaves_undefined_rates_out() -> None:
    import pyarrow as pa

    group = np.array(["a", "a", "a", "b", "b"])
    y = np.array([True, False, True, False, False])
    pred = np.array([True, True, False, False, True])
    rep = fairness_report("g", group_rows(pa.chunked_array([group])), y, pred, "1")
    b = next(g for g in rep.groups if g.group == "b")
    assert b.tpr is None and b.fpr == pytest.approx(0.5)
    # TPR is defined for group a only: nothing to compare, so no difference (not 0.0).
    assert rep.equal_opportunity_difference is None
    assert rep.equalized_odds_difference == pytest.approx(0.5)  # FPRs: both groups
    assert [w.code for w in rep.warnings if w.code != "GROUP_TOO_SMALL"] == ["GROUP_SINGLE_CLASS"]
    nobody = fairness_report("g", group_rows(pa.chunked_array([group])), y, pred & False, "1")
    assert nobody.demographic_parity_ratio is None
    assert nobody.demographic_parity_difference == 0.0


def test_fairness_warns_about_groups_too_small_to_compare() -> None:
    import pyarrow as pa

    from controlplane.evaluation._fairness import SMALL_GROUP_ROWS

    rng = np.random.default_rng(3)
    sizes = {"big": 200, "edge": SMALL_GROUP_ROWS, "tiny": SMALL_GROUP_ROWS - 1, "one": 1}
    group = np.repeat(list(sizes), list(sizes.values()))
    y = np.arange(len(group)) % 2 == 0
    pred = rng.random(len(group)) < 0.5
    rep = fairness_report("g", group_rows(pa.chunked_array([group])), y, pred, "1")
    small = [w for w in rep.warnings if w.code == "GROUP_TOO_SMALL"]
    assert [w.message.split(" has ")[0] for w in small] == ["group 'one'", "group 'tiny'"]
    assert "has 1 row, fewer than 30" in small[0].message
    assert all(w.scope == "fairness:g" for w in small)
    # Their figures stay in the report.
    assert {g.group: g.count for g in rep.groups} == sizes


def test_grouping_names_nulls_and_pools_the_smallest_groups() -> None:
    import pyarrow as pa

    column = pa.chunked_array([["x", None, "y", "x", "z", "x", "w", "y"]])
    groups = group_rows(column)
    assert groups.names == ["<null>", "w", "x", "y", "z"]
    assert [r.tolist() for r in groups.rows] == [[1], [6], [0, 3, 5], [2, 7], [4]]
    capped, pooled = cap_groups(groups, 3)
    assert pooled == 3
    assert capped.names == ["x", "y", "<other>"]
    assert capped.rows[2].tolist() == [1, 4, 6]
    numbers = group_rows(pa.chunked_array([[1, 2, 1]]))
    assert numbers.names == ["1", "2"]


def test_grouping_keeps_missing_values_apart_from_values_that_look_like_them() -> None:
    import pyarrow as pa

    floats = group_rows(pa.chunked_array([[1.5, float("nan"), None, 1.5, 2.0]]))
    assert floats.names == ["1.5", "2", "<null>"]
    assert [r.tolist() for r in floats.rows] == [[0, 3], [4], [1, 2]]
    text = group_rows(pa.chunked_array([["<null>", None, "x", "<other>", None]]))
    assert text.names == ['"<null>"', '"<other>"', "<null>", "x"]
    assert [r.tolist() for r in text.rows] == [[0], [3], [1, 4], [2]]
    capped, pooled = cap_groups(text, 2)
    assert capped.names == ["<null>", "<other>"] and pooled == 3
    zeros = group_rows(pa.chunked_array([[0.0, -0.0, 1.0], [-0.0]]))
    assert zeros.names == ["0", "1"] and zeros.rows[0].tolist() == [0, 1, 3]
    half = group_rows(pa.chunked_array([np.array([-0.0, 0.0, np.nan, 0.5], np.float16)]))
    assert half.names == ["0", "0.5", "<null>"]
    for values in ([1.0, float("nan"), None, -0.0, 0.0], [float("nan"), 2.5, None]):
        plain = group_rows(pa.chunked_array([pa.array(values, pa.float64())]))
        encoded = group_rows(pa.chunked_array([pa.array(values, pa.float64()).dictionary_encode()]))
        assert encoded.names == plain.names and "nan" not in plain.names
        assert [r.tolist() for r in encoded.rows] == [r.tolist() for r in plain.rows]
    nulls = group_rows(pa.chunked_array([pa.nulls(3)]))
    assert nulls.names == ["<null>"] and nulls.rows[0].tolist() == [0, 1, 2]
