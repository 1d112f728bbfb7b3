"""The registry's store at its edges, through a real control plane: integers past a 32-bit
column's range, blind and etag-guarded policy writes racing an update (PostgreSQL), alias
history that runs forward in time when a move waits for another (PostgreSQL), and approvals
pages that hold still while approvals are added."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import psycopg
import pytest

from controlplane.store.store import request_lock_key
from modelplane import Client
from modelplane.errors import Aborted, InvalidArgument, NotFound
from modelplane.testing import onnx_models
from modelplane.v1 import governance_pb2, registry_pb2
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, start_controlplane
from tests.controlplane.test_request_id_reuse import versions


@pytest.fixture
def controlplane_pg(tmp_path: Path, pg_url: str) -> Iterator[RunningControlPlane]:
    """A control plane on the run's PostgreSQL database."""
    cp = start_controlplane(tmp_path, pg_url)
    yield cp
    cp.handle.stop(0)


class Background:
    """``call`` in a thread; ``result()`` its answer, or raises what it raised."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.answer: Any = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.answer = call()
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=run)
        self.thread.start()

    def result(self) -> Any:
        self.thread.join(60)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error
        return self.answer


def as_(cp: RunningControlPlane, who: str, call: Callable[[Client], Any]) -> Callable[[], Any]:
    """``call`` with a client of ``who``'s, closed afterwards."""

    def run() -> Any:
        with cp.client(who) as c:
            return call(c)

    return run


def wait_for_waiters(url: str, count: int) -> None:
    """Until ``count`` sessions of the database wait for a lock (row or advisory)."""
    deadline = time.monotonic() + 20
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchone()
            if row is not None and row[0] >= count:
                return
            time.sleep(0.02)
    raise AssertionError(f"fewer than {count} sessions came to wait for a lock")


def _token(query: dict[str, str], key: list[object]) -> str:
    digest = hashlib.sha256(json.dumps(query, sort_keys=True).encode()).hexdigest()[:16]
    payload = json.dumps({"q": digest, "k": key}).encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


# 64-bit integers against 32-bit columns -------------------------------------------------------


def test_a_revision_or_page_key_past_32_bits_is_not_an_internal_error(
    controlplane_any: RunningControlPlane, tmp_path: Path
) -> None:
    """policy_revisions.revision and alias_events.id are 32-bit on PostgreSQL: a larger value
    from the caller is a revision that does not exist, or a page token no list handed out."""
    pid, model_id = unique("p"), unique()
    with controlplane_any.client() as c:
        c.create_policy(pid, target=unique("t"), rules=["true"])
        c.create_model(model_id)
        c.register_version(
            model_id,
            onnx_models.save(onnx_models.mlp(4, (8,), 2), tmp_path / "m.onnx"),
            capture_env=False,
        )
        c.set_alias(model_id, "champion", 1)
        for revision in (2**31 - 1, 2**31, 2**40, 2**63 - 1):
            with pytest.raises(NotFound) as missing:
                c.get_policy(pid, revision=revision)
            assert missing.value.reason == "POLICY_NOT_FOUND"
        name = f"models/{model_id}"
        in_range = registry_pb2.ListAliasHistoryRequest(
            name=name, page_token=_token({"list": "aliasHistory", "name": name}, [2**31 - 1])
        )
        assert len(c._call(c.registry.ListAliasHistory, in_range).events) == 1
        for key in (2**31, -(2**31) - 1, 2**62):
            request = registry_pb2.ListAliasHistoryRequest(
                name=name, page_token=_token({"list": "aliasHistory", "name": name}, [key])
            )
            with pytest.raises(InvalidArgument) as bad:
                c._call(c.registry.ListAliasHistory, request)
            assert bad.value.reason == "INVALID_PAGE_TOKEN", key


# Policies (PostgreSQL) ------------------------------------------------------------------------


@pytest.mark.postgres
def test_blind_policy_updates_wait_for_each_other(controlplane_pg: RunningControlPlane) -> None:
    """Two updates without an etag that arrive while the policy is busy both apply, one after
    the other: neither fails with ETAG_MISMATCH for a change it never saw."""
    pid = unique("p")
    with controlplane_pg.client() as c:
        c.create_policy(pid, target=unique("t"), rules=["true"])
    with psycopg.connect(controlplane_pg.db_url) as holder:
        holder.execute("SELECT 1 FROM policies WHERE id = %s FOR UPDATE", (pid,))
        first = Background(
            as_(controlplane_pg, "bob", lambda c: c.update_policy(pid, rules=["1 == 1"]))
        )
        wait_for_waiters(controlplane_pg.db_url, 1)
        second = Background(
            as_(controlplane_pg, "carol", lambda c: c.update_policy(pid, rules=["2 == 2"]))
        )
        wait_for_waiters(controlplane_pg.db_url, 2)
        holder.rollback()
        revisions = sorted([first.result().revision, second.result().revision])
    assert revisions == [2, 3]
    with controlplane_pg.client() as c:
        assert c.get_policy(pid).revision == 3
        assert list(c.get_policy(pid).rules) == ["2 == 2"]
        assert [list(c.get_policy(pid, revision=r).rules) for r in (2, 3)] == [
            ["1 == 1"],
            ["2 == 2"],
        ]


