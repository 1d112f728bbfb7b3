"""``MODELPLANE_REUSE_PORT`` on a single server (several servers sharing a port by hand) still
migrates a fresh database: only ``--workers`` workers, whose supervisor migrated it, skip it."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import unique
from tests.controlplane.conftest import start_controlplane


def test_a_server_with_reuse_port_migrates_a_fresh_database(tmp_path: Path) -> None:
    cp = start_controlplane(tmp_path, f"sqlite:///{tmp_path / 'fresh.db'}", reuse_port=True)
    try:
        with cp.client() as client:
            name = unique()
            client.create_model(name)
            assert client.get_model(name).name == f"models/{name}"
    finally:
        cp.handle.stop(0)
