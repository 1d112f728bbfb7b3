"""The audit chain on SQLite and PostgreSQL: appends, tampering, truncation, concurrency."""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from controlplane import audit
from controlplane.audit import Problem
from controlplane.services import ModelService
from controlplane.store import Mutation, Store
from modelplane.cli import main
from modelplane.errors import AlreadyExists, InvalidArgument, NotFound
from modelplane.server.context import RequestContext
from tests.controlplane.conftest import start_controlplane

CTX = RequestContext(principal="alice")


@pytest.fixture
def fresh_url(db_url: str) -> Iterator[str]:
    """A database of its own: SQLite's is already per test; on PostgreSQL create one, since
    these tests alter the chain and count every event."""
    if db_url.startswith("sqlite"):
        yield db_url
        return
    import psycopg

    name = f"modelplane_audit_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{db_url.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(db_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
            )
            admin.execute(f'DROP DATABASE IF EXISTS "{name}"')


def open_store(url: str) -> Store:
    store = Store.open(url)
    audit.install(store)
    return store


@pytest.fixture
def store(fresh_url: str) -> Iterator[Store]:
    s = open_store(fresh_url)
    yield s
    s.close()


def sql(store: Store, statement: str, **params: Any) -> None:
    with store.engines.write.begin() as conn:
        conn.execute(text(statement), params)


def expected_hash(event: dict[str, Any]) -> str:
    """The event hash as the format defines it, computed here without the library."""
    fields = {k: v for k, v in event.items() if k != "hash"}
    encoded = json.dumps(
        {"v": 1, **fields}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


def all_events(store: Store) -> list[audit.AuditEvent]:
    events, token = audit.list_events(store, page_size_=1000)
    assert token == ""
    return events


def make_history(store: Store, n_models: int = 2, updates: int = 2) -> None:
    svc = ModelService(store)
    for i in range(n_models):
        m = svc.create(CTX, f"m{i}", description="first")
        for j in range(updates):
            m = svc.update(CTX, m.name, m.etag, ["description"], {"description": f"v{j}"})


# Appending ------------------------------------------------------------------------------------


def test_every_mutation_appends_a_chained_event(store: Store) -> None:
    svc = ModelService(store)
    request_id = str(uuid.uuid4())
    created = svc.create(CTX, "fraud", labels={"team": "risk"}, request_id=request_id)
    updated = svc.update(
        RequestContext(principal="bob"),
        created.name,
        created.etag,
        ["description"],
        {"description": "d"},
    )
    svc.delete(CTX, updated.name)

    events = all_events(store)
    assert [(e.seq, e.action, e.resource, e.actor) for e in events] == [
        (1, "CreateModel", "models/fraud", "alice"),
        (2, "UpdateModel", "models/fraud", "bob"),
        (3, "DeleteModel", "models/fraud", "alice"),
    ]
    assert events[0].request_id == request_id and events[1].request_id == ""

    def digest(model: Any) -> str:
        obj = {
            "id": model.id,
            "description": model.description,
            "labels": model.labels,
            "intended_use": model.intended_use,
            "limitations": model.limitations,
            "latest_version": model.latest_version,
            "created_by": model.created_by,
            "create_time": model.create_time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "update_time": model.update_time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "etag": model.etag,
        }
        raw = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(raw.encode()).hexdigest()

    assert (events[0].before_sha256, events[0].after_sha256) == ("", digest(created))
    assert (events[1].before_sha256, events[1].after_sha256) == (digest(created), digest(updated))
    assert (events[2].before_sha256, events[2].after_sha256) == (digest(updated), "")
    prev = "0" * 64
    for event in events:
        assert event.prev_hash == prev
        assert event.hash == expected_hash(event.to_dict())
        prev = event.hash

    result = audit.verify(store)
    assert result.ok and result.checked == 3
    assert (result.head_seq, result.head_hash) == (3, events[-1].hash)


def test_a_failed_mutation_appends_nothing(store: Store) -> None:
    svc = ModelService(store)
    svc.create(CTX, "dup")
    with pytest.raises(AlreadyExists):
        svc.create(CTX, "dup")
    assert [e.seq for e in all_events(store)] == [1]


@pytest.mark.parametrize("position", ["before", "after"])
def test_a_hook_failure_rolls_the_mutation_and_its_event_back(store: Store, position: str) -> None:
    svc = ModelService(store)
    svc.create(CTX, "kept")

    def failing(session: Session, mutations: list[Mutation]) -> None:
        raise RuntimeError("hook failed")

    if position == "before":
        store.hooks.insert(0, failing)
    else:
        store.hooks.append(failing)
    with pytest.raises(RuntimeError, match="hook failed"):
        svc.create(CTX, "lost")
    with pytest.raises(NotFound):
        svc.get("models/lost")
    assert [e.seq for e in all_events(store)] == [1]

    store.hooks.remove(failing)
    svc.create(CTX, "later")
    events = all_events(store)
    assert [(e.seq, e.resource) for e in events] == [(1, "models/kept"), (2, "models/later")]
    assert audit.verify(store).ok


def test_a_replayed_request_appends_nothing(store: Store) -> None:
    svc = ModelService(store)
    request_id = str(uuid.uuid4())
    first = svc.create(CTX, "idem", request_id=request_id)
    assert svc.create(CTX, "idem", request_id=request_id) == first
    assert [(e.seq, e.request_id) for e in all_events(store)] == [(1, request_id)]


def test_install_is_idempotent(store: Store) -> None:
    audit.install(store)
    ModelService(store).create(CTX, "once")
    assert len(all_events(store)) == 1


# Tampering ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("statement", "bad_seq", "problem"),
    [
        ("UPDATE audit_events SET actor = 'mallory' WHERE seq = 3", 3, Problem.EVENT_ALTERED),
        ("UPDATE audit_events SET after_sha256 = '' WHERE seq = 4", 4, Problem.EVENT_ALTERED),
        ("UPDATE audit_events SET action = 'ReadModel' WHERE seq = 1", 1, Problem.EVENT_ALTERED),
        ("DELETE FROM audit_events WHERE seq = 3", 3, Problem.EVENT_MISSING),
        ("DELETE FROM audit_events WHERE seq IN (1, 2)", 1, Problem.EVENT_MISSING),
        ("DELETE FROM audit_events WHERE seq IN (4, 5)", 4, Problem.EVENT_MISSING),
        ("UPDATE audit_events SET seq = 100 WHERE seq = 2", 2, Problem.EVENT_MISSING),
    ],
)
def test_edits_and_deletions_are_found_at_the_first_broken_event(
    store: Store, statement: str, bad_seq: int, problem: Problem
) -> None:
    make_history(store)  # 6 events
    assert audit.verify(store).ok
    sql(store, statement)
    result = audit.verify(store)
    assert not result.ok
    assert (result.first_bad_seq, result.problem) == (bad_seq, problem), result.message
    assert result.checked == bad_seq - 1
    assert str(bad_seq) in result.message


