"""The store on SQLite and PostgreSQL: the same behaviour on both backends."""

from __future__ import annotations

import hashlib
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controlplane.services import ModelService
from controlplane.store import Mutation, Store
from controlplane.store.deployment_repos import Deployments
from controlplane.store.deployment_tables import WindowReportRow
from controlplane.store.engine import create_engines
from controlplane.store.migrate import upgrade
from modelplane import Aborted, AlreadyExists, NotFound
from modelplane.server import RequestContext
from tests.conftest import unique

CTX = RequestContext(principal="alice")


@pytest.fixture
def store(db_url: str):  # type: ignore[no-untyped-def]
    s = Store.open(db_url)
    yield s
    s.close()


def test_create_get_update_delete(store: Store) -> None:
    models = ModelService(store)
    name = unique()
    m = models.create(CTX, name, description="d", labels={"a": "1"})
    assert models.get(f"models/{name}") == m
    assert m.create_time.tzinfo is not None
    u = models.update(CTX, m.name, m.etag, ["labels"], {"labels": {"b": "2"}})
    assert u.labels == {"b": "2"} and u.etag != m.etag
    with pytest.raises(AlreadyExists):
        models.create(CTX, name)
    models.delete(CTX, m.name)
    with pytest.raises(NotFound):
        models.get(m.name)
    assert all(x.id != name for x in models.list_models(page_size_=1000)[0])


def test_concurrent_updates_with_the_same_etag_exactly_one_wins(store: Store) -> None:
    models = ModelService(store)
    m = models.create(CTX, unique())
    barrier = threading.Barrier(8)
    results: list[str] = []
    lock = threading.Lock()

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            models.update(
                RequestContext(principal=f"p{i}"),
                m.name,
                m.etag,
                ["description"],
                {"description": f"writer {i}"},
            )
            outcome = f"won {i}"
        except Aborted:
            outcome = "aborted"
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if r.startswith("won")]
    assert len(winners) == 1, results
    assert results.count("aborted") == 7
    assert models.get(m.name).description == f"writer {winners[0].split()[1]}"


