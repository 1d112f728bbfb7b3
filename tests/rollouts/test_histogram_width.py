"""A histogram whose range is finite but whose buckets' width is not (``high - low`` past the
largest double) is refused, through a real control plane (gRPC on loopback, SQLite): its
quantiles would be infinite, and stored evidence is JSON, which has none."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelplane import Client
from modelplane.errors import InvalidArgument
from modelplane.v1 import deployments_pb2 as pb
from tests.controlplane.test_deployments_api import arm, deployed

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("low", "high", "buckets"),
    [(-1e308, 1e308, 2), (-1.7e308, 1.7e308, 1), (0.0, 5e-324, 2)],
)
def test_a_latency_histogram_without_a_finite_bucket_width_is_refused(
    c: Client, tmp_path: Path, low: float, high: float, buckets: int
) -> None:
    dep, versions = deployed(c, tmp_path)
    d = c.start_rollout(dep, versions[1], steps=[50, 100], step_duration=3600, min_requests=10)
    wide = pb.Histogram(low=low, high=high, counts=[50] * buckets)
    candidate = pb.ArmSummary(
        arm="candidate", version=versions[1], requests=50 * buckets, rows=50 * buckets, latency=wide
    )
    request = pb.ReportWindowRequest(
        name=d.name,
        replica="pod-a",
        sequence=1,
        generation=d.generation,
        rollout_id=d.rollout.id,
        arms=[arm("champion", versions[0], 100), candidate],
    )
    with pytest.raises(InvalidArgument) as err:
        c._call(c.deployments.ReportWindow, request)
    assert err.value.reason == "INVALID_HISTOGRAM"
    assert err.value.metadata["field"] == "candidate.latency"
    assert "width" in err.value.message
    assert not c.get_deployment(dep).rollout.evidence.candidate.requests
