"""Version states: nothing makes a version APPROVED or REJECTED (approvals and gate decisions
are made per target), so a list filter on those states is refused rather than matching none;
archiving an archived version changes nothing but still checks the etag it is given."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from modelplane import Client
from modelplane.errors import Aborted, InvalidArgument
from modelplane.testing import onnx_models
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane


@pytest.mark.parametrize(
    "term", ["state=APPROVED", "state=REJECTED", "state=version_state_approved", "state=rejected"]
)
def test_a_filter_on_a_state_nothing_sets_is_refused_saying_what_to_use(
    client: Client, term: str
) -> None:
    model_id = unique()
    client.create_model(model_id)
    with pytest.raises(InvalidArgument) as err:
        list(client.list_versions(model_id, filter=term))
    assert err.value.reason == "INVALID_FILTER"
    message = err.value.message
    assert "per target" in message and "ListApprovals" in message and "ListGateDecisions" in message


def test_an_approved_or_rejected_version_stays_registered_and_filters_as_such(
    controlplane: RunningControlPlane, client: Client, tmp_path: Path
) -> None:
    model_id = unique()
    client.create_model(model_id)
    onnx = onnx_models.save(onnx_models.mlp(4), tmp_path / "m.onnx")
    for _ in range(3):
        client.register_version(model_id, onnx, capture_env=False)
    client.create_policy(unique("p"), target="production", rules=["true"])
    with controlplane.client("bob") as bob:  # another person than the author
        bob.approve(model_id, 1, "production")
        bob.approve(model_id, 2, "production", decision="reject")
    client.archive_version(model_id, 3)
    registered = client.list_versions(model_id, filter="state=REGISTERED")
    assert [v.version for v in registered] == [2, 1]
    assert [v.version for v in client.list_versions(model_id, filter="state=ARCHIVED")] == [3]


def test_archiving_an_archived_version_still_refuses_a_stale_etag(
    controlplane_any: RunningControlPlane, tmp_path: Path
) -> None:
    with controlplane_any.client() as c:
        model_id = unique()
        c.create_model(model_id)
        registered = c.register_version(
            model_id, onnx_models.save(onnx_models.mlp(4), tmp_path / "m.onnx"), capture_env=False
        )
        request_id = str(uuid.uuid4())
        archived = c.archive_version(model_id, 1, etag=registered.etag, request_id=request_id)
        for etag in (registered.etag, "bogus"):
            with pytest.raises(Aborted) as err:
                c.archive_version(model_id, 1, etag=etag)
            assert err.value.reason == "ETAG_MISMATCH"
        assert c.archive_version(model_id, 1, etag=archived.etag) == archived
        assert c.archive_version(model_id, 1) == archived
        # A retry of the request that archived it replays, with the etag it was sent with.
        again = c.archive_version(model_id, 1, etag=registered.etag, request_id=request_id)
        assert again == archived
