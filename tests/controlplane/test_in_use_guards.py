"""What a deployment serves cannot be taken from under it.

DeleteModel (even with ``force``) is refused while a deployment serves the model, and
ArchiveModelVersion while a deployment serves the version as champion or as the candidate of a
rollout in progress: otherwise sidecars would be told to serve versions that are archived or
gone, or another model's should the id be reused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelplane import Client
from modelplane.errors import FailedPrecondition, NotFound
from modelplane.v1 import registry_pb2
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane
from tests.controlplane.test_deployments_api import register_versions

SLOW_CANARY: dict[str, Any] = {"strategy": "canary", "steps": [10, 50], "step_duration": 600}


def _served_sha(c: Client, deployment: str) -> list[str]:
    state = next(iter(c.watch_deployment(deployment)))
    return [v.artifact_sha256 for v in state.versions]


def test_delete_model_is_refused_while_a_deployment_serves_it(
    controlplane_any: RunningControlPlane, tmp_path: Path
) -> None:
    with controlplane_any.client() as c:
        model_id, versions = register_versions(c, tmp_path, 2)
        first, second = unique("d"), unique("d")
        c.create_deployment(first, model=model_id, champion_version=versions[0])
        c.create_deployment(second, model=model_id, champion_version=versions[0])
        c.start_rollout(second, versions[1], **SLOW_CANARY)
        served = _served_sha(c, first)

        for force in (False, True):
            with pytest.raises(FailedPrecondition) as err:
                c.delete_model(model_id, force=force)
            assert err.value.reason == "MODEL_HAS_DEPLOYMENTS"
            assert f"deployments/{first}" in err.value.message
            assert f"deployments/{second}" in err.value.message
            assert "delete those deployments first" in err.value.message
            assert err.value.metadata["deployments"] == ",".join(sorted([first, second]))

        # Nothing was deleted: the model, its versions and what the deployment serves stand.
        assert c.get_model(model_id).name == f"models/{model_id}"
        assert [int(v.version) for v in c.list_versions(model_id)] == sorted(versions, reverse=True)
        assert _served_sha(c, first) == served

        c.delete_deployment(first)
        c.abort_rollout(second)
        c.delete_deployment(second)
        c.delete_model(model_id, force=True)
        with pytest.raises(NotFound):
            c.get_model(model_id)


def test_archive_is_refused_for_a_champion_or_a_candidate_in_progress(
    controlplane_any: RunningControlPlane, tmp_path: Path
) -> None:
    with controlplane_any.client() as c:
        model_id, (v1, v2, v3) = register_versions(c, tmp_path, 3)
        dep = unique("d")
        c.create_deployment(dep, model=model_id, champion_version=v1)
        c.start_rollout(dep, v2, **SLOW_CANARY)

        def refused(version: int) -> None:
            with pytest.raises(FailedPrecondition) as err:
                c.archive_version(model_id, version)
            assert err.value.reason == "VERSION_IN_USE"
            assert f"deployments/{dep}" in err.value.message
            assert err.value.metadata["deployments"] == dep
            assert c.get_version(model_id, version).state != registry_pb2.VERSION_STATE_ARCHIVED

        refused(v1)  # the champion
        refused(v2)  # the candidate of the rollout in progress
        assert c.archive_version(model_id, v3).state == registry_pb2.VERSION_STATE_ARCHIVED

        # Rolling back keeps the champion serving, and it was never archived.
        rolled = c.rollback_rollout(dep)
        assert rolled.champion_version == v1
        refused(v1)
        # The candidate of a rollout that ended serves nothing any more.
        assert c.archive_version(model_id, v2).state == registry_pb2.VERSION_STATE_ARCHIVED

        # Once the deployment is gone, so is the guard.
        c.delete_deployment(dep)
        assert c.archive_version(model_id, v1).state == registry_pb2.VERSION_STATE_ARCHIVED


def test_archive_follows_a_promotion(controlplane: RunningControlPlane, tmp_path: Path) -> None:
    with controlplane.client() as c:
        model_id, (v1, v2) = register_versions(c, tmp_path, 2)
        dep = unique("d")
        c.create_deployment(dep, model=model_id, champion_version=v1)
        c.start_rollout(dep, v2, **SLOW_CANARY)
        assert c.promote_rollout(dep).champion_version == v2
        with pytest.raises(FailedPrecondition) as err:
            c.archive_version(model_id, v2)
        assert err.value.reason == "VERSION_IN_USE"
        assert c.archive_version(model_id, v1).state == registry_pb2.VERSION_STATE_ARCHIVED


def _race(first: Any, second: Any) -> tuple[Any, Any]:
    """Run two calls at the same moment; each result is its return value or its error."""
    import threading

    barrier = threading.Barrier(2)
    results: list[Any] = [None, None]

    def run(i: int, call: Any) -> None:
        barrier.wait()
        try:
            results[i] = call()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate((first, second))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results[0], results[1]


def test_racing_writes_never_leave_a_deployment_on_a_missing_or_archived_version(
    controlplane_any: RunningControlPlane, tmp_path: Path
) -> None:
    # On PostgreSQL two transactions run at once: each write that adds a deployment or a
    # rollout, and each that removes what those use, must see the other's commit.
    deleted_and_deployed = archived_and_rolled_out = 0
    with controlplane_any.client() as c:
        for _ in range(10):
            model_id, versions = register_versions(c, tmp_path, 2)
            name = unique("d")
            removed, deployed = _race(
                lambda m=model_id: c.delete_model(m, force=True),
                lambda m=model_id, v=versions[0], d=name: c.create_deployment(
                    d, model=m, champion_version=v
                ),
            )
            assert not isinstance(removed, Exception) or isinstance(removed, FailedPrecondition)
            assert not isinstance(deployed, Exception) or isinstance(deployed, NotFound)
            deleted_and_deployed += not isinstance(removed, Exception) and not isinstance(
                deployed, Exception
            )

            model_id, versions = register_versions(c, tmp_path, 2)
            c.create_deployment(name := unique("d"), model=model_id, champion_version=versions[0])
            archived, started = _race(
                lambda m=model_id, v=versions[1]: c.archive_version(m, v),
                lambda m=model_id, v=versions[1], d=name: c.start_rollout(d, v, **SLOW_CANARY),
            )
            assert not isinstance(archived, Exception) or isinstance(archived, FailedPrecondition)
            assert not isinstance(started, Exception) or isinstance(started, FailedPrecondition)
            archived_and_rolled_out += not isinstance(archived, Exception) and not isinstance(
                started, Exception
            )
    assert deleted_and_deployed == 0 and archived_and_rolled_out == 0
