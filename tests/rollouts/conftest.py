"""Fixtures of the rollout tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from modelplane.testing.processes import Server


@pytest.fixture
def procs() -> Iterator[list[Server]]:
    """Every process a test starts; all stopped at the end, the last started first."""
    started: list[Server] = []
    yield started
    for server in reversed(started):
        server.stop()
