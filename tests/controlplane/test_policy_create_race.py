"""Concurrent policy writes through two real control-plane replicas sharing a database (SQLite
and PostgreSQL): callers that lose a race for a policy id or a target get the reason a later
call would get (POLICY_EXISTS, TARGET_HAS_POLICY), whether they saw the winner when checking or
ran into its row when writing their own, and exactly one of them wins each round."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from modelplane import Client
from modelplane.errors import ModelplaneError
from tests.conftest import unique
from tests.controlplane.conftest import start_controlplane

pytestmark = pytest.mark.timeout(180)

ROUNDS = 6
CALLERS = 4


def _race(clients: list[Client], call: Callable[[Client, int], object]) -> Counter[object]:
    """Run ``call(client, i)`` from CALLERS threads released together, over both replicas."""
    outcomes: Counter[object] = Counter()
    lock = threading.Lock()
    barrier = threading.Barrier(CALLERS)

    def one(i: int) -> None:
        c = clients[i % len(clients)]
        barrier.wait()
        try:
            call(c, i)
            outcome: object = "done"
        except ModelplaneError as exc:
            outcome = (type(exc).__name__, exc.reason)
        with lock:
            outcomes[outcome] += 1

    threads = [threading.Thread(target=one, args=(i,)) for i in range(CALLERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


def test_concurrent_policy_writes_lose_with_their_reason(tmp_path: Path, db_url: str) -> None:
    planes = [
        start_controlplane(tmp_path / "a", db_url),
        start_controlplane(tmp_path / "b", db_url),
    ]
    clients = [p.client() for p in planes]
    try:
        same_id: Counter[object] = Counter()
        same_target: Counter[object] = Counter()
        moved: Counter[object] = Counter()
        for _ in range(ROUNDS):
            pid = unique("p")
            same_id += _race(
                clients,
                lambda c, i, pid=pid: c.create_policy(pid, target=unique("t"), rules=["true"]),
            )
            target = unique("t")
            same_target += _race(
                clients,
                lambda c, i, target=target: c.create_policy(
                    unique("p"), target=target, rules=["true"]
                ),
            )
            # Policies that exist, each moved onto one free target at once.
            owners = [unique("p") for _ in range(CALLERS)]
            for owner in owners:
                clients[0].create_policy(owner, target=unique("t"), rules=["true"])
            free = unique("t")
            moved += _race(
                clients,
                lambda c, i, free=free, owners=owners: c.update_policy(owners[i], target=free),
            )
        lost = ROUNDS * (CALLERS - 1)
        assert same_id == {"done": ROUNDS, ("AlreadyExists", "POLICY_EXISTS"): lost}
        assert same_target == {"done": ROUNDS, ("AlreadyExists", "TARGET_HAS_POLICY"): lost}
        assert moved == {"done": ROUNDS, ("AlreadyExists", "TARGET_HAS_POLICY"): lost}
        # Each lost create left nothing behind: one policy per id and per target.
        names = [p.name for p in clients[1].list_policies()]
        assert len(names) == len(set(names))
        targets = [p.target for p in clients[1].list_policies()]
        assert len(targets) == len(set(targets))
    finally:
        for c in clients:
            c.close()
        for p in planes:
            p.handle.stop(0)
