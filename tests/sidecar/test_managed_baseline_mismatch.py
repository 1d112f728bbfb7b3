"""A managed sidecar serves a version whose baseline profiles a feature the model's inputs do
not provide (a version registered before the registry checked this): the version serves with
drift monitoring off for it, says why once in its log and in the admin drift report, and
reports its windows without drift counts, instead of failing the desired state for ever."""

from __future__ import annotations

import functools
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pytest
from control_plane_double import FakeControlPlane, state
from sidecar_helpers import managed_request, stub

from modelplane.errors import error_info
from modelplane.profiles import build_profile
from modelplane.v1 import sidecar_pb2, sidecar_pb2_grpc

NAME = "fraud"
_request = functools.partial(managed_request, NAME)


def test_a_baseline_the_inputs_do_not_fit_leaves_the_version_served_without_drift(
    managed: Any, plane: FakeControlPlane, artifacts: dict
) -> None:
    rng = np.random.default_rng(0)
    # The model takes 8 features; the train dataset also had a customer_id column.
    columns = {f"f{j}": rng.standard_normal(500) for j in range(8)}
    columns["customer_id"] = np.arange(500, dtype=np.float64)
    profile = build_profile(pa.table(columns), list(columns), bins=5)
    baseline = plane.add_blob(profile.to_bytes())
    sha = plane.add_blob(artifacts[1])
    handle = managed()
    plane.push(state(NAME, 1, {1: (sha, len(artifacts[1]), baseline)}, champion=1))
    assert handle.wait_ready(60), handle.manager.last_error
    s = stub(handle.port)
    for i in range(5):
        assert s.ModelInfer(_request(rows=4, seed=i)).model_version == "1"
    champion = handle.manager.table.champion
    assert champion.drift is None and champion.window_drift is None
    assert "customer_id" in champion.drift_off
    assert handle.manager.unloaded == {}
    admin = sidecar_pb2_grpc.SidecarAdminServiceStub(grpc.insecure_channel(handle.address))
    with pytest.raises(grpc.RpcError) as err:
        admin.GetDriftReport(sidecar_pb2.GetDriftReportRequest())
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(err.value)
    assert info is not None and info.reason == "DRIFT_OFF"
    assert "customer_id" in (err.value.details() or "")
    assert "--baseline-label" not in (err.value.details() or "")
    reports = plane.wait_reports(
        lambda rs: sum(a.requests for r in rs for a in r.arms if a.arm == "champion") >= 5
    )
    assert all(not a.HasField("drift") for r in reports for a in r.arms)
    assert all(not r.unloaded_versions for r in reports)
