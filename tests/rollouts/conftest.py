"""Fixtures of the rollout tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelplane import Client
from modelplane.testing.processes import Server
from tests.conftest import PG_ADMIN_URL
from tests.controlplane.conftest import RunningControlPlane, _start


@pytest.fixture
def procs() -> Iterator[list[Server]]:
    """Every process a test starts; all stopped at the end, the last started first."""
    started: list[Server] = []
    yield started
    for server in reversed(started):
        server.stop()


@pytest.fixture
def c(tmp_path: Path) -> Iterator[Client]:
    """A client of a control plane of its own (SQLite, blue/green switch of 0.2 s)."""
    cp: RunningControlPlane = _start(
        tmp_path, f"sqlite:///{tmp_path / 'cp.db'}", blue_green_switch_seconds=0.2
    )
    with cp.client() as client:
        yield client
    cp.handle.stop(0)


@pytest.fixture
def own_database(pg_url: str) -> Iterator[tuple[str, str]]:
    """A database of this test's own (its name, and its URL), which it may rename: the run's
    shared one is left alone. ``pg_url`` skips, or fails, without a PostgreSQL server."""
    import psycopg

    name = f"modelplane_own_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name, f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            for db in (name, f"{name}_away"):
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (db,),
                )
                admin.execute(f'DROP DATABASE IF EXISTS "{db}"')
