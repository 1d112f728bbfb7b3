"""Fixtures of the rollout tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelplane import Client
from modelplane.testing.processes import Server
from tests.conftest import private_database
from tests.controlplane.conftest import RunningControlPlane, start_controlplane


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
    cp: RunningControlPlane = start_controlplane(
        tmp_path, f"sqlite:///{tmp_path / 'cp.db'}", blue_green_switch_seconds=0.2
    )
    with cp.client() as client:
        yield client
    cp.handle.stop(0)


@pytest.fixture
def own_database(pg_url: str) -> Iterator[tuple[str, str]]:
    """A database of this test's own (its name, and its URL), which it may rename to NAME_away:
    the run's shared one is left alone. ``pg_url`` skips, or fails, without a PostgreSQL
    server."""
    name = f"modelplane_own_{uuid.uuid4().hex[:10]}"
    with private_database(name, also_drop=(f"{name}_away",)) as url:
        yield name, url
