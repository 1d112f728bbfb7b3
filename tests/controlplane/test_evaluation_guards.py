"""What a server-side evaluation refuses before it runs: a dataset evaluated under another role
than its lineage records, a dataset larger than the configured limits (read from its metadata),
and feature columns that are also the label, a slice or a protected column."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from controlplane.evaluation import check_dataset_size, evaluate
from modelplane.errors import InvalidArgument, ResourceExhausted
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, TrainedModel, start_controlplane


def test_training_data_cannot_be_evaluated_as_a_holdout(
    controlplane_any: RunningControlPlane, trained_model: TrainedModel
) -> None:
    model_id = unique()
    with controlplane_any.client() as c:
        c.create_model(model_id)
        version = int(
            c.register_version(
                model_id,
                trained_model.onnx,
                datasets={"train": trained_model.train},
                label=trained_model.label,
            ).version
        )
        with pytest.raises(InvalidArgument) as err:
            c.evaluate(model_id, version, trained_model.train, label="target", role="holdout")
        assert err.value.reason == "DATASET_ROLE_CONFLICT"
        assert "train" in err.value.message
        # Under its own role it is evaluated; other data under any role too.
        on_train = c.operation_result(
            c.evaluate(model_id, version, trained_model.train, label="target", role="train")
        )
        on_holdout = c.operation_result(
            c.evaluate(model_id, version, trained_model.holdout, label="target")
        )
    assert on_train.dataset_role == "train" and on_holdout.dataset_role == "holdout"


def _bytes(table: pa.Table, fmt: str) -> bytes:
    sink = io.BytesIO()
    if fmt == "parquet":
        pq.write_table(table, sink)
    elif fmt == "csv":
        pacsv.write_csv(table, sink)
    else:
        out = pa.BufferOutputStream()
        writer = (pa.ipc.new_file if fmt == "arrow-file" else pa.ipc.new_stream)(out, table.schema)
        writer.write_table(table, max_chunksize=1000)
        writer.close()
        return out.getvalue().to_pybytes()
    return sink.getvalue()


@pytest.mark.parametrize("fmt", ["parquet", "arrow-file", "arrow-stream", "csv"])
def test_dataset_size_is_read_before_the_data(fmt: str) -> None:
    table = pa.table({"a": np.zeros(5000), "b": np.ones(5000), "y": np.zeros(5000, np.int64)})
    data = _bytes(table, fmt)
    check_dataset_size(data, max_rows=5000, max_cells=15000)
    with pytest.raises(ResourceExhausted) as rows:
        check_dataset_size(
            data, max_rows=4999, max_cells=10**9, settings=("rows_limit", "cells_limit")
        )
    assert (
        rows.value.reason == "DATASET_TOO_LARGE" and "MODELPLANE_ROWS_LIMIT" in rows.value.message
    )
    with pytest.raises(ResourceExhausted) as cells:
        check_dataset_size(
            data, max_rows=10**9, max_cells=14999, settings=("rows_limit", "cells_limit")
        )
    assert (
        cells.value.reason == "DATASET_TOO_LARGE"
        and "MODELPLANE_CELLS_LIMIT" in cells.value.message
    )


@pytest.mark.parametrize(
    ("fmt", "counted"), [("parquet", "has 1,001 rows"), ("csv", "has at least 1,001 rows")]
)
def test_the_refusal_says_how_many_rows_were_counted(fmt: str, counted: str) -> None:
    """Parquet gives its row count; a CSV is counted until it passes the limit, so the count is
    a lower bound, and here the whole file: it holds exactly 1,001 rows."""
    table = pa.table({"x": np.arange(1001), "y": np.zeros(1001, np.int64)})
    with pytest.raises(ResourceExhausted) as err:
        check_dataset_size(_bytes(table, fmt), max_rows=1000, max_cells=10**9)
    assert counted in err.value.message and "more than" not in err.value.message


def test_a_dataset_over_the_limits_is_refused(tmp_path: Path, trained_model: TrainedModel) -> None:
    # A few kilobytes of Parquet that would expand to many rows.
    big = tmp_path / "big.parquet"
    n = 200_000
    pq.write_table(
        pa.table(
            {n_: np.zeros(n) for n_ in trained_model.feature_names}
            | {"target": np.zeros(n, np.int64)}
        ),
        big,
    )
    cp = start_controlplane(
        tmp_path, f"sqlite:///{tmp_path / 'cp.db'}", evaluation_max_rows=100_000
    )
    try:
        with cp.client() as c:
            model_id = unique()
            c.create_model(model_id)
            version = int(c.register_version(model_id, trained_model.onnx).version)
            with pytest.raises(ResourceExhausted) as err:
                c.operation_result(c.evaluate(model_id, version, big, label="target"))
            small = c.operation_result(
                c.evaluate(model_id, version, trained_model.holdout, label="target")
            )
    finally:
        cp.handle.stop(0)
    assert err.value.reason == "DATASET_TOO_LARGE"
    assert "MODELPLANE_EVALUATION_MAX_ROWS" in err.value.message and "100,000" in err.value.message
    assert small.rows > 0


@pytest.fixture(scope="module")
def small_model() -> tuple[bytes, pa.Table, list[str]]:
    from skl2onnx import to_onnx
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression

    data = load_breast_cancer()
    x = data.data.astype(np.float32)[:, :5]
    clf = LogisticRegression(max_iter=3000).fit(x, data.target)
    onnx_bytes = to_onnx(clf, x[:1], options={"zipmap": False}, target_opset=17).SerializeToString()
    names = [f"f{i}" for i in range(5)]
    table = pa.table({n: x[:, i] for i, n in enumerate(names)} | {"y": data.target})
    return onnx_bytes, table, names


@pytest.mark.parametrize("role", ["label", "slice", "protected"])
def test_features_cannot_include_the_label_slice_or_protected_columns(
    small_model: tuple[bytes, pa.Table, list[str]], role: str
) -> None:
    onnx_bytes, table, names = small_model
    table = table.append_column("g", pa.array(np.arange(table.num_rows) % 2))
    features = {"label": ["y", *names[1:]], "slice": ["g", *names[1:]]}
    features["protected"] = features["slice"]
    with pytest.raises(InvalidArgument) as err:
        evaluate(
            onnx_bytes,
            None,
            table,
            label="y",
            feature_names=names,
            features=features[role],
            slices=["g"] if role == "slice" else [],
            protected=["g"] if role == "protected" else [],
        )
    assert err.value.reason == "FEATURES_OVERLAP"


def test_absent_version_features_are_reported_not_replaced(
    small_model: tuple[bytes, pa.Table, list[str]],
) -> None:
    onnx_bytes, table, names = small_model
    renamed = table.rename_columns([f"x{i}" for i in range(5)] + ["y"])
    with pytest.raises(InvalidArgument) as err:
        evaluate(onnx_bytes, None, renamed, label="y", feature_names=names)
    assert err.value.reason == "MISSING_FEATURES"
    assert err.value.metadata["missing"] == ",".join(names)


def test_a_csv_whose_types_change_after_its_first_block_is_still_counted() -> None:
    # The streaming reader infers "a" as int64 from its first block (1 MiB); the float and
    # the text further on would stop it there.
    rows = [f"{i},1\n" for i in range(200_000)] + ["0.5,1\n", "text,1\n"]
    data = ("a,y\n" + "".join(rows + rows)).encode()
    check_dataset_size(data, max_rows=len(rows) * 2, max_cells=10**9)
    with pytest.raises(ResourceExhausted) as err:
        check_dataset_size(data, max_rows=300_000, max_cells=10**9)
    assert err.value.reason == "DATASET_TOO_LARGE"
    broken = ("a,y\n" + "".join(rows) + "1,2,3\n" + "".join(rows)).encode()
    with pytest.raises(InvalidArgument) as bad:
        check_dataset_size(broken, max_rows=10**9, max_cells=10**9)
    assert bad.value.reason == "INVALID_DATASET"
