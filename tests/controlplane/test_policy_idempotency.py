"""Policy mutations retried with the same request_id (AIP-155) answer what they answered the
first time, even after the policy has moved on."""

from __future__ import annotations

import uuid

import pytest

from modelplane import Client
from modelplane.errors import NotFound
from tests.conftest import unique


def test_a_retried_policy_mutation_answers_the_revision_it_made(client: Client) -> None:
    policy, target = unique("p"), unique("prod")
    create_id, update_id = str(uuid.uuid4()), str(uuid.uuid4())
    created = client.create_policy(policy, target=target, rules=["true"], request_id=create_id)
    updated = client.update_policy(
        policy, etag=created.etag, rules=["metrics.roc_auc >= 0.9"], request_id=update_id
    )
    latest = client.update_policy(policy, etag=updated.etag, description="later change")
    assert latest.revision == 3

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
