"""Bad input to the audit RPCs, and timestamps outside google.protobuf.Timestamp's range
anywhere they arrive: INVALID_ARGUMENT with a reason, never INTERNAL."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import grpc
import pytest

from modelplane import Client
from modelplane.errors import InvalidArgument, error_info
from modelplane.v1 import audit_pb2
from modelplane.v1 import deployments_pb2 as pb
from tests.controlplane.conftest import RunningControlPlane
from tests.controlplane.test_deployments_api import deployed

#: (seconds, nanos) outside the range: past 9999-12-31, before 0001-01-01, nanos out of range.
OUT_OF_RANGE = [(10**13, 0), (253_402_300_800, 0), (-62_135_596_801, 0), (0, -5), (0, 10**9)]


def _invalid(call: object, reason: str) -> grpc.RpcError:
    assert callable(call)
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    info = error_info(err.value)
    assert info is not None and info.reason == reason, info
    return err.value


@pytest.mark.parametrize(("seconds", "nanos"), OUT_OF_RANGE)
def test_list_audit_events_since_outside_the_timestamp_range(
    client: Client, seconds: int, nanos: int
) -> None:
    client.create_model("m")
    request = audit_pb2.ListAuditEventsRequest()
    request.since.seconds, request.since.nanos = seconds, nanos
    err = _invalid(
        lambda: client.audit.ListAuditEvents(request, metadata=client._metadata, timeout=10),
        "INVALID_TIMESTAMP",
    )
    info = error_info(err)
    assert info is not None and info.metadata["field"] == "since"


def test_list_audit_events_since_at_the_ends_of_the_range(client: Client) -> None:
    client.create_model("m")
    for seconds, expected in ((-62_135_596_800, True), (253_402_300_799, False)):
        request = audit_pb2.ListAuditEventsRequest()
        request.since.seconds = seconds
        got = client.audit.ListAuditEvents(request, metadata=client._metadata, timeout=10)
        assert bool(got.events) is expected


def test_window_report_times_outside_the_timestamp_range(
    controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    with controlplane.client() as c:
        dep, _ = deployed(c, tmp_path)
        generation = c.get_deployment(dep).generation
        for field in ("start_time", "end_time"):
            for seconds, nanos in OUT_OF_RANGE:
                request = pb.ReportWindowRequest(
                    name=f"deployments/{dep}", replica="r1", sequence=1, generation=generation
                )
                stamp = getattr(request, field)
                stamp.seconds, stamp.nanos = seconds, nanos
                err = _invalid(
                    lambda r=request: c.deployments.ReportWindow(
                        r, metadata=c._metadata, timeout=10
                    ),
                    "INVALID_TIMESTAMP",
                )
                info = error_info(err)
                assert info is not None and info.metadata["field"] == field


@pytest.mark.parametrize(
    "time", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+00:01"]
)
def test_checkpoint_times_past_the_calendar_in_utc_are_malformed(client: Client, time: str) -> None:
    client.create_model("m")
    checkpoint = client.create_checkpoint()
    checkpoint.time = time
    with pytest.raises(InvalidArgument) as err:
        client.verify_audit(checkpoint)
    assert err.value.reason == "INVALID_CHECKPOINT"


def test_a_checkpoint_signature_with_characters_outside_base64_is_invalid(client: Client) -> None:
    client.create_model("m")
    checkpoint = client.create_checkpoint()
    assert client.verify_audit(checkpoint).signature == "verified"
    # The same instant written with an offset is the same checkpoint.
    offset = audit_pb2.Checkpoint()
    offset.CopyFrom(checkpoint)
    offset.time = (
        datetime.fromisoformat(checkpoint.time).astimezone(timezone(timedelta(hours=2))).isoformat()
    )
    assert client.verify_audit(offset).signature == "verified"
    sig = checkpoint.signature
    for junk in (f"{sig}!!", f"{sig[:8]}*{sig[8:]}", f"{sig[:8]}\n{sig[8:]}", f"@{sig}"):
        tampered = audit_pb2.Checkpoint()
        tampered.CopyFrom(checkpoint)
        tampered.signature = junk
        got = client.verify_audit(tampered)
        assert got.signature == "invalid", junk