def test_concurrent_creates_of_one_name_exactly_one_wins(store: Store) -> None:
    models = ModelService(store)
    name = unique()
    barrier = threading.Barrier(6)
    outcomes: list[str] = []

    def attempt() -> None:
        barrier.wait()
        try:
            models.create(CTX, name)
            outcomes.append("created")
        except AlreadyExists:
            outcomes.append("exists")

    threads = [threading.Thread(target=attempt) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["created"] + ["exists"] * 5


def test_mutation_hooks_run_inside_the_transaction(store: Store) -> None:
    seen: list[Mutation] = []
    store.hooks.append(lambda session, mutations: seen.extend(mutations))
    models = ModelService(store)
    m = models.create(CTX, unique())
    models.update(CTX, m.name, "", ["description"], {"description": "x"})
    assert [(x.action, x.resource, x.actor) for x in seen] == [
        ("CreateModel", m.name, "alice"),
        ("UpdateModel", m.name, "alice"),
    ]
    assert (
        seen[0].before is None
        and seen[1].before.description == ""
        and seen[1].after.description == "x"
    )

    def failing(session, mutations):  # type: ignore[no-untyped-def]
        raise RuntimeError("audit store down")

    store.hooks.append(failing)
    name = unique()
    with pytest.raises(RuntimeError):
        models.create(CTX, name)
    store.hooks.clear()
    assert all(x.id != name for x in models.list_models(page_size_=1000)[0]), "nothing half-written"


def test_alias_history_as_of(store: Store) -> None:
    from controlplane.store.tables import ModelVersionRow

    models = ModelService(store)
    m = models.create(CTX, unique())
    now = datetime.now(UTC)
    with store.write(CTX, "seed") as tx:
        for n in (1, 2):
            tx.models.next_version(m.id)
            tx.versions.add(
                ModelVersionRow(
                    model_id=m.id,
                    version=n,
                    artifact_sha256="0" * 64,
                    artifact={
                        "sha256": "0" * 64,
                        "size_bytes": 1,
                        "format": "onnx",
                        "ir_version": 8,
                        "opset": 17,
                        "producer_name": "",
                        "producer_version": "",
                    },
                    create_time=now,
                    update_time=now,
                )
            )
        tx.record("seed", m.name, None, None)
    models.set_alias(CTX, f"{m.name}/aliases/prod", f"{m.name}/versions/1", "go")
    t1 = datetime.now(UTC)
    models.set_alias(CTX, f"{m.name}/aliases/prod", f"{m.name}/versions/2", "better")
    assert models.get_alias(f"{m.name}/aliases/prod", t1).version == 1
    assert models.get_alias(f"{m.name}/aliases/prod").version == 2
    events, token = models.alias_history(f"{m.name}/aliases/prod", page_size_=1)
    assert [e.version for e in events] == [2] and token
    events2, token2 = models.alias_history(f"{m.name}/aliases/prod", page_size_=1, page_token=token)
    assert [e.version for e in events2] == [1] and token2 == ""


def test_migrations_from_several_replicas_at_once(db_url: str) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def migrate() -> None:
        engines = create_engines(db_url)
        try:
            barrier.wait()
            upgrade(engines)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)
        finally:
            engines.dispose()

    threads = [threading.Thread(target=migrate) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    s = Store.open(db_url)
    try:
        assert ModelService(s).create(CTX, unique()).latest_version == 0
    finally:
        s.close()


def test_concurrent_uploads_of_one_digest_all_succeed_with_one_record(
    store: Store, tmp_path: Path
) -> None:
    from controlplane import audit
    from controlplane.blobstore import BlobStore
    from controlplane.services import BlobService

    audit.install(store)
    blobs = BlobService(store, BlobStore.open(tmp_path / "artifacts", 1 << 20))
    data = unique("blob").encode()
    digest = hashlib.sha256(data).hexdigest()
    barrier = threading.Barrier(6)
    got: list[object] = []

    def upload(i: int) -> None:
        barrier.wait()
        try:
            got.append(blobs.upload(RequestContext(principal=f"p{i}"), digest, 0, "", [data]))
        except Exception as exc:  # collected and asserted below
            got.append(exc)

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(not isinstance(g, Exception) for g in got), got
    assert len({g.created_by for g in got}) == 1  # type: ignore[attr-defined]
    assert blobs.get(f"blobs/{digest}").size_bytes == len(data)
    events, _ = audit.list_events(store, resource=f"blobs/{digest}")
    # Each principal's upload is recorded once (it proves the principal holds the bytes); one
    # of them stored the blob (no before), the others sent the bytes again.
    assert {e.action for e in events} == {"UploadBlob"}
    assert sorted(e.actor for e in events) == [f"p{i}" for i in range(6)]
    assert [e.actor for e in events if not e.before_sha256] == [got[0].created_by]  # type: ignore[attr-defined]


def test_register_checks_model_then_blobs_in_order_and_numbers_versions(
    store: Store, tmp_path: Path
) -> None:
    from controlplane import audit
    from controlplane.blobstore import BlobStore
    from controlplane.services import BlobService, VersionService
    from controlplane.services.versions import NewDataset, NewVersion
    from modelplane import FailedPrecondition
    from modelplane.testing import onnx_models

    audit.install(store)
    blob_store = BlobStore.open(tmp_path / "artifacts", 1 << 24)
    blobs, versions = BlobService(store, blob_store), VersionService(store, blob_store)
    onnx = onnx_models.save(onnx_models.mlp(features=3), tmp_path / "m.onnx").read_bytes()
    sha = hashlib.sha256(onnx).hexdigest()
    absent = "ab" * 32
    name = ModelService(store).create(CTX, unique()).id

    # A missing model is reported before a missing blob.
    with pytest.raises(NotFound) as missing_model:
        versions.create(CTX, f"models/{unique()}", NewVersion(artifact_sha256=absent))
    assert missing_model.value.reason == "MODEL_NOT_FOUND"
    with pytest.raises(FailedPrecondition) as missing_artifact:
        versions.create(CTX, f"models/{name}", NewVersion(artifact_sha256=sha))
    assert missing_artifact.value.reason == "BLOB_NOT_FOUND"
    assert "artifact" in str(missing_artifact.value)
    blobs.upload(CTX, sha, len(onnx), "application/onnx", [onnx])
    dataset = NewVersion(
        artifact_sha256=sha, datasets=[NewDataset(role="train", source="x", sha256=absent)]
    )
    with pytest.raises(FailedPrecondition) as missing_dataset:
        versions.create(CTX, f"models/{name}", dataset)
    assert missing_dataset.value.reason == "BLOB_NOT_FOUND"
    assert "dataset 'train'" in str(missing_dataset.value)

    made = [versions.create(CTX, f"models/{name}", NewVersion(artifact_sha256=sha)) for _ in "ab"]
    assert [v.version for v in made] == [1, 2]
    assert versions.get(made[1].name) == made[1]
    assert ModelService(store).get(f"models/{name}").latest_version == 2
    events, _ = audit.list_events(store, resource=made[0].name)
    assert [e.action for e in events] == ["CreateModelVersion"]


def test_numbered_insert_for_a_missing_model_inserts_nothing(store: Store) -> None:
    now = datetime.now(UTC)
    columns = {
        "description": "",
        "labels": {},
        "state": "REGISTERED",
        "artifact_sha256": "0" * 64,
        "artifact": {},
        "signature": {},
        "lineage": {},
        "feature_names": [],
        "label_column": "",
        "baseline": {},
        "created_by": "alice",
        "create_time": now,
        "update_time": now,
    }
    missing = unique()
    with store.write(CTX, "seed") as tx:
        assert tx.versions.add_numbered(missing, columns) is None
    with store.read() as tx:
        assert tx.versions.count(missing) == 0
        found, recorded = tx.blobs.model_and_blobs(missing, ["0" * 64])
    assert (found, recorded) == (False, set())


def test_direct_statements_join_the_transaction_and_raise_sqlalchemy_errors(store: Store) -> None:
    from sqlalchemy import insert, select, text
    from sqlalchemy.exc import IntegrityError

    from controlplane.store.direct import Direct
    from controlplane.store.tables import RequestIdRow

    table = RequestIdRow.__table__  # type: ignore[attr-defined]
    add = Direct(insert(table))
    ids = [unique("rid") for _ in range(3)]
    lookup = Direct(
        select(table.c.request_id, table.c.method)
        .where(table.c.request_id.in_(ids))
        .order_by(table.c.request_id)
    )
    row = {
        "method": "M",
        "resource": "r",
        "principal": "p",
        "request_sha256": "",
        "create_time": datetime.now(UTC),
    }
    # A row inserted in a transaction that fails is rolled back with it.
    with pytest.raises(RuntimeError), store.write(CTX, "Test") as tx:
        add.rows(tx.session.connection(), {**row, "request_id": ids[0]})
        raise RuntimeError("abort")
    with store.read() as tx:
        assert lookup.rows(tx.session.connection(), {}) == []
    with store.write(CTX, "Test") as tx:
        for rid in ids[:2]:
            add.rows(tx.session.connection(), {**row, "request_id": rid})
    with store.read() as tx:
        # Plain tuples back; the expanding IN takes a list, one value, or none.
        assert lookup.rows(tx.session.connection(), {}) == [(r, "M") for r in sorted(ids[:2])]
        one = Direct(select(table.c.method).where(table.c.request_id.in_([ids[1]])))
        assert one.first(tx.session.connection(), {}) == ("M",)
        none = Direct(select(table.c.method).where(table.c.request_id.in_([])))
        assert none.first(tx.session.connection(), {}) is None
    # A unique violation surfaces as SQLAlchemy's IntegrityError, which the store translates,
    # and the connection goes on serving.
    with pytest.raises(AlreadyExists) as exists, store.write(CTX, "Test") as tx:
        add.rows(tx.session.connection(), {**row, "request_id": ids[0]})
    assert isinstance(exists.value.__cause__, IntegrityError)
    with store.read() as tx:
        assert tx.session.connection().execute(text("SELECT 1")).scalar() == 1


def test_a_direct_statement_on_a_lost_connection_leaves_the_pool_healthy(pg_url: str) -> None:
    db_url = pg_url  # SQLite has no server connection to lose
    import psycopg
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    from controlplane.store.direct import Direct

    store = Store.open(db_url)  # used one call at a time, its pool holds a single connection
    try:
        with store.read() as tx:
            conn = tx.session.connection()
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
            with psycopg.connect(db_url, autocommit=True) as killer:
                killer.execute("SELECT pg_terminate_backend(%s)", [pid])
            with pytest.raises(OperationalError):
                Direct(text("SELECT 1")).rows(conn, {})
        # The dead connection was dropped from the pool: the next transaction gets a live one.
        with store.read() as tx:
            conn = tx.session.connection()
            assert Direct(text("SELECT pg_backend_pid()")).first(conn, {}) != (pid,)
    finally:
        store.close()


def test_sqlite_writers_queue_at_the_write_gate(tmp_path: Path) -> None:
    import fcntl

    db = tmp_path / "gate.db"
    store = Store.open(f"sqlite:///{db}")
    try:
        models = ModelService(store)
        # Another process holding the gate (a second lock on the file stands in for it):
        # a write waits for it instead of failing or polling SQLite's lock.
        with open(f"{db}.write-lock", "a+b") as other:
            fcntl.flock(other, fcntl.LOCK_EX)
            done = threading.Event()
            name = unique()
            writer = threading.Thread(target=lambda: (models.create(CTX, name), done.set()))
            writer.start()
            assert not done.wait(0.5)
            fcntl.flock(other, fcntl.LOCK_UN)
            assert done.wait(10)
            writer.join()
        assert models.get(f"models/{name}").id == name
        # A write transaction opened inside another on the same thread does not wait on itself.
        gate = store.engines.write_gate
        with gate(), gate():
            pass
        # Many threads at once: every write lands once.
        names = [unique() for _ in range(12)]
        threads = [threading.Thread(target=models.create, args=(CTX, n)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(models.get(f"models/{n}").id == n for n in names)
    finally:
        store.close()


def test_a_writer_that_waits_too_long_at_the_gate_gets_unavailable(tmp_path: Path) -> None:
    from controlplane.store.engine import WriteGate
    from modelplane import Unavailable

    gate = WriteGate(str(tmp_path / "db.write-lock"), timeout=0.2)
    inside, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with gate():
            inside.set()
            leave.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert inside.wait(10)
    with pytest.raises(Unavailable) as busy, gate():
        pass
    assert busy.value.reason == "DATABASE_UNAVAILABLE"
    leave.set()
    holder.join()
    with gate():  # free again
        pass


def test_latest_reports_are_each_replicas_newest_of_the_rollout_since_a_time(
    store: Store,
) -> None:
    dep = unique("d")
    now = datetime.now(UTC)
    rows = [  # (replica, sequence, rollout, seconds ago)
        ("r0", 1, "ro", 1),
        ("r0", 3, "ro", 2),  # newest by sequence, though received earlier
        ("r0", 2, "ro", 0),
        ("r1", 7, "ro", 1),
        ("r1", 9, "ro", 60),  # received before ``since``
        ("r1", 8, "other", 0),  # another rollout
        ("r2", 4, "", 0),  # no rollout
    ]
    with store.write(CTX, "test") as tx:
        repo = Deployments(tx.session)
        for replica, sequence, rollout, ago in rows:
            assert repo.add_report(
                WindowReportRow(
                    deployment_id=dep,
                    replica=replica,
                    sequence=sequence,
                    generation=1,
                    rollout_id=rollout,
                    receive_time=now - timedelta(seconds=ago),
                    body={"arms": []},
                )
            )
    since = now - timedelta(seconds=10)
    with store.read() as tx:
        repo = Deployments(tx.session)
        got = [(x.replica, x.sequence) for x in repo.latest_reports(dep, "ro", since)]
        assert got == [("r0", 3), ("r1", 7)]
        assert [(x.replica, x.sequence) for x in repo.latest_reports(dep, "", since)] == [("r2", 4)]
        assert repo.latest_reports(dep, "ro", now + timedelta(seconds=1)) == []
