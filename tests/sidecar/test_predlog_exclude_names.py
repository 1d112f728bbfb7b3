"""``--log-exclude-features`` names must each be an input or a feature column of the model:
a misspelt one (which would leave the personal data it meant in the log) is refused at
start-up. Real sidecars, through the CLI and in process, on real ONNX models."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sidecar_helpers import PYTHON, ROOT, raw_request, stub

from modelplane.errors import InvalidArgument
from modelplane.testing import onnx_models
from sidecar.predlog import PredictionLogSettings, read_logs

NAMES = [f"f{i}" for i in range(32)]


def _serve(model: Path, log_dir: Path, exclude: str) -> tuple[int, list[str]]:
    """Start `modelplane sidecar serve` and return its exit code and stderr lines, failing
    if it gets ready instead."""
    proc = subprocess.Popen(
        [
            *(PYTHON, "-m", "modelplane.cli", "sidecar", "serve", "--model", str(model)),
            *("--listen", "127.0.0.1:0", "--device", "cpu", "--log-dir", str(log_dir)),
            *("--feature-names", ",".join(NAMES), "--log-exclude-features", exclude),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline()
    if line:
        proc.kill()
        proc.wait(30)
        pytest.fail(f"the sidecar started: {line}")
    code = proc.wait(60)
    return code, proc.stderr.read().splitlines()


def test_a_misspelt_name_is_refused_at_start_with_the_names_it_could_be(
    model_dir: Path, tmp_path: Path
) -> None:
    code, lines = _serve(model_dir / "mlp.onnx", tmp_path / "log", "f3,f77,inptu")
    # A usage error: the argument names what the model does not have.
    assert code == 2
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1
    error = errors[0]
    assert "UNKNOWN_EXCLUDED_FEATURE" in error
    assert "'f77' or 'inptu'" in error and "'f3'" not in error.split("named")[1].split(";")[0]
    assert "did you mean" in error and "'input'" in error and "'f7'" in error
    assert "it has: input, f0, f1, f2" in error
    assert not (tmp_path / "log").exists() or not any((tmp_path / "log").rglob("*.arrows"))


@pytest.mark.parametrize(("durability", "mode"), [("async", "process"), ("sync", "thread")])
def test_unknown_names_are_refused_in_process_in_every_mode(
    model_dir: Path, sidecar_factory: Any, tmp_path: Path, durability: str, mode: str
) -> None:
    with pytest.raises(InvalidArgument) as err:
        sidecar_factory(
            model_dir / "mlp.onnx",
            log_settings=PredictionLogSettings(
                dir=tmp_path / "log", durability=durability, exclude_features=("x_3",)
            ),
            feature_names=tuple(NAMES),
            observer_mode=mode,
        )
    assert err.value.reason == "UNKNOWN_EXCLUDED_FEATURE"
    assert "'x_3'" in err.value.message


def test_inputs_feature_names_and_default_columns_are_all_known(
    model_dir: Path, sidecar_factory: Any, tmp_path: Path
) -> None:
    # A whole input, and a named feature column.
    named = sidecar_factory(
        model_dir / "two.onnx",
        log_settings=PredictionLogSettings(dir=tmp_path / "a", exclude_features=("b", "a_2")),
    )
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.ones((2, 2), np.int64)
    request = raw_request("two", {"a": ("FP32", a), "b": ("INT64", b)}, id="r")
    stub(named.port).ModelInfer(request, timeout=10)
    # Default x_j columns, also past the width the start-up check saw for a [-1, -1] input.
    free = onnx_models.save(onnx_models.identity_model("FP32", ["n", "m"]), tmp_path / "f.onnx")
    wide = sidecar_factory(
        free, log_settings=PredictionLogSettings(dir=tmp_path / "b", exclude_features=("x_5",))
    )
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    stub(wide.port).ModelInfer(raw_request("f", {"x": ("FP32", x)}, id="w"), timeout=10)
    named.stop(0)
    wide.stop(0)
    first = read_logs(tmp_path / "a")
    assert {"a_0", "a_1", "a_3"} <= set(first.column_names)
    assert "a_2" not in first.column_names and "b" not in first.column_names
    second = read_logs(tmp_path / "b")
    assert [f"x_{j}" for j in range(5)] == [c for c in second.column_names if c.startswith("x_")]


def test_names_follow_the_columns_records_have_beside_a_side_input(
    sidecar_factory: Any, tmp_path: Path
) -> None:
    # Records carry q alone (k is no row input), so q's columns are x_0, x_1.
    model = onnx_models.save(onnx_models.query_key(), tmp_path / "qk.onnx")
    with pytest.raises(InvalidArgument) as err:
        sidecar_factory(
            model, log_settings=PredictionLogSettings(dir=tmp_path / "a", exclude_features=("q_1",))
        )
    assert "'q_1'" in err.value.message and "it has: q, x_0, x_1, k" in err.value.message
    handle = sidecar_factory(
        model,
        log_settings=PredictionLogSettings(dir=tmp_path / "b", exclude_features=("x_1", "k")),
    )
    q = np.arange(6, dtype=np.float32).reshape(3, 2)
    k = np.ones((4, 2), np.float32)
    request = raw_request("qk", {"q": ("FP32", q), "k": ("FP32", k)}, id="r")
    stub(handle.port).ModelInfer(request, timeout=10)
    handle.stop(0)
    table = read_logs(tmp_path / "b").sort_by("row")
    assert "x_1" not in table.column_names and table.column("x_0").to_pylist() == [0.0, 2.0, 4.0]