def rewrite_from(store: Store, seq: int, resource: str) -> None:
    """Change event ``seq`` and re-hash it and every later event, as a careful forger would."""
    events = all_events(store)
    prev = events[seq - 2].hash if seq > 1 else "0" * 64
    for event in events[seq - 1 :]:
        fields = event.to_dict()
        fields["prev_hash"] = prev
        if event.seq == seq:
            fields["resource"] = resource
        new_hash = expected_hash(fields)
        sql(
            store,
            "UPDATE audit_events SET resource = :r, prev_hash = :p, hash = :h WHERE seq = :s",
            r=fields["resource"],
            p=prev,
            h=new_hash,
            s=event.seq,
        )
        prev = new_hash


def test_a_replaced_event_breaks_the_link_of_the_next(store: Store) -> None:
    make_history(store)
    event = all_events(store)[2]
    fields = {**event.to_dict(), "resource": "models/other"}
    sql(store, "UPDATE audit_events SET resource = 'models/other', hash = :h WHERE seq = 3",
        h=expected_hash(fields))  # fmt: skip
    result = audit.verify(store)
    assert (result.ok, result.first_bad_seq, result.problem) == (False, 4, Problem.CHAIN_BROKEN)


def test_truncation_and_rewrites_are_caught_by_a_checkpoint(store: Store, tmp_path: Any) -> None:
    key = audit.load_or_create_signing_key(tmp_path / "audit.key")
    make_history(store)
    cp = audit.checkpoint(store, key)
    assert (cp.seq, cp.head_hash) == (6, all_events(store)[-1].hash)
    ModelService(store).create(CTX, "after-checkpoint")
    assert audit.verify(store, cp, audit.public_key_pem(key)).ok

    # Cut the chain back to 4 events: a consistent prefix, so only the checkpoint can tell.
    sql(store, "DELETE FROM audit_events WHERE seq > 4")
    assert audit.verify(store).ok
    result = audit.verify(store, cp, audit.public_key_pem(key))
    assert (result.ok, result.problem, result.first_bad_seq) == (False, Problem.TRUNCATED, 5)
    assert result.signature_verified is True and result.head_seq == 4