@pytest.mark.postgres
def test_a_delete_with_a_stale_etag_spares_a_newer_revision(
    controlplane_pg: RunningControlPlane,
) -> None:
    """An update that commits while a delete waits makes the delete's etag stale: the delete is
    refused (ABORTED) and the newer revision stays."""
    pid = unique("p")
    with controlplane_pg.client() as c:
        created = c.create_policy(pid, target=unique("t"), rules=["true"])
    with psycopg.connect(controlplane_pg.db_url) as holder:
        holder.execute("SELECT 1 FROM policies WHERE id = %s FOR UPDATE", (pid,))
        update = Background(
            as_(controlplane_pg, "bob", lambda c: c.update_policy(pid, rules=["1 == 1"]))
        )
        wait_for_waiters(controlplane_pg.db_url, 1)
        delete = Background(
            as_(controlplane_pg, "alice", lambda c: c.delete_policy(pid, etag=created.etag))
        )
        wait_for_waiters(controlplane_pg.db_url, 2)
        holder.rollback()
        assert update.result().revision == 2
        with pytest.raises(Aborted) as stale:
            delete.result()
    assert stale.value.reason == "ETAG_MISMATCH"
    with controlplane_pg.client() as c:
        kept = c.get_policy(pid)
        assert kept.revision == 2 and list(kept.rules) == ["1 == 1"]
        c.delete_policy(pid, etag=kept.etag)


# Alias history (PostgreSQL) -------------------------------------------------------------------


@pytest.mark.postgres
def test_alias_history_runs_forward_in_time_when_a_move_waits(
    controlplane_pg: RunningControlPlane, tmp_path: Path
) -> None:
    """A move that started first but committed second (it waited) is stamped after the move
    that overtook it, so as_of answers what the alias pointed to at each instant, and a retry
    of the waiting request answers the move it made."""
    url = controlplane_pg.db_url
    with controlplane_pg.client() as c:
        model_id, (v1, v2) = versions(c, tmp_path)
        c.set_alias(model_id, "champion", v1)
    late_id = str(uuid.uuid4())
    with psycopg.connect(url) as holder:
        # The late move starts its transaction, then waits behind its request id's lock.
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (request_lock_key(late_id),))
        late = Background(
            as_(
                controlplane_pg,
                "bob",
                lambda c: c.set_alias(model_id, "champion", v1, reason="late", request_id=late_id),
            )
        )
        wait_for_waiters(url, 1)
        time.sleep(0.05)
        with controlplane_pg.client("carol") as carol:
            overtaking = carol.set_alias(model_id, "champion", v2, reason="overtaking")
        holder.rollback()
        moved = late.result()
    one, two = (f"models/{model_id}/versions/{v}" for v in (v1, v2))
    with controlplane_pg.client() as c:
        history = list(c.alias_history(model_id, "champion"))  # newest first
        assert [e.reason for e in history[:2]] == ["late", "overtaking"]
        times = [e.time.ToDatetime(tzinfo=UTC) for e in history]
        assert all(a > b for a, b in pairwise(times)), times
        assert moved.update_time.ToDatetime(tzinfo=UTC) == times[0]
        at_overtaking = overtaking.update_time.ToDatetime(tzinfo=UTC)
        assert at_overtaking == times[1]
        assert c.get_alias(model_id, "champion", as_of=at_overtaking).version == two
        assert c.get_alias(model_id, "champion", as_of=times[0]).version == one
        assert c.get_alias(model_id, "champion", as_of=datetime.now(UTC)).version == one
        # The waiting request sent again replays the move it made.
        with controlplane_pg.client("bob") as bob:
            again = bob.set_alias(model_id, "champion", v1, reason="late", request_id=late_id)
        assert again.version == one and again.reason == "late"
        c.delete_alias(model_id, "champion")
        last = next(iter(c.alias_history(model_id, "champion")))
        assert last.time.ToDatetime(tzinfo=UTC) > times[0]


# Approvals pages ------------------------------------------------------------------------------


def test_an_approval_added_between_pages_repeats_no_row(
    controlplane_any: RunningControlPlane, tmp_path: Path
) -> None:
    target = unique("prod")
    with controlplane_any.client("alice") as alice:
        model_id, (v1, _) = versions(alice, tmp_path)
        alice.create_policy(unique("p"), target=target, rules=["true"])
    for who in ("bob", "carol", "dave"):
        with controlplane_any.client(who) as c:
            c.approve(model_id, v1, target, comment=who)
    parent = f"models/{model_id}/versions/{v1}"
    with controlplane_any.client("alice") as alice:
        request = governance_pb2.ListApprovalsRequest(parent=parent, page_size=2)
        first = alice._call(alice.governance.ListApprovals, request)
        assert [a.approver for a in first.approvals] == ["dave", "carol"]
        with controlplane_any.client("erin") as erin:
            erin.approve(model_id, v1, target, comment="erin")
        request.page_token = first.next_page_token
        second = alice._call(alice.governance.ListApprovals, request)
        assert [a.approver for a in second.approvals] == ["bob"]
        assert not second.next_page_token
        assert all(a.current for a in [*first.approvals, *second.approvals])
        assert [a.approver for a in alice.list_approvals(model_id, v1)] == [
            "erin",
            "dave",
            "carol",
            "bob",
        ]
        # Page by page, one at a time, the whole list in order and each row once.
        seen: list[str] = []
        request = governance_pb2.ListApprovalsRequest(parent=parent, page_size=1)
        while True:
            page = alice._call(alice.governance.ListApprovals, request)
            seen += [a.approver for a in page.approvals]
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token
        assert seen == ["erin", "dave", "carol", "bob"]
