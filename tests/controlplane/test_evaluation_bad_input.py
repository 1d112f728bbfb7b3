"""Bad input to the evaluation engine: each case raises InvalidArgument with its own reason
and a message naming what to fix, or, for undefined metrics, records None and a warning."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from onnx import TensorProto, helper
from skl2onnx import to_onnx
from sklearn.datasets import load_breast_cancer, load_iris
from sklearn.linear_model import LogisticRegression

from controlplane.domain import Signature, TensorSpec
from controlplane.evaluation import evaluate
from controlplane.evaluation._model import observed_classes
from modelplane.errors import InvalidArgument
from modelplane.testing.onnx_models import identity_model


def _reason(**kwargs: object) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as err:
        evaluate(**kwargs)  # type: ignore[arg-type]
    return err.value


@pytest.fixture(scope="module")
def model() -> tuple[bytes, pa.Table, list[str]]:
    data = load_breast_cancer()
    x = data.data.astype(np.float32)[:, :5]
    names = [f"f{i}" for i in range(5)]
    clf = LogisticRegression(max_iter=3000).fit(x, data.target)
    onnx_bytes = to_onnx(clf, x[:1], options={"zipmap": False}, target_opset=17)
    table = pa.table({**{n: x[:, i] for i, n in enumerate(names)}, "y": data.target})
    return onnx_bytes.SerializeToString(), table, names


def _eval(model, table=None, **kwargs):
    onnx_bytes, base, names = model
    return dict(
        onnx_bytes=onnx_bytes,
        signature=None,
        table=base if table is None else table,
        label="y",
        feature_names=names,
        **kwargs,
    )


def test_missing_label_column(model) -> None:
    err = _reason(**_eval(model, model[1].drop_columns(["y"])))
    assert err.reason == "MISSING_LABEL_COLUMN" and "'y'" in err.message


def test_missing_feature_columns(model) -> None:
    err = _reason(**_eval(model, model[1].drop_columns(["f2"])))
    assert err.reason == "MISSING_FEATURES" and "f2" in err.message
    err = _reason(**_eval(model, features=["f0", "nope", "f1", "f2", "f3"]))
    assert err.reason == "MISSING_FEATURES" and "nope" in err.message
    err = _reason(**_eval(model, features=["f0", "f1"]))
    assert err.reason == "FEATURE_COUNT_MISMATCH"


def test_missing_slice_and_protected_columns(model) -> None:
    assert _reason(**_eval(model, slices=["region"])).reason == "MISSING_SLICE_COLUMN"
    assert _reason(**_eval(model, protected=["sex"])).reason == "MISSING_PROTECTED_COLUMN"


def test_non_numeric_feature_for_a_float_model(model) -> None:
    table = model[1]
    text = pa.array([str(v) for v in table.column("f1").to_pylist()])
    err = _reason(**_eval(model, table.set_column(1, "f1", text)))
    assert err.reason == "NON_NUMERIC_FEATURE" and "'f1'" in err.message


def test_empty_dataset(model) -> None:
    assert _reason(**_eval(model, model[1].slice(0, 0))).reason == "EMPTY_DATASET"
    assert _reason(**_eval(model, b"")).reason == "INVALID_DATASET"


def test_labels_that_are_missing_unknown_or_not_numeric(model) -> None:
    table = model[1]
    labels = table.column("y").to_pylist()
    with_null = table.set_column(5, "y", pa.array([None, *labels[1:]], pa.int64()))
    assert _reason(**_eval(model, with_null)).reason == "MISSING_LABELS"
    unknown = table.set_column(5, "y", pa.array([7, *labels[1:]]))
    err = _reason(**_eval(model, unknown))
    assert err.reason == "UNKNOWN_LABELS" and "7" in err.message
    strings = table.set_column(5, "y", pa.array(["yes" if v else "no" for v in labels]))
    assert _reason(**_eval(model, strings)).reason == "UNKNOWN_LABELS"


def test_nested_labels_are_refused(model) -> None:
    table = model[1]
    labels = table.column("y").to_pylist()
    for nested in (pa.array([[v] for v in labels]), pa.array([{"v": v} for v in labels])):
        err = _reason(**_eval(model, table.set_column(5, "y", nested)))
        assert err.reason == "INVALID_LABEL_TYPE" and "'y'" in err.message


def test_columns_named_twice_are_refused(model) -> None:
    table = model[1]
    for repeated in ("y", "f1"):
        twice = table.append_column(repeated, table.column(repeated))
        err = _reason(**_eval(model, twice))
        assert err.reason == "DUPLICATE_COLUMNS" and repeated in err.message
    # Read from CSV, where a repeated header is easy to write by hand.
    header = ",".join([*table.column_names, "y"]).encode()
    rows = [",".join(str(v) for v in (*row.values(), row["y"])) for row in table.to_pylist()[:20]]
    err = _reason(**_eval(model, header + b"\n" + "\n".join(rows).encode()))
    assert err.reason == "DUPLICATE_COLUMNS"


def test_bool_and_string_digit_labels_map_to_integer_classes(model) -> None:
    table = model[1]
    labels = table.column("y").to_pylist()
    plain = evaluate(**_eval(model))
    as_bool = evaluate(**_eval(model, table.set_column(5, "y", pa.array([v == 1 for v in labels]))))
    as_text = evaluate(**_eval(model, table.set_column(5, "y", pa.array([str(v) for v in labels]))))
    assert as_bool.metrics == plain.metrics == as_text.metrics


def test_single_class_labels_give_none_and_a_warning(model) -> None:
    table = model[1].filter(pa.compute.equal(model[1].column("y"), 1))
    report = evaluate(**_eval(model, table, slices=["y"]))
    assert report.metrics["roc_auc"] is None
    assert report.to_dict()["metrics"]["roc_auc"] is None
    assert any(w.code == "SINGLE_CLASS" and w.metric == "roc_auc" for w in report.warnings)
    assert report.metrics["accuracy"] is not None


def test_unusable_model_outputs(model) -> None:
    table = model[1]
    ints = identity_model("INT64", [-1, 5]).SerializeToString()
    as_int = pa.table(
        {**{f"f{i}": np.arange(table.num_rows) for i in range(5)}, "y": table.column("y")}
    )
    err = _reason(onnx_bytes=ints, signature=None, table=as_int, label="y")
    assert err.reason == "UNUSABLE_MODEL_OUTPUT" and "INT64" in err.message
    sqrt = helper.make_graph(
        [helper.make_node("Sqrt", ["x"], ["y"])],
        "sqrt",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1])],
    )
    model_sqrt = helper.make_model(sqrt, opset_imports=[helper.make_opsetid("", 17)])
    model_sqrt.ir_version = 8
    negative = pa.table({"x": [-1.0, 4.0], "t": [1.0, 2.0]})
    err = _reason(
        onnx_bytes=model_sqrt.SerializeToString(), signature=None, table=negative, label="t"
    )
    assert err.reason == "UNUSABLE_MODEL_OUTPUT"
    string_label = pa.table({"x": [1.0, 4.0], "t": ["a", "b"]})
    err = _reason(
        onnx_bytes=model_sqrt.SerializeToString(), signature=None, table=string_label, label="t"
    )
    assert err.reason == "NON_NUMERIC_LABEL"


def _cast_model(input_type: int) -> bytes:
    """A regression model that casts its one ``input_type`` feature ``x`` to float."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)],
        "cast",
        [helper.make_tensor_value_info("x", input_type, ["n", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1])],
    )
    cast = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    cast.ir_version = 8
    return cast.SerializeToString()


