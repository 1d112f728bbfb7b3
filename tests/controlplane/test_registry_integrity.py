"""The registry keeps its answers true: across a model deleted and created again under its id,
under concurrent writes on PostgreSQL, for filters, environment lineage and refusals.

The concurrency tests order the writes instead of hoping for a race: a connection of the test
holds the audit chain's lock, which every mutation takes last, just before it commits; each
write runs up to that point (or to a row lock another holds) and waits, and the test lets them
all go once it sees them waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from controlplane.audit import AUDIT_LOCK_KEY
from modelplane import Aborted, Client, FailedPrecondition, InvalidArgument, NotFound
from modelplane.testing import onnx_models
from modelplane.v1 import registry_pb2
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, start_controlplane
from tests.controlplane.test_deployments_api import register_versions


def _onnx(folder: Path, seed: int) -> Path:
    return onnx_models.save(onnx_models.mlp(4, (8,), 2, seed=seed), folder / f"m{seed}.onnx")


# A model deleted and created again under its id ----------------------------------------------


def test_a_model_created_again_under_its_id_inherits_no_etag_and_no_alias(
    controlplane_any: RunningControlPlane, tmp_path: Path
) -> None:
    with controlplane_any.client() as c:
        model_id = unique()
        old = c.create_model(model_id, description="old")
        c.register_version(model_id, _onnx(tmp_path, 1), capture_env=False)
        c.set_alias(model_id, "champion", 1, reason="old release")
        old_v1 = c.get_version(model_id, 1)
        c.delete_model(model_id, force=True)

        new = c.create_model(model_id, description="new, unrelated")
        new_v1 = c.register_version(model_id, _onnx(tmp_path, 2), capture_env=False)
        assert new.etag != old.etag
        assert new_v1.etag != old_v1.etag
        with pytest.raises(Aborted) as err:
            c.update_model(model_id, etag=old.etag, description="overwritten")
        assert err.value.reason == "ETAG_MISMATCH"
        with pytest.raises(Aborted):
            c.update_version(model_id, 1, etag=old_v1.etag, description="overwritten")
        with pytest.raises(Aborted):
            c.archive_version(model_id, 1, etag=old_v1.etag)
        assert c.get_model(model_id).description == "new, unrelated"

        # The forced delete took the aliases and their history: the new model's alias points
        # nowhere, at no time, whatever the old one's pointed to; the audit trail keeps it.
        with pytest.raises(NotFound) as nf:
            c.get_alias(model_id, "champion", as_of=datetime.now(UTC))
        assert nf.value.reason == "ALIAS_NOT_FOUND"
        assert list(c.alias_history(model_id, "champion")) == []
        assert list(c.alias_history(model_id)) == []
        audited = c.audit_events(resource=f"models/{model_id}/aliases/champion")
        assert [e.action for e in audited] == ["SetAlias"]


def test_a_model_created_again_under_its_id_inherits_no_approvals(
    controlplane_any: RunningControlPlane, tmp_path: Path
) -> None:
    """A new version 1 must not meet a promotion policy with the old version 1's approvals."""
    with controlplane_any.client() as c, controlplane_any.client("bob") as bob:
        model_id, _ = register_versions(c, tmp_path, 1, capture_env=False)
        target = unique("prod")
        c.create_policy(unique("p"), target=target, rules=["true"])
        bob.approve(model_id, 1, target, comment="the old version 1")
        assert len(c.list_approvals(model_id, 1)) == 1
        c.delete_model(model_id, force=True)
        c.create_model(model_id)
        c.register_version(model_id, _onnx(tmp_path, 2), capture_env=False)
        assert c.list_approvals(model_id, 1) == []
        # The audit trail keeps the old approval.
        events = c.audit_events(resource=f"models/{model_id}/versions/1")
        assert [e.actor for e in events if e.action == "Approve"] == ["bob"]


def test_a_versions_etag_moves_when_it_gains_or_loses_an_alias(
    controlplane_any: RunningControlPlane, tmp_path: Path
) -> None:
    """A version lists its aliases, so an alias moving on or off it is a new revision."""
    with controlplane_any.client() as c:
        model_id, _ = register_versions(c, tmp_path, 2, capture_env=False)
        v1, v2 = c.get_version(model_id, 1), c.get_version(model_id, 2)
        c.set_alias(model_id, "champion", 1)
        after_set = c.get_version(model_id, 1)
        assert list(after_set.aliases) == ["champion"] and after_set.etag != v1.etag
        assert c.get_version(model_id, 2).etag == v2.etag
        c.set_alias(model_id, "champion", 1, reason="again, same version")
        assert c.get_version(model_id, 1).etag == after_set.etag
        c.set_alias(model_id, "champion", 2)
        moved_off, moved_on = c.get_version(model_id, 1), c.get_version(model_id, 2)
        assert moved_off.etag != after_set.etag and moved_on.etag != v2.etag
        with pytest.raises(Aborted):
            c.update_version(model_id, 1, etag=after_set.etag, description="stale")
        c.delete_alias(model_id, "champion")
        assert c.get_version(model_id, 2).etag != moved_on.etag
        assert c.update_version(model_id, 1, etag=moved_off.etag, description="fresh").description


