"""Registration refuses a train dataset whose baseline would profile a feature the model's
inputs do not provide, for every input signature: a managed sidecar could never monitor such
a version's drift. The registry finds a model's input columns by the sidecar's own rule."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from onnx import TensorProto, helper

from controlplane.artifacts import inspect_onnx
from controlplane.services.versions import input_columns
from modelplane import Client
from modelplane.errors import InvalidArgument
from sidecar.driftfeed import column_names
from sidecar.observing import feature_names
from sidecar.signature import signature_of
from tests.conftest import unique

Dim = int | str


def _model(inputs: list[tuple[str, list[Dim]]]) -> bytes:
    """An ONNX model answering each FP32 input unchanged."""
    nodes, ins, outs = [], [], []
    for name, shape in inputs:
        nodes.append(helper.make_node("Identity", [name], [f"{name}_out"]))
        ins.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
        outs.append(helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, shape))
    graph = helper.make_graph(nodes, "inputs", ins, outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


SIGNATURES: dict[str, tuple[list[tuple[str, list[Dim]]], list[str]]] = {
    "one matrix named by the profile": ([("input", ["N", 3])], ["p", "q", "r"]),
    "one matrix, profile of another width": ([("input", ["N", 3])], ["p", "q"]),
    "one matrix of a fixed batch": ([("input", [1, 3])], ["p", "q", "r"]),
    "vectors": ([("a", ["N"]), ("b", ["N"])], ["a", "b", "customer_id"]),
    "a matrix and a vector": ([("m", ["N", 2]), ("c", ["N"])], ["m_0", "x_0", "c"]),
    "two matrices": ([("m", ["N", 2]), ("n", ["N", 2])], ["m_0", "n_1", "x_0"]),
    "a matrix of varying width": ([("w", ["N", "F"])], ["w", "x_0"]),
    "an image": ([("img", ["N", 2, 2])], ["img", "x_0"]),
    "a matrix named by the profile, and a vector": (
        [("m", ["N", 2]), ("v", ["N"])],
        ["p", "q"],
    ),
}


@pytest.mark.parametrize("case", list(SIGNATURES))
def test_the_registry_reads_the_columns_the_sidecar_reads(case: str) -> None:
    inputs, profiled = SIGNATURES[case]
    data = _model(inputs)
    _, registry_signature = inspect_onnx(data, "0" * 64)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    sidecar_signature = signature_of(session)
    names = feature_names(
        SimpleNamespace(feature_names=None),  # type: ignore[arg-type]
        sidecar_signature,
        SimpleNamespace(feature_names=profiled),  # type: ignore[arg-type]
    )
    sidecar = list(column_names(sidecar_signature, names))
    assert input_columns(registry_signature, profiled) == sidecar


def _train(folder: Path, columns: list[str]) -> Path:
    rng = np.random.default_rng(0)
    table: dict[str, Any] = {n: rng.normal(size=200) for n in columns}
    table["label"] = rng.integers(0, 2, 200)
    path = folder / "train.parquet"
    pq.write_table(pa.table(table), path)
    return path


def _register_with_train(
    client: Client, tmp_path: Path, inputs: list[tuple[str, list[Dim]]]
) -> Any:
    """A new model's version of an identity model of ``inputs``, trained on columns a and b."""
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(_model(inputs))
    model_id = unique()
    client.create_model(model_id)
    return client.register_version(
        model_id,
        onnx_path,
        datasets={"train": _train(tmp_path, ["a", "b"])},
        label="label",
        capture_env=False,
    )


def test_a_train_column_the_model_does_not_take_is_refused(client: Client, tmp_path: Path) -> None:
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(_model([("a", ["N"]), ("b", ["N"])]))
    onnx.checker.check_model(str(onnx_path))
    train = _train(tmp_path, ["a", "b", "customer_id"])
    model_id = unique()
    client.create_model(model_id)
    with pytest.raises(InvalidArgument) as err:
        client.register_version(
            model_id, onnx_path, datasets={"train": train}, label="label", capture_env=False
        )
    assert err.value.reason == "BASELINE_MISMATCH"
    assert "'customer_id'" in err.value.message and "'a', 'b'" in err.value.message
    assert "--label" in err.value.message and "--feature-names" in err.value.message
    assert client.get_model(model_id).latest_version == 0
    # Naming the model's features leaves the column out of the profile.
    v = client.register_version(
        model_id,
        onnx_path,
        datasets={"train": train},
        label="label",
        feature_names=["a", "b"],
        capture_env=False,
    )
    assert v.baseline.feature_count == 2
    # So does a train dataset without it.
    v = client.register_version(
        model_id,
        onnx_path,
        datasets={"train": _train(tmp_path, ["a", "b"])},
        label="label",
        capture_env=False,
    )
    assert v.baseline.feature_count == 2


def test_one_column_inputs_are_profiled_under_their_own_names(
    client: Client, tmp_path: Path
) -> None:
    """A pipeline converted by skl2onnx takes each column as its own ``[None, 1]`` input.
    Before, the registry (and the sidecar) named those columns ``a_0`` and ``b_0`` only, so a
    train dataset with the inputs' names was refused (BASELINE_MISMATCH) and such a model could
    get no baseline; ``a_0`` still names the same column."""
    inputs: list[tuple[str, list[Dim]]] = [("a", ["N", 1]), ("b", ["N", 1])]
    v = _register_with_train(client, tmp_path, inputs)
    assert v.baseline.feature_count == 2
    signature = signature_of(ort.InferenceSession(_model(inputs)))
    assert column_names(signature, None) == {
        "a": ("a", 0),
        "a_0": ("a", 0),
        "b": ("b", 0),
        "b_0": ("b", 0),
    }


@pytest.mark.parametrize(
    "inputs",
    [[("image", ["N", 3, 8, 8])], [("x", ["N", "F"])]],
    ids=["image", "dynamic-width"],
)
def test_a_model_without_feature_columns_registers_its_train_dataset_without_a_baseline(
    client: Client, tmp_path: Path, inputs: list[tuple[str, list[Dim]]]
) -> None:
    """No input is a column or a fixed-width table: drift cannot be watched on the model, so
    the train dataset is lineage only (no baseline), not a reason to refuse the version."""
    v = _register_with_train(client, tmp_path, inputs)
    assert [d.role for d in v.lineage.datasets] == ["train"]
    assert not v.HasField("baseline") or not v.baseline.sha256


def test_the_sidecar_feeds_one_column_inputs_to_features_of_their_names(tmp_path: Path) -> None:
    """The same rule on the sidecar's side: a baseline of ``a`` and ``b`` is fed from the
    ``[None, 1]`` inputs ``a`` and ``b`` (before, BASELINE_MISMATCH at start)."""
    from modelplane.profiles import build_profile
    from sidecar.drift import DriftMonitor
    from sidecar.driftfeed import FeatureSource

    signature = signature_of(ort.InferenceSession(_model([("a", ["N", 1]), ("b", ["N", 1])])))
    rng = np.random.default_rng(1)
    table = pa.table({"a": rng.normal(size=100), "b": rng.normal(size=100)})
    profile = build_profile(table, ["a", "b"])
    monitor = DriftMonitor(profile)
    source = FeatureSource.plan(signature, profile, None, monitor.numeric_names)
    assert source.sources == (("a", 0), ("b", 0))
    rows = source.extract({"a": np.ones((4, 1), np.float32), "b": np.zeros((4, 1), np.float32)})
    assert np.asarray(rows).tolist() == [[1.0, 0.0]] * 4