def test_integer_inputs_refuse_fractions_and_nulls() -> None:
    data = _cast_model(TensorProto.INT64)
    good = evaluate(data, None, pa.table({"x": [1.0, 2.0], "t": [1.0, 3.0]}), label="t")
    assert good.metrics["mae"] == pytest.approx(0.5)
    err = _reason(
        onnx_bytes=data, signature=None, table=pa.table({"x": [1.5, 2.0], "t": [1, 2]}), label="t"
    )
    assert err.reason == "NON_INTEGER_FEATURE" and "'x'" in err.message
    err = _reason(
        onnx_bytes=data, signature=None, table=pa.table({"x": [None, 2], "t": [1, 2]}), label="t"
    )
    assert err.reason == "MISSING_VALUES"


def test_bad_model_bytes_and_signature(model) -> None:
    err = _reason(**{**_eval(model), "onnx_bytes": b"not a model"})
    assert err.reason == "INVALID_ONNX_MODEL"
    wrong = Signature([TensorSpec("other", "FP32", [-1, 5])], [TensorSpec("label", "INT64", [-1])])
    assert _reason(**{**_eval(model), "signature": wrong}).reason == "SIGNATURE_MISMATCH"


def test_bad_options(model) -> None:
    assert _reason(**_eval(model, task="ranking")).reason == "INVALID_TASK"
    assert _reason(**_eval(model, classes=[0, 1, 2])).reason == "CLASSES_MISMATCH"
    assert _reason(**_eval(model, positive_class=5)).reason == "UNKNOWN_POSITIVE_CLASS"
    assert _reason(**_eval(model, output="nope")).reason == "UNUSABLE_MODEL_OUTPUT"


def test_fairness_needs_binary_and_few_groups(model) -> None:
    iris = load_iris()
    x = iris.data.astype(np.float32)
    clf = LogisticRegression(max_iter=2000).fit(x, iris.target)
    onnx_bytes = to_onnx(clf, x[:1], options={"zipmap": False}, target_opset=17)
    table = pa.table(
        {
            **{f"x{i}": x[:, i] for i in range(4)},
            "y": iris.target,
            "g": np.where(x[:, 0] > np.median(x[:, 0]), "a", "b"),
        }
    )
    err = _reason(
        onnx_bytes=onnx_bytes.SerializeToString(),
        signature=None,
        table=table,
        label="y",
        protected=["g"],
    )
    assert err.reason == "FAIRNESS_NEEDS_BINARY"
    many = model[1].append_column("id", pa.array(np.arange(model[1].num_rows)))
    err = _reason(**_eval(model, many, protected=["id"], max_slices=10))
    assert err.reason == "TOO_MANY_GROUPS" and "'id'" in err.message