def test_a_rehashed_rewrite_is_caught_by_a_checkpoint(store: Store, tmp_path: Any) -> None:
    key = audit.load_or_create_signing_key(tmp_path / "audit.key")
    make_history(store)
    cp = audit.checkpoint(store, key)
    rewrite_from(store, 2, "models/forged")
    assert audit.verify(store).ok  # consistent on its own
    result = audit.verify(store, cp)
    assert (result.ok, result.problem, result.first_bad_seq) == (
        False,
        Problem.CHECKPOINT_MISMATCH,
        6,
    )
    assert result.signature_verified is None


# Concurrency ----------------------------------------------------------------------------------


def test_concurrent_writers_on_two_replicas_keep_a_gapless_chain(fresh_url: str) -> None:
    replicas = [open_store(fresh_url), open_store(fresh_url)]
    threads_n, per_thread = 8, 20
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads_n)

    def writer(i: int) -> None:
        svc = ModelService(replicas[i % 2])
        ctx = RequestContext(principal=f"writer-{i}")
        try:
            barrier.wait()
            m = svc.create(ctx, f"w{i}")
            for j in range(per_thread - 1):
                m = svc.update(ctx, m.name, m.etag, ["description"], {"description": str(j)})
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        events = all_events(replicas[0])
        assert [e.seq for e in events] == list(range(1, threads_n * per_thread + 1))
        for i in range(threads_n):
            mine = [e for e in events if e.actor == f"writer-{i}"]
            assert [e.action for e in mine] == ["CreateModel"] + ["UpdateModel"] * (per_thread - 1)
            # each update's "before" is the previous write's "after"
            for a, b in itertools.pairwise(mine):
                assert b.before_sha256 == a.after_sha256
        result = audit.verify(replicas[1])
        assert result.ok and result.head_seq == threads_n * per_thread, result.message
    finally:
        for r in replicas:
            r.close()


def test_event_times_follow_the_sequence_when_writers_commit_out_of_order(
    fresh_url: str,
) -> None:
    """Transactions that began earlier append later (each waits a different while before it
    commits): an event's time is when it was appended, so times never go back along the
    sequence, and a reader tailing by ``since`` misses nothing."""
    replicas = [open_store(fresh_url), open_store(fresh_url)]
    barrier = threading.Barrier(6)

    def writer(i: int) -> None:
        barrier.wait()
        with replicas[i % 2].write(RequestContext(principal=f"w{i}"), "Test") as tx:
            time.sleep(0.05 * (5 - i))  # the first to begin commits last
            tx.record("Test", f"things/{i}", None, {"i": i})

    try:
        for _ in range(3):
            with ThreadPoolExecutor(6) as pool:
                list(pool.map(writer, range(6)))
        events = all_events(replicas[0])
        assert [e.seq for e in events] == list(range(1, 19))
        times = [e.time for e in events]
        assert times == sorted(times)
        # Tailing: everything at or after an event's time is that event and those after it.
        for e in events:
            later = {x.seq for x in audit.list_events(replicas[1], since=e.time)[0]}
            assert later >= set(range(e.seq, len(events) + 1))
        result = audit.verify(replicas[1])
        assert result.ok and result.head_seq == 18, result.message
    finally:
        for r in replicas:
            r.close()


