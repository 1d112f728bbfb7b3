"""Concurrent CreateDeployment calls for one name, through two real control-plane replicas
sharing a database (SQLite and PostgreSQL): one creates it, and every other is refused with
ALREADY_EXISTS and the reason DEPLOYMENT_EXISTS, as a later call would be, whether it saw the
deployment before taking the model's lock or ran into the winner's row when inserting its own."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest

from modelplane import Client
from modelplane.errors import ModelplaneError
from tests.conftest import unique
from tests.controlplane.conftest import start_controlplane
from tests.controlplane.test_deployments_api import register_versions

pytestmark = pytest.mark.timeout(180)

ROUNDS = 8
CALLERS = 4


def test_concurrent_creates_of_one_name_lose_with_deployment_exists(
    tmp_path: Path, db_url: str
) -> None:
    planes = [
        start_controlplane(tmp_path / "a", db_url),
        start_controlplane(tmp_path / "b", db_url),
    ]
    clients = [p.client() for p in planes]
    try:
        model_id, versions = register_versions(clients[0], tmp_path, 1)
        outcomes: Counter[object] = Counter()
        lock = threading.Lock()
        for _ in range(ROUNDS):
            name = unique("race")
            barrier = threading.Barrier(CALLERS)

            def create(c: Client, name: str = name, barrier: threading.Barrier = barrier) -> None:
                barrier.wait()
                try:
                    c.create_deployment(name, model=model_id, champion_version=versions[0])
                    outcome: object = "created"
                except ModelplaneError as exc:
                    outcome = (type(exc).__name__, exc.reason)
                with lock:
                    outcomes[outcome] += 1

            threads = [
                threading.Thread(target=create, args=(clients[i % 2],)) for i in range(CALLERS)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert outcomes == {
            "created": ROUNDS,
            ("AlreadyExists", "DEPLOYMENT_EXISTS"): ROUNDS * (CALLERS - 1),
        }
    finally:
        for c in clients:
            c.close()
        for p in planes:
            p.handle.stop(0)