def test_a_deployment_created_again_under_its_id_inherits_no_etag(
    controlplane_any: RunningControlPlane, tmp_path: Path
) -> None:
    with controlplane_any.client() as c:
        model_id, _ = register_versions(c, tmp_path, 1, capture_env=False)
        dep = unique("d")
        old = c.create_deployment(dep, model=model_id, champion_version=1, description="old")
        c.delete_deployment(dep)
        new = c.create_deployment(dep, model=model_id, champion_version=1, description="new")
        assert new.etag != old.etag
        with pytest.raises(Aborted) as err:
            c.update_deployment(dep, etag=old.etag, description="overwritten")
        assert err.value.reason == "ETAG_MISMATCH"
        assert c.update_deployment(dep, etag=new.etag, description="kept").description == "kept"


def test_every_answer_carries_an_etag_that_the_next_write_accepts(
    controlplane_any: RunningControlPlane, tmp_path: Path
) -> None:
    with controlplane_any.client() as c:
        model_id = unique()
        created = c.create_model(model_id)
        assert c.get_model(model_id).etag == created.etag
        first = c.update_model(model_id, etag=created.etag, description="one")
        second = c.update_model(model_id, etag=first.etag, description="two")
        with pytest.raises(Aborted):
            c.update_model(model_id, etag=first.etag, description="stale")
        assert c.get_model(model_id).etag == second.etag

        registered = c.register_version(model_id, _onnx(tmp_path, 1), capture_env=False)
        assert c.get_version(model_id, 1).etag == registered.etag
        updated = c.update_version(model_id, 1, etag=registered.etag, labels={"stage": "beta"})
        with pytest.raises(Aborted):
            c.archive_version(model_id, 1, etag=registered.etag)
        archived = c.archive_version(model_id, 1, etag=updated.etag)
        assert archived.state == registry_pb2.VERSION_STATE_ARCHIVED
        c.delete_model(model_id, etag=c.get_model(model_id).etag, force=True)


# Refusals that say what works ----------------------------------------------------------------