def test_events_rendered_with_their_time_are_still_appended(fresh_url: str) -> None:
    """A server of the previous version renders each event's time itself (no time gap): the
    append function takes such events as they are, during an upgrade."""
    if fresh_url.startswith("sqlite"):
        pytest.skip("the append function is PostgreSQL's")
    from datetime import datetime

    from sqlalchemy import bindparam
    from sqlalchemy.dialects.postgresql import JSONB

    from controlplane.audit._canonical import utc_text
    from controlplane.audit._chain import AUDIT_LOCK_KEY, hash_template

    store = open_store(fresh_url)
    try:
        ModelService(store).create(CTX, "new-way")
        when = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
        fields = {
            "time": utc_text(when),
            "actor": "old-server",
            "action": "Test",
            "resource": "things/old",
            "request_id": "",
            "before_sha256": "",
            "after_sha256": "",
        }
        head, mid, tail = hash_template(fields)
        call = text("SELECT modelplane_audit_append(:k, :events)").bindparams(
            bindparam("events", type_=JSONB)
        )
        event = {**fields, "head": head, "mid": mid, "tail": tail}
        with Session(store.engines.write) as session:
            session.connection().execute(call, {"k": AUDIT_LOCK_KEY, "events": [event]})
            session.commit()
        ModelService(store).create(CTX, "new-again")
        events = all_events(store)
        assert [(e.actor, e.seq) for e in events][1] == ("old-server", 2)
        assert events[1].time == when
        result = audit.verify(store)
        assert result.ok and result.head_seq == 3, result.message
    finally:
        store.close()


# Listing and export ---------------------------------------------------------------------------


def test_list_events_filters_and_pages(store: Store) -> None:
    svc = ModelService(store)
    a = svc.create(CTX, "a")
    svc.create(RequestContext(principal="bob"), "ab")
    svc.update(CTX, a.name, a.etag, ["description"], {"description": "x"})
    svc.create(RequestContext(principal="bob"), "c")
    events = all_events(store)

    def seqs(**kw: Any) -> list[int]:
        return [e.seq for e in audit.list_events(store, page_size_=100, **kw)[0]]

    assert seqs(resource="models/a") == [1, 3]
    assert seqs(actor="bob") == [2, 4]
    assert seqs(resource="models/ab", actor="bob") == [2]
    assert seqs(since=events[2].time) == [3, 4]
    assert seqs(since=events[2].time.astimezone(UTC) + timedelta(hours=1)) == []

    page1, token = audit.list_events(store, page_size_=3)
    page2, token2 = audit.list_events(store, page_size_=3, page_token=token)
    assert [e.seq for e in page1] == [1, 2, 3] and [e.seq for e in page2] == [4]
    assert token2 == ""
    with pytest.raises(InvalidArgument) as info:
        audit.list_events(store, actor="bob", page_size_=3, page_token=token)
    assert info.value.reason == "INVALID_PAGE_TOKEN"
    with pytest.raises(InvalidArgument) as info:
        audit.list_events(store, page_size_=-1)
    assert info.value.reason == "INVALID_PAGE_SIZE"


def test_export_jsonl_writes_every_event_verifiably(store: Store, tmp_path: Any) -> None:
    make_history(store)
    out = tmp_path / "audit.jsonl"
    assert audit.export_jsonl(store, out) == 6
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["seq"] for line in lines] == [1, 2, 3, 4, 5, 6]
    prev = "0" * 64
    for line in lines:
        assert line["prev_hash"] == prev and line["hash"] == expected_hash(line)
        prev = line["hash"]


def test_migration_matches_the_table(fresh_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from controlplane.store.tables import metadata

    store = Store.open(fresh_url)
    try:
        with store.engines.write.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn), metadata)
        assert [d for d in diffs if "audit_events" in repr(d)] == []
    finally:
        store.close()


@pytest.mark.parametrize(
    "actor,resource",
    [
        ("alice", "models/m"),
        ('quote " and \\ backslash', 'resource "seq":0 "prev_hash":""'),
        ("ünïcødé ✓", "line\nbreak\ttab\u0001"),
    ],
)
def test_hash_template_gaps_give_the_canonical_event_hash(actor: str, resource: str) -> None:
    from datetime import datetime

    from controlplane.audit._chain import AuditEvent, hash_template

    event = AuditEvent(
        seq=123456789,
        time=datetime(2026, 11, 26, 10, 0, 0, 1, tzinfo=UTC),
        actor=actor,
        action="CreateModelVersion",
        resource=resource,
        request_id="r1",
        before_sha256="",
        after_sha256="f" * 64,
        prev_hash="a" * 64,
        hash="",
    )
    fields = event.hashed_fields()
    head, mid, tail = hash_template(
        {k: v for k, v in fields.items() if k not in ("prev_hash", "seq")}
    )
    text_ = head + event.prev_hash + mid + str(event.seq) + tail
    assert hashlib.sha256(text_.encode("utf-8")).hexdigest() == event.computed_hash()


