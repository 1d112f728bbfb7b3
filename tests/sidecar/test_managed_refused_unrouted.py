"""Requests refused before routing (a bad routing_key, an unknown model name or version) were
answered by no version: they count in the request metrics but in no arm of the window
reports, where they would pass for the champion's traffic (in a 100% step the champion
answers nothing, and the rollout guards compare the candidate with it)."""

from __future__ import annotations

import time
import urllib.request
from typing import Any

import grpc
import pytest
from real_plane import RealPlane, real_managed, real_plane  # noqa: F401
from sidecar_helpers import managed_request, stub

NAME = "fraud"


def _refused(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


def test_requests_refused_before_routing_are_in_no_arm(
    real_managed: Any,  # noqa: F811
    real_plane: RealPlane,  # noqa: F811
    artifacts: Any,
) -> None:
    plane = real_plane
    plane.deploy({n: artifacts[n] for n in (1, 2)})
    plane.canary(2, 100.0)
    h = real_managed(metrics_listen="127.0.0.1:0")
    assert h.wait_ready(60)
    s = stub(h.port)
    refused = []
    for i in range(10):
        bad_key = managed_request(NAME, id=f"key{i}")
        bad_key.parameters["routing_key"].bool_param = True
        refused.append(_refused(lambda r=bad_key: s.ModelInfer(r)))
        other = managed_request("other", id=f"name{i}")
        refused.append(_refused(lambda r=other: s.ModelInfer(r)))
        unknown = managed_request(NAME, id=f"version{i}", model_version="9")
        refused.append(_refused(lambda r=unknown: s.ModelInfer(r)))
    assert set(refused) == {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
    # Answered after the refusals: once their records are reported, so would the refusals'.
    for i in range(20):
        assert s.ModelInfer(managed_request(NAME, id=f"ok{i}")).model_version == "2"

    def requests(arm: str) -> int:
        """Requests of ``arm`` in the reports the control plane stored."""
        return sum(a.requests for r in plane.reports for a in r.arms if a.arm == arm)

    deadline = time.monotonic() + 30
    while requests("candidate") < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert requests("candidate") == 20
    assert requests("champion") == 0
    errors = sum(a.errors for r in plane.reports for a in r.arms)
    assert errors == 0
    # Still counted (under the champion's series) in the request metrics.
    text = urllib.request.urlopen(f"http://127.0.0.1:{h.metrics_port}/metrics").read().decode()
    counted = {
        line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("modelplane_inference_requests_total{")
    }
    champion = {k: v for k, v in counted.items() if 'version="1"' in k}
    assert sum(v for k, v in champion.items() if 'code="INVALID_ARGUMENT"' in k) == 10
    assert sum(v for k, v in champion.items() if 'code="NOT_FOUND"' in k) == 20
