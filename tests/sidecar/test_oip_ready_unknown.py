"""ModelReady for a model or version the sidecar does not serve answers ``ready: false``, as
Triton does, so that tritonclient's ``is_model_ready`` returns False instead of
raising (a loop polling for a version still to come keeps polling); ModelMetadata and
ModelInfer still answer NOT_FOUND. Standalone through tritonclient, managed through the stubs.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest
from control_plane_double import FakeControlPlane, state
from sidecar_helpers import PYTHON, managed_request, stub

from modelplane.errors import error_info
from modelplane.oip import grpc_service_pb2 as pb

# tritonclient registers the inference.* messages under its own file name, so it runs in a
# process of its own (see triton_client.py).
READY_SCRIPT = """
import json, sys
import tritonclient.grpc as tc

client = tc.InferenceServerClient(sys.argv[1])
answers = []
for name, version in json.loads(sys.argv[2]):
    try:
        answers.append(client.is_model_ready(name, version))
    except tc.InferenceServerException as exc:
        answers.append(f"raised {exc.status()} {exc.message()}")
polls = 0
while not client.is_model_ready("id_fp32", "2") and polls < 3:
    polls += 1
answers.append(polls)
client.close()
print(json.dumps(answers))
"""


def _is_model_ready(address: str, queries: list[tuple[str, str]]) -> list[Any]:
    result = subprocess.run(
        [PYTHON, "-c", READY_SCRIPT, address, json.dumps(queries)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_tritonclient_is_model_ready_is_false_for_a_model_or_version_not_served(
    model_dir: Path, sidecar_factory: Any
) -> None:
    handle = sidecar_factory(model_dir / "id_fp32.onnx")
    answers = _is_model_ready(
        handle.address,
        [("id_fp32", ""), ("id_fp32", "1"), ("id_fp32", "2"), ("other", ""), ("other", "1")],
    )
    # The last answer counts the polls of `while not is_model_ready("id_fp32", "2")`.
    assert answers == [True, True, False, False, False, 3]
    s = stub(handle.port)
    for name, version in (("id_fp32", "2"), ("other", "")):
        with pytest.raises(grpc.RpcError) as caught:
            s.ModelMetadata(pb.ModelMetadataRequest(name=name, version=version), timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        info = error_info(caught.value)
        assert info is not None
        assert info.reason == ("MODEL_VERSION_NOT_FOUND" if version else "MODEL_NOT_FOUND")


def test_a_managed_sidecar_answers_not_ready_for_a_version_not_loaded(
    managed: Any, plane: FakeControlPlane, artifacts: dict[int, bytes]
) -> None:
    handle = managed()
    s = stub(handle.port)
    # Before its first champion loads, nothing is ready.
    assert not s.ModelReady(pb.ModelReadyRequest(name="fraud"), timeout=10).ready
    plane.push(state("fraud", 1, plane.versions(artifacts, 1), champion=1))
    assert handle.wait_ready(60)
    ready = [
        s.ModelReady(pb.ModelReadyRequest(name=name, version=version), timeout=10).ready
        for name, version in (("fraud", ""), ("fraud", "1"), ("fraud", "2"), ("other", ""))
    ]
    assert ready == [True, True, False, False]
    with pytest.raises(grpc.RpcError) as caught:
        s.ModelInfer(managed_request("fraud", model_version="2"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    info = error_info(caught.value)
    assert info is not None and info.reason == "MODEL_VERSION_NOT_FOUND"
