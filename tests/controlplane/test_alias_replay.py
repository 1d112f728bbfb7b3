"""SetAlias retried under its request id (AIP-155): the alias as the first request set it while
it stands (moved since or not), NOT_FOUND once it was deleted, even if it was set again since,
and the retry changes nothing either way."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from modelplane.errors import NotFound
from tests.controlplane.conftest import RunningControlPlane
from tests.controlplane.test_request_id_reuse import versions


def test_a_retried_set_alias_after_the_alias_was_deleted_is_not_found(
    controlplane_any: RunningControlPlane, tmp_path: Path
) -> None:
    with controlplane_any.client("alice") as c, controlplane_any.client("bob") as bob:
        model_id, (v1, v2) = versions(c, tmp_path)
        request_id = str(uuid.uuid4())
        c.set_alias(model_id, "champion", v1, reason="first", request_id=request_id)
        bob.delete_alias(model_id, "champion", reason="retire")

        with pytest.raises(NotFound) as err:
            c.set_alias(model_id, "champion", v1, reason="first", request_id=request_id)
        assert err.value.reason == "ALIAS_NOT_FOUND"
        assert request_id in err.value.message
        assert list(c.list_aliases(model_id)) == []
        with pytest.raises(NotFound):
            c.get_alias(model_id, "champion")

        # Set again by someone else, to another version or to the same one: that is another
        # alias, which the retry neither answers nor changes.
        for version in (v2, v1):
            now = bob.set_alias(model_id, "champion", version, reason="again")
            with pytest.raises(NotFound) as err:
                c.set_alias(model_id, "champion", v1, reason="first", request_id=request_id)
            assert err.value.reason == "ALIAS_NOT_FOUND"
            assert c.get_alias(model_id, "champion") == now
        history = [e.reason for e in c.alias_history(model_id, "champion")]
        assert sorted(history) == ["again", "again", "first", "retire"]


def test_a_retried_set_alias_after_the_alias_moved_answers_it_as_first_set(
    controlplane_any: RunningControlPlane, tmp_path: Path
) -> None:
    with controlplane_any.client("alice") as c, controlplane_any.client("bob") as bob:
        model_id, (v1, v2) = versions(c, tmp_path)
        request_id = str(uuid.uuid4())
        first = c.set_alias(model_id, "champion", v1, reason="first", request_id=request_id)
        moved = bob.set_alias(model_id, "champion", v2, reason="moved")

        again = c.set_alias(model_id, "champion", v1, reason="first", request_id=request_id)
        assert again == first
        assert c.get_alias(model_id, "champion") == moved