def test_delete_model_with_versions_says_force_is_what_works(
    controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    with controlplane.client() as c:
        model_id, _ = register_versions(c, tmp_path, 1, capture_env=False)
        c.archive_version(model_id, 1)
        with pytest.raises(FailedPrecondition) as err:
            c.delete_model(model_id)
        assert err.value.reason == "MODEL_HAS_VERSIONS"
        assert "archive them" not in err.value.message
        assert "archived ones count too" in err.value.message
        assert "pass force" in err.value.message
        c.delete_model(model_id, force=True)  # what the message says works
        with pytest.raises(NotFound):
            c.get_model(model_id)


# Filters -------------------------------------------------------------------------------------


def test_every_filter_term_must_hold(controlplane: RunningControlPlane, tmp_path: Path) -> None:
    with controlplane.client() as c:
        team = unique("t")
        a, b, flagged = unique("a"), unique("b"), unique("f")
        c.create_model(a, labels={"team": team})
        c.create_model(b, labels={"team": f"{team}-x"})
        c.create_model(flagged, labels={"team": team, "flag": ""})

        def models(text: str) -> list[str]:
            return [m.name.removeprefix("models/") for m in c.list_models(filter=text)]

        assert models(f"labels.team={team} labels.team={team}-x") == []
        assert models(f"labels.team={team}-x labels.team={team}") == []
        assert models(f"labels.team={team} labels.team={team}") == sorted([a, flagged])
        assert models(f"labels.team={team} labels.flag=") == [flagged]

        c.register_version(a, _onnx(tmp_path, 1), capture_env=False)
        c.register_version(a, _onnx(tmp_path, 2), capture_env=False)
        c.archive_version(a, 1)

        def versions(text: str) -> list[int]:
            return [int(v.version) for v in c.list_versions(a, filter=text)]

        assert versions("state=ARCHIVED state=REGISTERED") == []
        assert versions("state=REGISTERED state=ARCHIVED") == []
        assert versions("state=ARCHIVED state=VERSION_STATE_ARCHIVED") == [1]

        for bad in ("labels.=x", "state=", "labels.team"):
            with pytest.raises(InvalidArgument) as err:
                c.list_versions_page(a, filter=bad)
            assert err.value.reason == "INVALID_FILTER", bad


# Environment lineage -------------------------------------------------------------------------


def _register_with(c: Client, model_id: str, sha256: str, env: registry_pb2.Environment) -> Any:
    request = registry_pb2.CreateModelVersionRequest(
        parent=f"models/{model_id}", artifact_sha256=sha256, environment=env
    )
    return c._call(c.registry.CreateModelVersion, request)


@pytest.mark.parametrize(
    ("env", "field"),
    [
        (registry_pb2.Environment(python_version="3.11\n\x1b[31m"), "environment.python_version"),
        (registry_pb2.Environment(python_version="3.11\x00"), "environment.python_version"),
        (registry_pb2.Environment(python_version="3" * 65), "environment.python_version"),
        (registry_pb2.Environment(platform="linux\x1b[2J"), "environment.platform"),
        (
            registry_pb2.Environment(packages=[registry_pb2.Package(name="numpy\r\nevil")]),
            "environment.packages.name",
        ),
        (
            registry_pb2.Environment(packages=[registry_pb2.Package(name="", version="1")]),
            "environment.packages.name",
        ),
        (
            registry_pb2.Environment(
                packages=[registry_pb2.Package(name="numpy", version="1" * 257)]
            ),
            "environment.packages.version",
        ),
    ],
)
def test_environment_lineage_is_validated(
    controlplane_any: RunningControlPlane,
    tmp_path: Path,
    env: registry_pb2.Environment,
    field: str,
) -> None:
    with controlplane_any.client() as c:
        model_id = unique()
        c.create_model(model_id)
        sha = c.upload_blob(_onnx(tmp_path, 1).read_bytes()).sha256
        with pytest.raises(InvalidArgument) as err:
            _register_with(c, model_id, sha, env)
        assert err.value.reason == "INVALID_ENVIRONMENT"
        assert err.value.metadata["field"] == field
        assert list(c.list_versions(model_id)) == []

        fine = registry_pb2.Environment(
            python_version="3.12.1",
            platform="Linux-6.8.0-x86_64-with-glibc2.39",
            packages=[registry_pb2.Package(name="numpy", version="2.1.0")],
        )
        stored = _register_with(c, model_id, sha, fine)
        assert stored.lineage.environment == fine


def test_too_many_environment_packages_are_refused(
    controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    with controlplane.client() as c:
        model_id = unique()
        c.create_model(model_id)
        sha = c.upload_blob(_onnx(tmp_path, 1).read_bytes()).sha256
        packages = [registry_pb2.Package(name=f"p{i}", version="1") for i in range(10_001)]
        with pytest.raises(InvalidArgument) as err:
            _register_with(c, model_id, sha, registry_pb2.Environment(packages=packages))
        assert err.value.reason == "TOO_MANY_PACKAGES"
        assert err.value.metadata["field"] == "environment.packages"


# Concurrent writes on PostgreSQL -------------------------------------------------------------


@pytest.fixture
def controlplane_pg(tmp_path: Path, pg_url: str) -> Iterator[RunningControlPlane]:
    """A control plane on PostgreSQL."""
    cp = start_controlplane(tmp_path, pg_url)
    yield cp
    cp.handle.stop(0)


class Held:
    """The audit chain's lock, held by the test: mutations wait just before they commit."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.lock = psycopg.connect(url)
        self.watch = psycopg.connect(url, autocommit=True)
        self.lock.execute("SELECT pg_advisory_xact_lock(%s)", (AUDIT_LOCK_KEY,))

    def wait_for_waiters(self, count: int, timeout: float = 60.0) -> None:
        """Until ``count`` sessions of the database wait on a lock."""
        deadline = time.monotonic() + timeout
        while True:
            row = self.watch.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            ).fetchone()
            assert row is not None
            if row[0] >= count:
                return
            assert time.monotonic() < deadline, f"fewer than {count} writes waited on a lock"
            time.sleep(0.02)

    def release(self) -> None:
        self.lock.rollback()

    def close(self) -> None:
        self.lock.close()
        self.watch.close()


@contextmanager
def held(url: str) -> Iterator[Held]:
    h = Held(url)
    try:
        yield h
    finally:
        h.close()


def _outcome(future: Future[Any]) -> str:
    """``OK`` or ``ErrorClass/REASON``."""
    err = future.exception(timeout=120)
    return "OK" if err is None else f"{type(err).__name__}/{getattr(err, 'reason', '')}"


def _run_held(
    cp: RunningControlPlane, calls: list[Callable[[Client], Any]], waiters: list[int]
) -> list[str]:
    """Start ``calls`` in order, each on its own client, while the audit lock is held; before
    the next starts, wait until ``waiters[i]`` sessions wait on a lock; then let them all go."""
    clients = [cp.client() for _ in calls]
    try:
        with held(cp.db_url) as h, ThreadPoolExecutor(len(calls)) as pool:
            futures = []
            for call, c, count in zip(calls, clients, waiters, strict=True):
                futures.append(pool.submit(call, c))
                h.wait_for_waiters(count)
            h.release()
            return [_outcome(f) for f in futures]
    finally:
        for c in clients:
            c.close()


@pytest.mark.postgres
def test_concurrent_set_alias_creating_one_alias_both_succeed(
    controlplane_pg: RunningControlPlane, tmp_path: Path
) -> None:
    with controlplane_pg.client() as c:
        model_id, _ = register_versions(c, tmp_path, 2, capture_env=False)
    calls: list[Callable[[Client], Any]] = [
        lambda cl: cl.set_alias(model_id, "champion", 1, reason="job 1"),
        lambda cl: cl.set_alias(model_id, "champion", 2, reason="job 2"),
    ]
    assert _run_held(controlplane_pg, calls, [1, 2]) == ["OK", "OK"]
    with controlplane_pg.client() as c:
        history = list(c.alias_history(model_id, "champion"))
        assert len(history) == 2
        assert c.get_alias(model_id, "champion").version == history[0].version


@pytest.mark.postgres
def test_concurrent_delete_alias_one_wins_the_other_is_not_found(
    controlplane_pg: RunningControlPlane, tmp_path: Path
) -> None:
    with controlplane_pg.client() as c:
        model_id, _ = register_versions(c, tmp_path, 1, capture_env=False)
        c.set_alias(model_id, "champion", 1)
    calls: list[Callable[[Client], Any]] = [
        lambda cl: cl.delete_alias(model_id, "champion", reason="job 1"),
        lambda cl: cl.delete_alias(model_id, "champion", reason="job 2"),
    ]
    assert _run_held(controlplane_pg, calls, [1, 2]) == ["OK", "NotFound/ALIAS_NOT_FOUND"]


@pytest.mark.postgres
def test_set_alias_behind_a_forced_delete_model_is_model_not_found(
    controlplane_pg: RunningControlPlane, tmp_path: Path
) -> None:
    with controlplane_pg.client() as c:
        model_id, _ = register_versions(c, tmp_path, 1, capture_env=False)
    calls: list[Callable[[Client], Any]] = [
        lambda cl: cl.delete_model(model_id, force=True),
        lambda cl: cl.set_alias(model_id, "champion", 1),
    ]
    assert _run_held(controlplane_pg, calls, [1, 2]) == ["OK", "NotFound/MODEL_NOT_FOUND"]


@pytest.mark.postgres
def test_concurrent_registrations_sharing_a_train_dataset_both_succeed(
    controlplane_pg: RunningControlPlane, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    table = pa.table({**{f"f{i}": rng.standard_normal(60) for i in range(4)}, "y": [0, 1] * 30})
    pacsv.write_csv(table, tmp_path / "train.csv")
    models = [unique("a"), unique("b")]
    with controlplane_pg.client() as c:
        for model_id in models:
            c.create_model(model_id)
        artifact = c.upload_blob(_onnx(tmp_path, 1).read_bytes()).sha256
        train = c.upload_blob(tmp_path / "train.csv").sha256

    def register(model_id: str) -> Callable[[Client], Any]:
        request = registry_pb2.CreateModelVersionRequest(
            parent=f"models/{model_id}",
            artifact_sha256=artifact,
            label_column="y",
            datasets=[registry_pb2.DatasetInput(role="train", sha256=train)],
        )
        return lambda cl: cl._call(cl.registry.CreateModelVersion, request)

    calls = [register(m) for m in models]
    assert _run_held(controlplane_pg, calls, [1, 2]) == ["OK", "OK"]
    with controlplane_pg.client() as c:
        baselines = {c.get_version(m, 1).baseline.sha256 for m in models}
        assert len(baselines) == 1
        assert c.get_blob(baselines.pop()).media_type == "application/vnd.modelplane.profile+json"
