"""Fairness disparities are exact: computed from each group's counts as fractions and rounded
to a float once, so a gate rule at an exact boundary (24 of 30 selected against 18 of 30 is a
ratio of exactly 3/4) gets the verdict the counts give; and a protected column with fewer than
two groups (missing on every row, or one value) leaves every disparity undefined with a
``SINGLE_GROUP`` warning, so a fairness rule reading one fails the gate saying why, through a
real control plane with an ONNX model whose predictions the test sets row by row."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from google.protobuf import json_format
from onnx import TensorProto, helper

from controlplane.evaluation._fairness import fairness_report
from controlplane.evaluation._grouping import group_rows
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane

DISPARITIES = (
    "demographic_parity_difference",
    "demographic_parity_ratio",
    "equal_opportunity_difference",
    "equalized_odds_difference",
)


def sigmoid_of_x() -> bytes:
    """``probability [-1, 1] = sigmoid(x)``: a row with ``x = 4`` is predicted positive, one
    with ``x = -4`` negative."""
    graph = helper.make_graph(
        [helper.make_node("Sigmoid", ["x"], ["probability"])],
        "sigmoid",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, [None, 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def group_rows_of(positives: int, true_positives: int, negatives: int, false_positives: int):
    """(label, prediction) pairs of one group with these counts."""
    return (
        [(1, 1)] * true_positives
        + [(1, 0)] * (positives - true_positives)
        + [(0, 1)] * false_positives
        + [(0, 0)] * (negatives - false_positives)
    )


# Group a: 30 rows, 10 positive (8 predicted positive), 20 negative (16 predicted positive):
# 24 selected, TPR 4/5, FPR 4/5. Group b: 30 rows, 10 positive (5), 20 negative (13): 18
# selected, TPR 1/2, FPR 13/20. Exact disparities: ratio 3/4, difference 1/5, TPR spread 3/10,
# FPR spread 3/20; subtracting the rounded rates gives 0.7499999999999999, 0.20000000000000007,
# 0.30000000000000004 and 0.15000000000000002.
GROUP_A = group_rows_of(10, 8, 20, 16)
GROUP_B = group_rows_of(10, 5, 20, 13)


def boundary_table() -> pa.Table:
    rows = GROUP_A + GROUP_B
    label, pred = (np.array(c) for c in zip(*rows, strict=True))
    return pa.table(
        {
            "x": np.where(pred == 1, 4.0, -4.0).astype(np.float32),
            "y": label.astype(np.int64),
            "g": ["a"] * len(GROUP_A) + ["b"] * len(GROUP_B),
            "none": pa.nulls(len(rows), pa.string()),
            "one": ["same"] * len(rows),
            "one_or_missing": ["same", None] * (len(rows) // 2),
        }
    )


def register(c, tmp_path: Path) -> tuple[str, Path]:
    model = tmp_path / "sigmoid.onnx"
    model.write_bytes(sigmoid_of_x())
    data = tmp_path / "groups.parquet"
    pq.write_table(boundary_table(), data)
    model_id = unique()
    c.create_model(model_id)
    c.register_version(model_id, model, feature_names=["x"])
    return model_id, data


def test_disparities_at_an_exact_boundary_pass_the_rules_the_counts_meet(
    controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    rules = [
        'fairness["g"].demographic_parity_ratio >= 0.75',
        'fairness["g"].demographic_parity_difference <= 0.2',
        'fairness["g"].equal_opportunity_difference <= 0.3',
        'fairness["g"].equalized_odds_difference <= 0.3',
        'fairness["g"].groups["b"].fpr == 0.65',
    ]
    too_strict = ['fairness["g"].demographic_parity_ratio > 0.75']
    with controlplane.client() as c:
        model_id, data = register(c, tmp_path)
        ev = c.operation_result(c.evaluate(model_id, 1, data, label="y", protected=["g"]))
        c.create_policy(unique("fair"), target="fair", rules=rules)
        c.create_policy(unique("strict"), target="strict", rules=too_strict)
        gate = c.evaluate_gate(model_id, 1, "fair")
        strict = c.evaluate_gate(model_id, 1, "strict")
    fairness = json_format.MessageToDict(ev.fairness)["g"]
    assert fairness["demographic_parity_ratio"] == float(Fraction(3, 4)) == 0.75
    assert fairness["demographic_parity_difference"] == float(Fraction(1, 5)) == 0.2
    assert fairness["equal_opportunity_difference"] == float(Fraction(3, 10)) == 0.3
    assert fairness["equalized_odds_difference"] == float(Fraction(3, 10))
    assert fairness["groups"]["a"]["selection_rate"] == float(Fraction(24, 30))
    assert fairness["groups"]["b"]["fpr"] == float(Fraction(13, 20))
    assert [(r.outcome, list(r.missing)) for r in gate.results] == [("passed", [])] * len(rules)
    assert gate.passed
    assert not strict.passed and [r.outcome for r in strict.results] == ["failed"]


def exact_report(group: np.ndarray, y: np.ndarray, pred: np.ndarray) -> dict[str, float | None]:
    """The disparities from exact fractions of the counts, each rounded once."""
    rates: dict[str, list[Fraction]] = {"selection": [], "tpr": [], "fpr": []}
    for g in np.unique(group):
        yt, yp = y[group == g], pred[group == g]
        rates["selection"].append(Fraction(int(yp.sum()), len(yp)))
        if yt.any():
            rates["tpr"].append(Fraction(int((yp & yt).sum()), int(yt.sum())))
        if (~yt).any():
            rates["fpr"].append(Fraction(int((yp & ~yt).sum()), int((~yt).sum())))
    # A difference needs two groups with the rate; the larger of the defined ones is the odds'.
    spread = {k: max(v) - min(v) for k, v in rates.items() if len(v) >= 2}
    top = max(rates["selection"])
    odds = [spread[k] for k in ("tpr", "fpr") if k in spread]
    return {
        "demographic_parity_difference": float(spread["selection"]),
        "demographic_parity_ratio": float(min(rates["selection"]) / top) if top else None,
        "equal_opportunity_difference": float(spread["tpr"]) if "tpr" in spread else None,
        "equalized_odds_difference": float(max(odds)) if odds else None,
    }


def test_every_disparity_is_the_float_of_the_exact_fraction() -> None:
    rng = np.random.default_rng(11)
    for trial in range(400):
        k = int(rng.integers(2, 6))
        sizes = rng.integers(1, 60, k)
        group = np.repeat([f"g{i}" for i in range(k)], sizes)
        y = rng.random(len(group)) < rng.random()
        pred = rng.random(len(group)) < rng.random()
        y[0], y[-1] = True, False  # some group has a TPR and some an FPR
        rep = fairness_report("g", group_rows(pa.chunked_array([group])), y, pred, "1")
        got = {name: getattr(rep, name) for name in DISPARITIES}
        assert got == exact_report(group, y, pred), trial
        for g in rep.groups:
            rows = group == g.group
            assert g.selection_rate == float(Fraction(int(pred[rows].sum()), int(rows.sum())))


@pytest.mark.parametrize(
    ("values", "wording"),
    [
        ([None] * 40, "'g' is missing on every row"),
        (["x"] * 40, "'g' holds one value ('x'):"),
        (["x", None] * 20, "'g' holds one value ('x') besides missing values"),
    ],
)
def test_fewer_than_two_groups_leave_the_disparities_undefined(
    values: list[str | None], wording: str
) -> None:
    y = np.arange(40) % 2 == 0
    pred = np.arange(40) % 3 == 0
    column = pa.chunked_array([pa.array(values, pa.string())])
    rep = fairness_report("g", group_rows(column), y, pred, "1")
    assert all(getattr(rep, name) is None for name in DISPARITIES)
    (warning,) = [w for w in rep.warnings if w.code == "SINGLE_GROUP"]
    assert wording in warning.message and warning.scope == "fairness:g"
    assert "disparities are undefined" in warning.message
    # The groups' own figures stay.
    assert sum(g.count for g in rep.groups) == 40
    # Two values and missing ones are two groups: the disparities are defined.
    two = pa.chunked_array([pa.array(["x", "y", None, "x"] * 10, pa.string())])
    defined = fairness_report("g", group_rows(two), y, pred, "1")
    assert defined.demographic_parity_difference is not None
    assert "SINGLE_GROUP" not in [w.code for w in defined.warnings]


def test_a_fairness_rule_on_a_single_group_fails_the_gate_saying_why(
    controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    columns = ["none", "one", "one_or_missing"]
    rules = [
        'fairness["none"].demographic_parity_ratio >= 0.8',
        'fairness["one"].demographic_parity_difference <= 0.2',
        'fairness["one_or_missing"].equalized_odds_difference <= 0.2',
    ]
    guarded = ['!has(fairness["one"].demographic_parity_ratio)']
    with controlplane.client() as c:
        model_id, data = register(c, tmp_path)
        ev = c.operation_result(c.evaluate(model_id, 1, data, label="y", protected=columns))
        c.create_policy(unique("fair"), target="fair", rules=rules)
        c.create_policy(unique("guarded"), target="guarded", rules=guarded)
        gate = c.evaluate_gate(model_id, 1, "fair")
        passed = c.evaluate_gate(model_id, 1, "guarded")
    fairness = json_format.MessageToDict(ev.fairness)
    for name in columns:
        assert all(fairness[name][d] is None for d in DISPARITIES), name
    assert fairness["one"]["groups"]["same"]["count"] == 60
    assert fairness["none"]["groups"]["<null>"]["count"] == 60
    warnings = json_format.MessageToDict(ev.report)["warnings"]
    single = {w["scope"]: w["message"] for w in warnings if w["code"] == "SINGLE_GROUP"}
    assert set(single) == {f"fairness:{name}" for name in columns}
    assert "'none' is missing on every row" in single["fairness:none"]
    assert not gate.passed
    assert [r.outcome for r in gate.results] == ["error"] * 3
    assert [list(r.missing) for r in gate.results] == [
        ["fairness.none.demographic_parity_ratio"],
        ["fairness.one.demographic_parity_difference"],
        ["fairness.one_or_missing.equalized_odds_difference"],
    ]
    for result, (name, disparity) in zip(
        gate.results,
        [
            ("none", "demographic_parity_ratio"),
            ("one", "demographic_parity_difference"),
            ("one_or_missing", "equalized_odds_difference"),
        ],
        strict=True,
    ):
        assert f"fairness.{name}.{disparity} is undefined in {ev.name}" in result.message
    assert passed.passed


def test_rows_missing_the_attribute_enter_no_disparity() -> None:
    """The ``<null>`` group is reported with its figures, and the disparities are those of the
    real groups alone, however extreme its rates."""
    rng = np.random.default_rng(12)
    for trial in range(200):
        k = int(rng.integers(2, 5))
        sizes = rng.integers(1, 50, k)
        group = np.repeat([f"g{i}" for i in range(k)], sizes).astype(object)
        y = rng.random(len(group)) < rng.random()
        pred = rng.random(len(group)) < rng.random()
        y[0], y[-1] = True, False
        missing = rng.integers(1, 30)
        column = pa.chunked_array([pa.array([*group, *([None] * missing)], pa.string())])
        y_all = np.concatenate([y, np.ones(missing, bool)])
        pred_all = np.concatenate([pred, np.full(missing, trial % 2 == 0)])
        rep = fairness_report("g", group_rows(column), y_all, pred_all, "1")
        got = {name: getattr(rep, name) for name in DISPARITIES}
        assert got == exact_report(group.astype(str), y, pred), trial
        (null,) = [g for g in rep.groups if g.group == "<null>"]
        assert null.count == missing
        assert "SINGLE_GROUP" not in [w.code for w in rep.warnings]


def test_a_gate_reads_the_disparities_of_the_real_groups_beside_missing_values(
    controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    """Groups a and b (a ratio of exactly 3/4) and 30 rows with the attribute missing, none of
    them selected: the ratio stays 3/4."""
    rows = GROUP_A + GROUP_B + group_rows_of(15, 0, 15, 0)
    label, pred = (np.array(c) for c in zip(*rows, strict=True))
    table = pa.table(
        {
            "x": np.where(pred == 1, 4.0, -4.0).astype(np.float32),
            "y": label.astype(np.int64),
            "g": ["a"] * len(GROUP_A) + ["b"] * len(GROUP_B) + [None] * 30,
        }
    )
    model = tmp_path / "sigmoid.onnx"
    model.write_bytes(sigmoid_of_x())
    data = tmp_path / "missing.parquet"
    pq.write_table(table, data)
    with controlplane.client() as c:
        model_id = unique()
        c.create_model(model_id)
        c.register_version(model_id, model, feature_names=["x"])
        ev = c.operation_result(c.evaluate(model_id, 1, data, label="y", protected=["g"]))
        c.create_policy(unique("fair"), target="fair", rules=[RATIO_RULE])
        gate = c.evaluate_gate(model_id, 1, "fair")
    fairness = json_format.MessageToDict(ev.fairness)["g"]
    assert fairness["demographic_parity_ratio"] == 0.75
    assert fairness["demographic_parity_difference"] == 0.2
    assert fairness["groups"]["<null>"]["count"] == 30
    assert fairness["groups"]["<null>"]["selection_rate"] == 0.0
    assert gate.passed, [(r.outcome, r.message) for r in gate.results]


RATIO_RULE = 'fairness["g"].demographic_parity_ratio >= 0.75'
