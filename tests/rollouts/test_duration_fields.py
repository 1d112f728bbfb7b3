"""Duration fields of deployments and rollouts (``rollout.step_duration``,
``drift_thresholds.cooldown``) through a real control plane (gRPC on loopback): a malformed
google.protobuf.Duration (nanos past ±999,999,999, or of the other sign than seconds) and a
positive one shorter than the microsecond the control plane keeps are refused with
INVALID_DURATION naming the field, and nothing is written; well-formed ones read back as
sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from google.protobuf import duration_pb2, field_mask_pb2

from controlplane.api.deployments_converters import duration
from modelplane import Client
from modelplane.errors import InvalidArgument
from modelplane.v1 import deployments_pb2 as pb
from tests.controlplane.test_deployments_api import deployed

pytestmark = pytest.mark.timeout(120)

#: (seconds, nanos) that no Duration may hold, or that would read back as 0 (the default).
REFUSED = [
    pytest.param(1, -999_999_999, id="nanos-against-positive-seconds"),
    pytest.param(-1, 5, id="nanos-against-negative-seconds"),
    pytest.param(0, 2_000_000_000, id="nanos-past-a-second"),
    pytest.param(0, -1_000_000_000, id="nanos-past-minus-a-second"),
    pytest.param(0, 1, id="one-nanosecond"),
    pytest.param(0, 999, id="under-a-microsecond"),
]


def _start(c: Client, dep: str, candidate: int, seconds: int, nanos: int) -> Any:
    rollout = pb.Rollout(
        candidate_version=candidate,
        strategy=pb.ROLLOUT_STRATEGY_CANARY,
        step_duration=duration_pb2.Duration(seconds=seconds, nanos=nanos),
    )
    request = pb.StartRolloutRequest(name=f"deployments/{dep}", rollout=rollout)
    return c._call(c.deployments.StartRollout, request)


def _set_cooldown(c: Client, dep: str, seconds: int, nanos: int) -> Any:
    thresholds = pb.DriftThresholds(
        max_psi=0.2, cooldown=duration_pb2.Duration(seconds=seconds, nanos=nanos)
    )
    request = pb.UpdateDeploymentRequest(
        deployment=pb.Deployment(name=f"deployments/{dep}", drift_thresholds=thresholds),
        update_mask=field_mask_pb2.FieldMask(paths=["drift_thresholds"]),
    )
    return c._call(c.deployments.UpdateDeployment, request)


def _refused(err: pytest.ExceptionInfo[InvalidArgument], field: str) -> None:
    assert err.value.reason == "INVALID_DURATION", err.value
    assert err.value.metadata.get("field") == field, err.value.metadata
    assert err.value.message.startswith(field), err.value.message


@pytest.mark.parametrize(("seconds", "nanos"), REFUSED)
def test_a_bad_step_duration_is_refused_and_starts_nothing(
    c: Client, tmp_path: Path, seconds: int, nanos: int
) -> None:
    dep, versions = deployed(c, tmp_path)
    with pytest.raises(InvalidArgument) as err:
        _start(c, dep, versions[1], seconds, nanos)
    _refused(err, "rollout.step_duration")
    assert not c.get_deployment(dep).HasField("rollout")


@pytest.mark.parametrize(("seconds", "nanos"), REFUSED)
def test_a_bad_drift_cooldown_is_refused_and_changes_nothing(
    c: Client, tmp_path: Path, seconds: int, nanos: int
) -> None:
    dep, _ = deployed(c, tmp_path)
    before = c.get_deployment(dep)
    with pytest.raises(InvalidArgument) as err:
        _set_cooldown(c, dep, seconds, nanos)
    _refused(err, "drift_thresholds.cooldown")
    assert c.get_deployment(dep).etag == before.etag


@pytest.mark.parametrize(
    ("seconds", "nanos", "shown"),
    [
        (0, 1_000, duration_pb2.Duration(nanos=1_000)),
        (0, 500_000_000, duration_pb2.Duration(nanos=500_000_000)),
        (1, 999_999_000, duration_pb2.Duration(seconds=1, nanos=999_999_000)),
        (0, 0, duration_pb2.Duration(seconds=60)),
    ],
)
def test_well_formed_step_durations_read_back_as_sent(
    c: Client, tmp_path: Path, seconds: int, nanos: int, shown: duration_pb2.Duration
) -> None:
    dep, versions = deployed(c, tmp_path)
    assert _start(c, dep, versions[1], seconds, nanos).rollout.step_duration == shown
    assert c.get_deployment(dep).rollout.step_duration == shown


def test_a_well_formed_cooldown_reads_back_as_sent(c: Client, tmp_path: Path) -> None:
    dep, _ = deployed(c, tmp_path)
    updated = _set_cooldown(c, dep, 2, 500_000_000)
    assert updated.drift_thresholds.cooldown == duration_pb2.Duration(seconds=2, nanos=500_000_000)


def test_a_positive_duration_stored_under_a_microsecond_is_served_as_one() -> None:
    # Stored before such were refused: 0 would read as "the default".
    assert duration(1e-9) == duration_pb2.Duration(nanos=1_000)
    assert duration(0.0) == duration_pb2.Duration()


def test_the_sdk_sends_a_duration_to_the_nanosecond(c: Client, tmp_path: Path) -> None:
    """A step duration of 1 ns is refused, not sent as 0 (the default, 60 s)."""
    dep, versions = deployed(c, tmp_path)
    with pytest.raises(InvalidArgument) as err:
        c.start_rollout(dep, versions[1], steps=[50, 100], step_duration=1e-9)
    _refused(err, "rollout.step_duration")
    started = c.start_rollout(dep, versions[1], steps=[50, 100], step_duration=0.0015)
    assert started.rollout.step_duration == duration_pb2.Duration(nanos=1_500_000)


def test_a_malformed_wait_timeout_is_named(c: Client) -> None:
    from modelplane.v1 import operations_pb2

    request = operations_pb2.WaitOperationRequest(
        name="operations/none", timeout=duration_pb2.Duration(seconds=1, nanos=-5)
    )
    with pytest.raises(InvalidArgument) as err:
        c._call(c.operations.WaitOperation, request)
    _refused(err, "timeout")
