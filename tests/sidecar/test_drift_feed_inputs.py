"""Drift over a model of several inputs (``x`` FP32 [-1, 3], ``n`` INT64 [-1], ``cat`` BYTES
[-1]) through a real sidecar: text that is no number in a numeric feature, ``--feature-names``
with a training file, and the gauges before a window closes. Then the pieces behind them: the
feed's fallback to one update per request, and the monitor reading text as numbers and
reading a batch whole before counting it."""

from __future__ import annotations

import threading
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from onnx import TensorProto, helper
from prometheus_client import CollectorRegistry, generate_latest
from sidecar_helpers import raw_request, stub, wait_for

from modelplane.profiles import build_profile, profile_from_file
from modelplane.testing import onnx_models
from modelplane.v1 import sidecar_pb2, sidecar_pb2_grpc
from sidecar.drift import DriftMonitor
from sidecar.driftfeed import DriftFeed, DriftGauges, FeatureSource
from sidecar.observers import BatchRecord, gather


def _three_inputs() -> Any:
    """``x`` FP32 [n,3] -> row sums; ``n`` INT64 [n] and ``cat`` STRING [n] passed through."""
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0),
            helper.make_node("Identity", ["n"], ["n_out"]),
            helper.make_node("Identity", ["cat"], ["cat_out"]),
        ],
        "three_inputs",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("n", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("cat", TensorProto.STRING, ["batch"]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("n_out", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("cat_out", TensorProto.STRING, ["batch"]),
        ],
        initializer=[helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The model, and CSV training files whose ``cat`` holds small integers (numeric):
    ``x`` named ``x_0..x_2`` (the names the sidecar gives it) or ``a,b,c``."""
    d = tmp_path_factory.mktemp("three")
    rng = np.random.default_rng(3)
    rows = 500
    x = rng.standard_normal((rows, 3))
    n = rng.integers(0, 5, rows)
    cat = rng.integers(0, 3, rows)
    label = rng.integers(0, 2, rows)
    out = {"model": onnx_models.save(_three_inputs(), d / "three.onnx")}
    for key, names in (("plain", ["x_0", "x_1", "x_2"]), ("named", ["a", "b", "c"])):
        columns = {name: x[:, j] for j, name in enumerate(names)}
        table = pa.table({**columns, "n": n, "cat": cat, "label": label})
        pacsv.write_csv(table, d / f"{key}.csv")
        out[key] = d / f"{key}.csv"
    return out


def _request(cats: list[bytes]) -> Any:
    k = len(cats)
    return raw_request(
        "three",
        {
            "x": ("FP32", np.zeros((k, 3), np.float32)),
            "n": ("INT64", np.ones(k, np.int64)),
            "cat": ("BYTES", np.array(cats, dtype=object)),
        },
    )


def _report(port: int, window: int = sidecar_pb2.DRIFT_WINDOW_CURRENT) -> Any:
    admin = sidecar_pb2_grpc.SidecarAdminServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    return admin.GetDriftReport(sidecar_pb2.GetDriftReportRequest(window=window), timeout=10)


def test_text_that_is_no_number_is_missing_for_its_feature_and_costs_no_rows(
    files: dict[str, Path], sidecar_factory: Any
) -> None:
    handle = sidecar_factory(
        files["model"],
        baseline=files["plain"],
        baseline_label="label",
        metrics_listen="127.0.0.1:0",
    )
    assert [f.name for f in _report(handle.port).features] == ["x_0", "x_1", "x_2", "n", "cat"]

    # Good and bad requests at once, so that the hub gathers them into shared runs.
    per_thread = 40
    bad = [b"7x", b"", b" 2 "]  # " 2 " reads as 2
    errors: list[BaseException] = []

    def send(cats: list[bytes]) -> None:
        try:
            s = stub(handle.port)
            for _ in range(per_thread):
                s.ModelInfer(_request(cats), timeout=30)
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=send, args=([b"1", b"2"],)) for _ in range(3)]
    threads.append(threading.Thread(target=send, args=(bad,)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    total = per_thread * (3 * 2 + len(bad))

    def counted() -> Any:
        report = _report(handle.port)
        assert report.row_count == total
        return report

    report = wait_for(counted)
    features = {f.name: f for f in report.features}
    # Every row counts for every other feature; only cat's unreadable values are missing.
    for name in ("x_0", "x_1", "x_2", "n"):
        assert features[name].count == total and features[name].missing_share == 0
    assert features["cat"].count == total - 2 * per_thread
    assert features["cat"].missing_share == pytest.approx(2 * per_thread / total)

    failed = 'modelplane_drift_failed_rows_total{model="three",version="1"} 0.0'
    assert failed in _drift_lines(handle.metrics_port)


def test_feature_names_name_the_table_input_and_keep_the_other_inputs_features(
    files: dict[str, Path], sidecar_factory: Any
) -> None:
    handle = sidecar_factory(
        files["model"],
        baseline=files["named"],
        baseline_label="label",
        feature_names=("a", "b", "c"),
    )
    s = stub(handle.port)
    for _ in range(5):
        s.ModelInfer(_request([b"1", b"2"]), timeout=30)
    profiled = profile_from_file(files["named"], label="label").feature_names
    assert profiled == ["a", "b", "c", "n", "cat"]

    def counted() -> Any:
        report = _report(handle.port)
        assert report.row_count == 10
        return report

    report = wait_for(counted)
    assert [f.name for f in report.features] == profiled
    assert all(f.count == 10 for f in report.features)


def _drift_lines(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as reply:
        text = reply.read().decode()
    return [ln for ln in text.splitlines() if ln.startswith("modelplane_drift_")]


def test_window_gauges_appear_with_the_first_closed_window(
    files: dict[str, Path], sidecar_factory: Any
) -> None:
    handle = sidecar_factory(
        files["model"],
        baseline=files["plain"],
        baseline_label="label",
        drift_window_rows=4,
        metrics_listen="127.0.0.1:0",
    )
    # No window closed: no window figures at all (a 0 would read as "nothing drifted").
    before = _drift_lines(handle.metrics_port)
    assert not [ln for ln in before if not ln.startswith("modelplane_drift_failed_rows")]
    with pytest.raises(grpc.RpcError) as err:
        _report(handle.port, sidecar_pb2.DRIFT_WINDOW_LAST)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    stub(handle.port).ModelInfer(_request([b"1", b"2", b"1", b"0"]), timeout=30)

    def shown() -> list[str]:
        lines = _drift_lines(handle.metrics_port)
        assert 'modelplane_drift_window_rows{model="three",version="1"} 4.0' in lines
        return lines

    lines = wait_for(shown)
    assert any(ln.startswith('modelplane_drift_drifted_share{model="three"') for ln in lines)
    assert _report(handle.port, sidecar_pb2.DRIFT_WINDOW_LAST).row_count == 4


class _Failing:
    """A feature source that cannot read a request whose ``n`` holds -1."""

    def __init__(self, source: FeatureSource) -> None:
        self.sources = source.sources
        self._source = source

    def extract(self, inputs: dict[str, np.ndarray]) -> Any:
        if (inputs["n"] == -1).any():
            raise ValueError("unreadable")
        return self._source.extract(inputs)


def _record(n: list[int]) -> BatchRecord:
    k = len(n)
    return BatchRecord(
        model="three",
        version="1",
        provider="CPUExecutionProvider",
        inputs={"x": np.zeros((k, 3), np.float32), "n": np.array(n, np.int64)},
        outputs={},
        request_ids=["r"],
        trace_ids=[""],
        row_counts=[k],
        latencies_s=[0.001],
        status=["OK"],
        compute_s=0.001,
    )


def test_a_request_that_cannot_be_read_costs_its_own_rows_only_and_is_counted(
    files: dict[str, Path],
) -> None:
    table = pacsv.read_csv(files["plain"]).drop_columns(["cat", "label"])
    monitor = DriftMonitor(build_profile(table, table.column_names))
    source = FeatureSource(
        names=("x_0", "x_1", "x_2", "n"),
        sources=(("x", 0), ("x", 1), ("x", 2), ("n", None)),
        categorical=False,
    )
    assert list(source.names) == monitor.numeric_names
    registry = CollectorRegistry()
    feed = DriftFeed(monitor, _Failing(source), DriftGauges(registry, "three", "1"))  # type: ignore[arg-type]

    runs = gather([_record([1, 2]), _record([-1, 3, 4]), _record([0])])
    assert len(runs) == 1  # one run: one update, which fails
    feed.on_runs(runs)

    assert monitor.current().rows == 3
    assert feed.failed_rows == 3
    text = generate_latest(registry).decode()
    assert 'modelplane_drift_failed_rows_total{model="three",version="1"} 3.0' in text


def test_text_numbers_reads_what_float_reads_and_nan_for_the_rest() -> None:
    from sidecar.drift import text_numbers

    values = np.array([b"1", b" 2.5 ", "3", b"7x", b"", None, b"inf"], dtype=object)
    got = text_numbers(values)
    assert got.tolist()[:3] == [1.0, 2.5, 3.0]
    assert np.isnan(got[3:6]).all() and got[6] == np.inf
    assert text_numbers(np.array([[b"1", b"x"]], dtype=object)).shape == (1, 2)


def _mixed_profile() -> Any:
    table = pa.table({"n": [0.0, 1.0, 2.0, 3.0] * 25, "colour": ["red", "blue"] * 50})
    return build_profile(table, ["n", "colour"])


def test_a_numeric_feature_given_as_text_counts_its_numbers_beside_categories() -> None:
    monitor = DriftMonitor(_mixed_profile())
    monitor.update(
        {
            "n": np.array([b"1", b"7x", b"2", b""], dtype=object),
            "colour": np.array([b"red", b"blue", b"red", b"red"], dtype=object),
        }
    )
    monitor.update(pa.table({"n": ["3", "x"], "colour": ["blue", "blue"]}))
    report = monitor.score(monitor.current())
    assert report.rows == 6
    assert report.feature("n").count == 3
    assert report.feature("n").missing_share == pytest.approx(3 / 6)
    assert report.feature("colour").count == 6


def test_an_update_that_cannot_be_read_counts_nothing() -> None:
    monitor = DriftMonitor(_mixed_profile())
    with pytest.raises(Exception):  # noqa: B017 - whatever Arrow raises on a struct column
        monitor.update({"n": [1.0, 2.0], "colour": [{"a": 1}, {"a": 2}]})
    monitor.update({"n": [1.0], "colour": ["red"]})
    report = monitor.score(monitor.current())
    assert report.rows == 1
    assert report.feature("n").count == 1
