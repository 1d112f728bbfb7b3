"""tritonclient, unchanged, against the sidecar: health, metadata and inference for many
datatypes and shapes, each answer equal to a direct ONNX Runtime call on the same input."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from sidecar_helpers import PYTHON

CLIENT = Path(__file__).with_name("triton_client.py")


def _direct(path: Path, feeds: dict[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    fixed = dict(feeds)
    for k, v in feeds.items():
        if v.dtype == object:
            fixed[k] = np.vectorize(lambda b: b.decode(), otypes=[object])(v)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, fixed), strict=True))


def test_tritonclient_round_trips(model_dir: Path, sidecar_factory: Any, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    cases: list[dict[str, Any]] = []
    expected: dict[str, dict[str, np.ndarray[Any, Any]]] = {}

    def add(model_file: str, feeds: dict[str, tuple[str, np.ndarray[Any, Any]]], outputs=None):
        path = model_dir / model_file
        handle = sidecar_factory(path, max_batch_size=8)
        case_id = f"case{len(cases)}"
        items = []
        for name, (datatype, array) in feeds.items():
            npy = tmp_path / f"{case_id}-in-{name}.npy"
            np.save(npy, array, allow_pickle=True)
            items.append({"name": name, "datatype": datatype, "npy": str(npy)})
        cases.append(
            {
                "address": handle.address,
                "model": path.stem,
                "inputs": items,
                "outputs": outputs,
                "id": case_id,
            }
        )
        direct = _direct(path, {k: v for k, (_, v) in feeds.items()})
        expected[case_id] = {k: direct[k] for k in (outputs or direct)}

    add("mlp.onnx", {"input": ("FP32", rng.standard_normal((5, 32)).astype(np.float32))})
    add("mlp.onnx", {"input": ("FP32", rng.standard_normal((1, 32)).astype(np.float32))})
    ints = {
        "INT8": np.int8,
        "INT16": np.int16,
        "INT32": np.int32,
        "INT64": np.int64,
        "UINT8": np.uint8,
        "UINT16": np.uint16,
        "UINT32": np.uint32,
        "UINT64": np.uint64,
    }
    for dt, np_type in ints.items():
        info = np.iinfo(np_type)
        values = rng.integers(info.min, info.max, size=(4, 3), dtype=np_type, endpoint=True)
        add(f"id_{dt.lower()}.onnx", {"x": (dt, values)})
    add("id_fp16.onnx", {"x": ("FP16", rng.standard_normal((2, 3)).astype(np.float16))})
    add("id_fp64.onnx", {"x": ("FP64", rng.standard_normal((6, 3)))})
    add("id_bool.onnx", {"x": ("BOOL", rng.random((3, 3)) > 0.5)})
    words = np.array([[b"alpha", b"", "\u00e9t\u00e9".encode()], [b"x" * 300, b"b", b"c"]])
    add("id_bytes.onnx", {"x": ("BYTES", words.astype(object))})
    two = {
        "a": ("FP32", rng.standard_normal((3, 4)).astype(np.float32)),
        "b": ("INT64", rng.integers(-1000, 1000, (3, 2))),
    }
    add("two.onnx", two, outputs=["square"])
    add("two.onnx", two, outputs=["square", "total"])
    add("two.onnx", two)

    spec = tmp_path / "cases.json"
    spec.write_text(json.dumps(cases))
    run = subprocess.run(
        [PYTHON, str(CLIENT), str(spec)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout)
    assert len(results) == len(cases)
    for case, result in zip(cases, results, strict=True):
        assert result["live"] and result["ready"] and result["model_ready"]
        assert result["metadata"]["name"] == case["model"]
        assert "error" not in result, result
        assert result["id"] == case["id"]
        want = expected[case["id"]]
        assert result["outputs"] == list(want), case
        for name, array in want.items():
            got = np.load(tmp_path / f"{case['id']}-{name}.npy", allow_pickle=True)
            if array.dtype == object:
                got = np.vectorize(lambda b: b.decode(), otypes=[object])(got)
            assert got.shape == array.shape, (case["id"], name)
            assert got.dtype == array.dtype, (case["id"], name)
            np.testing.assert_array_equal(got, array, err_msg=f"{case['id']} {name}")


def test_tritonclient_sees_not_found_for_unknown_version(
    model_dir: Path, sidecar_factory: Any, tmp_path: Path
) -> None:
    handle = sidecar_factory(model_dir / "id_int32.onnx")
    np.save(tmp_path / "x.npy", np.zeros((1, 3), np.int32))
    script = (
        "import numpy as np, tritonclient.grpc as tc\n"
        f"c = tc.InferenceServerClient('{handle.address}')\n"
        "i = tc.InferInput('x', [1, 3], 'INT32')\n"
        "i.set_data_from_numpy(np.zeros((1, 3), np.int32))\n"
        "for kw in ({'model_name': 'id_int32', 'model_version': '9'}, {'model_name': 'nope'}):\n"
        "    try:\n"
        "        c.infer(inputs=[i], **kw)\n"
        "    except tc.InferenceServerException as e:\n"
        "        print(e.status())\n"
    )
    run = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.stdout.split() == ["StatusCode.NOT_FOUND", "StatusCode.NOT_FOUND"], run.stderr
