"""Policy mutations retried with the same request_id (AIP-155) answer what they answered the
first time, even after the policy has moved on."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from modelplane import Client
from modelplane.errors import NotFound
from modelplane.v1.governance_pb2 import Policy
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane


def test_a_retried_policy_mutation_answers_the_revision_it_made(client: Client) -> None:
    policy, target = unique("p"), unique("prod")
    create_id, update_id = str(uuid.uuid4()), str(uuid.uuid4())
    created = client.create_policy(policy, target=target, rules=["true"], request_id=create_id)
    updated = client.update_policy(
        policy, etag=created.etag, rules=["metrics.roc_auc >= 0.9"], request_id=update_id
    )
    latest = client.update_policy(policy, etag=updated.etag, description="later change")
    assert latest.revision == 2  # a description change keeps the revision

    again = client.create_policy(policy, target=target, rules=["true"], request_id=create_id)
    assert again == created
    again = client.update_policy(
        policy, etag=created.etag, rules=["metrics.roc_auc >= 0.9"], request_id=update_id
    )
    assert again == updated
    assert client.get_policy(policy) == latest  # nothing changed

    client.delete_policy(policy, etag=latest.etag)
    with pytest.raises(NotFound) as err:
        client.update_policy(
            policy, etag=created.etag, rules=["metrics.roc_auc >= 0.9"], request_id=update_id
        )
    assert err.value.reason == "POLICY_NOT_FOUND"
    assert "revision 2" in err.value.message and "deleted since" in err.value.message


def test_blind_updates_racing_each_answer_their_own_revision_when_replayed(
    controlplane_any: RunningControlPlane,
) -> None:
    """Concurrent blind updates wait for the policy's lock; each, replayed under its request
    id, answers the revision it made. Before, a waiting update kept the time it had taken
    before the lock, so a later revision could carry an earlier time than the one before it,
    and a replay (which finds its revision by time) answered another caller's rules."""
    policy = unique("p")
    with controlplane_any.client(principal="ops-admin") as admin:
        admin.create_policy(policy, target=unique("prod"), rules=["true"])
        answers: list[tuple[str, list[str], Policy]] = []
        lock = threading.Lock()

        def update(worker: int) -> None:
            with controlplane_any.client(principal="ops-admin") as c:
                for k in range(10):
                    request_id = str(uuid.uuid4())
                    rules = [f"metrics.roc_auc >= 0.{worker}{k:02d}"]
                    got = c.update_policy(policy, rules=rules, request_id=request_id)
                    with lock:
                        answers.append((request_id, rules, got))

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(update, range(8)))
        assert sorted(a.revision for _, _, a in answers) == list(range(2, 82))
        for request_id, rules, answered in answers:
            assert answered.rules == rules
            again = admin.update_policy(policy, rules=rules, request_id=request_id)
            assert (again.revision, again.rules, again.etag) == (
                answered.revision,
                rules,
                answered.etag,
            )
        assert admin.get_policy(policy).revision == 81  # the replays changed nothing