def test_a_progress_callback_can_abort(model) -> None:
    class Stop(Exception):
        pass

    def stop_midway(fraction: float) -> None:
        if 0 < fraction < 1:
            raise Stop

    with pytest.raises(Stop):
        evaluate(**_eval(model, progress=stop_midway, chunk_rows=100))


def test_classes_read_off_the_label_output() -> None:
    labels = np.array(["b", "a", "a", "c", "b"], dtype=object)
    argmax = np.array([1, 0, 0, 2, 1])
    assert observed_classes(labels, argmax, 3) == ["a", "b", "c"]
    assert observed_classes(labels[:3], argmax[:3], 3) is None


@pytest.mark.parametrize("role", ["slices", "protected"])
def test_interval_columns_cannot_be_grouped(model, role: str) -> None:
    n = model[1].num_rows
    tenure = pa.array([(i % 3, 0, 0) for i in range(n)], pa.month_day_nano_interval())
    err = _reason(**_eval(model, model[1].append_column("tenure", tenure), **{role: ["tenure"]}))
    reason = "INVALID_SLICE_COLUMN" if role == "slices" else "INVALID_PROTECTED_COLUMN"
    assert err.reason == reason and "'tenure'" in err.message


@pytest.mark.parametrize(
    "values",
    [
        pa.array(np.arange(569) % 2, pa.timestamp("us")),
        pa.array(np.arange(569) % 2, pa.duration("s")),
        pa.array((np.arange(569) % 2 + 18_500) * 86_400_000_000, pa.timestamp("us")),
    ],
    ids=["timestamp-epoch", "duration", "timestamp-dates"],
)
def test_temporal_labels_are_refused(model, values: pa.Array) -> None:
    table = model[1].set_column(model[1].schema.get_field_index("y"), "y", values)
    err = _reason(**_eval(model, table))
    assert err.reason == "INVALID_LABEL_TYPE"


def test_nan_labels_are_missing_and_unknown_labels_list_only_the_failures(model) -> None:
    y = model[1].column("y").to_numpy().astype(np.float64)
    y[7] = np.nan
    index = model[1].schema.get_field_index("y")
    err = _reason(**_eval(model, model[1].set_column(index, "y", pa.array(y))))
    assert err.reason == "MISSING_LABELS" and "1 missing" in err.message
    y[7] = 0.5
    err = _reason(**_eval(model, model[1].set_column(index, "y", pa.array(y))))
    assert err.reason == "UNKNOWN_LABELS" and "(0.5)" in err.message
    text = np.where(np.arange(len(y)) == 3, "maybe", (np.arange(len(y)) % 2).astype(str))
    err = _reason(**_eval(model, model[1].set_column(index, "y", pa.array(text))))
    assert err.reason == "UNKNOWN_LABELS" and "('maybe')" in err.message
    # Whole numbers beyond int64 are the failures too, not every label.
    y[7] = 1e20
    err = _reason(**_eval(model, model[1].set_column(index, "y", pa.array(y))))
    assert err.reason == "UNKNOWN_LABELS" and "(1e+20)" in err.message
    wide = (np.arange(len(y)) % 2).astype(np.uint64)
    wide[5] = 2**63 + 5
    err = _reason(**_eval(model, model[1].set_column(index, "y", pa.array(wide))))
    assert err.reason == "UNKNOWN_LABELS" and f"({2**63 + 5})" in err.message


def test_integer_inputs_refuse_values_outside_their_range() -> None:
    data = _cast_model(TensorProto.INT8)
    good = evaluate(
        data, None, pa.table({"x": [1, -128, 127], "t": [1.0, -128.0, 127.0]}), label="t"
    )
    assert good.metrics["mae"] == 0.0
    err = _reason(
        onnx_bytes=data, signature=None, table=pa.table({"x": [1, 300], "t": [1, 2]}), label="t"
    )
    assert err.reason == "FEATURE_OUT_OF_RANGE" and "'x'" in err.message and "300" in err.message


def test_integer_inputs_take_float16_columns() -> None:
    data = _cast_model(TensorProto.INT8)
    half = pa.array(np.array([1, -128, 127], np.float16))
    good = evaluate(data, None, pa.table({"x": half, "t": [1.0, -128.0, 127.0]}), label="t")
    assert good.metrics["mae"] == 0.0
    wide = pa.array(np.array([1, 300], np.float16))
    err = _reason(
        onnx_bytes=data, signature=None, table=pa.table({"x": wide, "t": [1, 2]}), label="t"
    )
    assert err.reason == "FEATURE_OUT_OF_RANGE" and "300" in err.message
    part = pa.array(np.array([1.5, 2], np.float16))
    err = _reason(
        onnx_bytes=data, signature=None, table=pa.table({"x": part, "t": [1, 2]}), label="t"
    )
    assert err.reason == "NON_INTEGER_FEATURE"
