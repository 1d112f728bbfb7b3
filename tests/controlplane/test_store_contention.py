"""The store under contention on PostgreSQL, with a real control plane: writes that record
governance about a version wait for its model's lock (a forced DeleteModel holds it), a write
stuck behind a held row lock gives up as UNAVAILABLE, and values PostgreSQL cannot store are
the caller's INVALID_ARGUMENT, never INTERNAL."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from modelplane import Client
from modelplane.errors import InvalidArgument, Unavailable
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, start_controlplane
from tests.controlplane.test_request_id_reuse import versions

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def plane(pg_url: str, tmp_path: Path) -> Iterator[RunningControlPlane]:
    cp = start_controlplane(tmp_path, pg_url)
    yield cp
    cp.handle.stop(0)


def _while_model_locked(pg_url: str, model_id: str, call: Callable[[], Any]) -> tuple[bool, Any]:
    """Run ``call`` in a thread while another transaction holds ``model_id``'s row lock (as a
    forced DeleteModel does); whether it was still waiting a second later, and its result."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except Exception as exc:
            outcome["value"] = exc

    with psycopg.connect(pg_url) as holder:
        holder.execute("SELECT 1 FROM models WHERE id = %s FOR UPDATE", (model_id,))
        worker = threading.Thread(target=run)
        worker.start()
        time.sleep(1.0)
        waited = worker.is_alive()
        holder.rollback()
    worker.join(30)
    return waited, outcome.get("value")


@pytest.mark.postgres
@pytest.mark.parametrize("what", ["approve", "evaluate_gate"])
def test_approvals_and_gate_decisions_wait_for_the_models_lock(
    plane: RunningControlPlane, pg_url: str, tmp_path: Path, what: str
) -> None:
    """Committed after a forced delete, an approval or gate decision would outlive its model
    and count for a version 1 registered again with the same artifact."""
    target = unique("prod")
    with plane.client("alice") as alice:
        model_id, (v1, _) = versions(alice, tmp_path)
        alice.create_policy(unique("p"), target=target, rules=["true"])
    with plane.client("bob") as bob:
        call = getattr(bob, what)
        waited, value = _while_model_locked(pg_url, model_id, lambda: call(model_id, v1, target))
    assert waited, f"{what} did not wait for the model's lock"
    assert not isinstance(value, Exception), value


@pytest.mark.postgres
def test_a_write_behind_a_held_row_lock_gives_up_as_unavailable(
    pg_url: str, tmp_path: Path
) -> None:
    """A stuck lock holder does not keep waiting requests' connections for ever: they give up
    after the lock timeout, retryably, and the server serves others meanwhile. The timeout is
    30 s (as SQLite's busy timeout) unless the URL sets its own ``options``, as here (1 s)."""
    from controlplane.store import Store

    store = Store.open(pg_url)  # migrates on a connection it then gives back to the pool
    try:
        with store.engines.write.connect() as conn:
            assert conn.exec_driver_sql("SHOW lock_timeout").scalar() == "30s"
    finally:
        store.close()
    quick = start_controlplane(tmp_path, f"{pg_url}?options=-c%20lock_timeout%3D1000")
    try:
        with quick.client("alice") as alice:
            model_id, other = unique(), unique()
            alice.create_model(model_id)
            alice.create_model(other)
            with psycopg.connect(pg_url) as holder:
                holder.execute("SELECT 1 FROM models WHERE id = %s FOR UPDATE", (model_id,))
                stuck = Client(quick.address, principal="alice", timeout=30, retries=0)
                try:
                    with pytest.raises(Unavailable) as gave_up:
                        stuck.update_model(model_id, description="waits")
                finally:
                    stuck.close()
                assert gave_up.value.reason == "DATABASE_UNAVAILABLE"
                assert alice.update_model(other, description="free").description == "free"
                holder.rollback()
            assert alice.get_model(model_id).description == ""
    finally:
        quick.handle.stop(0)


@pytest.mark.postgres
@pytest.mark.parametrize("url", ["https://hooks.example.com/a\x00b", "https://h.example/a b"])
def test_a_webhook_url_with_nul_or_whitespace_is_refused(
    plane: RunningControlPlane, tmp_path: Path, url: str
) -> None:
    with plane.client("alice") as alice:
        model_id, (v1,) = versions(alice, tmp_path, count=1)
        with pytest.raises(InvalidArgument) as refused:
            alice.create_deployment(
                unique("d"), model=model_id, champion_version=v1, webhook_url=url
            )
        assert refused.value.reason == "INVALID_WEBHOOK_URL"
        name = unique("d")
        alice.create_deployment(name, model=model_id, champion_version=v1)
        with pytest.raises(InvalidArgument) as refused:
            alice.update_deployment(name, webhook_url=url)
        assert refused.value.reason == "INVALID_WEBHOOK_URL"


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("pgoptions", "lock_timeout", "statement_timeout"),
    [("-c statement_timeout=5000", "30s", "5s"), ("-c lock_timeout=1000", "1s", "0")],
)
def test_pgoptions_still_apply_beside_the_lock_timeout(
    pg_url: str,
    monkeypatch: pytest.MonkeyPatch,
    pgoptions: str,
    lock_timeout: str,
    statement_timeout: str,
) -> None:
    """Settings given through PGOPTIONS (a search_path, a statement timeout) are kept, and a
    lock_timeout given there wins over the default."""
    from controlplane.store.engine import create_engines

    monkeypatch.setenv("PGOPTIONS", pgoptions)
    engines = create_engines(pg_url)
    try:
        with engines.write.connect() as conn:
            assert conn.exec_driver_sql("SHOW lock_timeout").scalar() == lock_timeout
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == statement_timeout
    finally:
        engines.write.dispose()


def test_a_full_pool_and_an_unstorable_value_are_said_as_such() -> None:
    """No free pooled connection within the pool's timeout is as retryable as a busy lock;
    a value the database refuses to store (a check missed it) is the request's fault."""
    from sqlalchemy.exc import DataError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    from controlplane.store.store import _translated

    with pytest.raises(Unavailable) as busy, _translated():
        raise PoolTimeout("QueuePool limit of size 10 overflow 20 reached")
    assert busy.value.reason == "DATABASE_UNAVAILABLE"
    with pytest.raises(InvalidArgument) as unstorable, _translated():
        raise DataError("INSERT ...", {}, ValueError("text fields cannot contain NUL (0x00)"))
    assert unstorable.value.reason == "UNSTORABLE_VALUE"
    assert "NUL" in unstorable.value.message and "INSERT" not in unstorable.value.message
    # Other data errors may come from what the server computed: not the caller's fault.
    with pytest.raises(DataError), _translated():
        raise DataError("UPDATE ...", {}, ValueError("value too long for type varchar(40)"))