# Events numbered below 1 ------------------------------------------------------------------------


def _forge_below_one(url: str, seqs: list[int]) -> None:
    """Insert events numbered ``seqs`` with made-up hashes, as into a database of before the
    CHECK on ``seq`` (revision 0011) or one tampered with directly: the constraint is taken
    away for the insert and the database migrated again, keeping the rows."""
    from alembic import command

    from controlplane.store.migrate import alembic_config, upgrade

    store = Store.open(url)
    try:
        cfg = alembic_config()
        with store.engines.write.connect() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0010")
            conn.commit()
        for seq in seqs:
            sql(
                store,
                "INSERT INTO audit_events (seq, time, actor, action, resource, request_id, "
                "before_sha256, after_sha256, prev_hash, hash) VALUES (:seq, CURRENT_TIMESTAMP, "
                "'mallory', 'DeleteModel', 'models/prod', '', '', '', :prev, :hash)",
                seq=seq,
                prev="0" * 64,
                hash=f"{seq % 16:x}" * 64,
            )
        upgrade(store.engines)
    finally:
        store.close()


def test_events_numbered_below_one_fail_verification_and_are_not_listed(
    fresh_url: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    cp = start_controlplane(tmp_path, fresh_url)
    try:
        with cp.client() as c:
            for i in range(3):
                c.create_model(f"m{i}")
            checkpoint = c.create_checkpoint()
    finally:
        cp.handle.stop(0)
    _forge_below_one(fresh_url, [0, -1])

    cp = start_controlplane(tmp_path, fresh_url)
    try:
        with cp.client() as c:
            assert [e.seq for e in c.audit_events()] == [1, 2, 3]
            assert [e.seq for e in c.audit_events(actor="mallory")] == []
            assert [e.seq for e in c.audit_events(resource="models/prod", page_size=1)] == []
            sink = tmp_path / "export.jsonl"
            with sink.open("wb") as f:
                c.export_audit(f)
            assert [json.loads(line)["seq"] for line in sink.read_text().splitlines()] == [1, 2, 3]
            for result in (c.verify_audit(), c.verify_audit(checkpoint)):
                assert not result.ok
                assert (result.problem, result.first_bad_seq) == ("EVENT_OUT_OF_RANGE", -1)
                assert "event -1 is out of range" in result.message and "2 events" in result.message
            assert c.verify_audit(checkpoint).signature == "verified"
            # Appends go on from the chain's head, past the rows below 1.
            c.create_model("after")
            assert [e.seq for e in c.audit_events()] == [1, 2, 3, 4]
        capsys.readouterr()
        code = main(["--server", cp.address, "--as", "auditor", "audit", "verify"])
        assert code == 1 and "audit chain broken at event -1" in capsys.readouterr().err
    finally:
        cp.handle.stop(0)

    # With the constraint in force a row below 1 is refused.
    store = open_store(fresh_url)
    try:
        with pytest.raises(IntegrityError):
            sql(
                store,
                "INSERT INTO audit_events (seq, time, actor, action, resource, request_id, "
                "before_sha256, after_sha256, prev_hash, hash) VALUES (-2, CURRENT_TIMESTAMP, "
                "'mallory', 'A', 'r', '', '', '', '', '')",
            )
    finally:
        store.close()


@pytest.mark.parametrize("seqs", [[0], [-1], [0, -1]])
def test_a_row_below_one_is_never_the_head_of_an_empty_chain(
    fresh_url: str, seqs: list[int]
) -> None:
    _forge_below_one(fresh_url, seqs)
    store = open_store(fresh_url)
    try:
        ModelService(store).create(CTX, "first")
        (event,) = all_events(store)
        assert (event.seq, event.prev_hash) == (1, audit.GENESIS_HASH)
        result = audit.verify(store)
        assert (result.ok, result.problem, result.first_bad_seq) == (
            False,
            Problem.EVENT_OUT_OF_RANGE,
            min(seqs),
        )
        sql(store, "DELETE FROM audit_events WHERE seq < 1")
        assert audit.verify(store).ok
    finally:
        store.close()
