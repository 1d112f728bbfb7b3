"""A database that cannot grow answers RESOURCE_EXHAUSTED (STORAGE_FULL), not a busy database,
and every database error the client is told of only briefly has its cause in the server's log.

SQLite is run for real in a control-plane process under a small ``RLIMIT_FSIZE`` (its files
cannot grow past it: EFBIG); PostgreSQL's disk-full is its driver's own error."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
import structlog
from sqlalchemy.exc import InternalError, OperationalError

from controlplane.store import Store
from controlplane.store.store import _translated
from modelplane import Client, ModelplaneError, ResourceExhausted, Unavailable
from modelplane.testing import launch, processes
from modelplane.testing.processes import free_port

#: What the database's files may grow to: room for the schema, not for many big models.
FSIZE_BYTES = 2_000_000


def test_a_sqlite_database_that_cannot_grow_is_storage_full(tmp_path: Path) -> None:
    launcher = launch.prefix(file_size_limit=FSIZE_BYTES)
    server = processes.controlplane(tmp_path, f"sqlite:///{tmp_path / 'cp.db'}", launcher=launcher)
    server.start(60)
    refused: ModelplaneError | None = None
    try:
        with Client(server.address, principal="alice", retries=1, timeout=30) as c:
            c.create_model("kept")
            for i in range(FSIZE_BYTES // 8000 + 50):
                try:
                    c.create_model(f"m{i}", description="y" * 8000)
                except ModelplaneError as exc:
                    refused = exc
                    break
            # Reads still work, and what was stored is intact.
            assert c.get_model("kept").name == "models/kept"
    finally:
        server.stop()
    assert refused is not None, "the database grew past the file size limit"
    assert isinstance(refused, ResourceExhausted), refused
    assert refused.reason == "STORAGE_FULL"
    assert "busy" not in str(refused)
    causes = [x for x in server.json_lines() if x.get("event") == "database error"]
    assert causes and causes[0]["level"] == "warning"
    assert causes[0]["storage_full"] is True
    assert "SQLITE_" in causes[0]["error"]  # SQLite's own words and code


@pytest.mark.parametrize(
    "error",
    [
        OperationalError(
            "INSERT", {}, psycopg.errors.DiskFull('could not extend file "base/1/2": No space')
        ),
        InternalError(
            "INSERT", {}, psycopg.errors.InternalError_("could not extend file: File too large")
        ),
    ],
    ids=["disk_full_53100", "file_too_large"],
)
def test_postgresqls_disk_full_is_storage_full(error: Exception) -> None:
    with (
        structlog.testing.capture_logs() as logs,
        pytest.raises(ResourceExhausted) as full,
        _translated(),
    ):
        raise error
    assert full.value.reason == "STORAGE_FULL"
    assert [x["log_level"] for x in logs if x["event"] == "database error"] == ["warning"]


def test_an_unreachable_database_is_unavailable_with_its_cause_logged() -> None:
    store = Store.open(f"postgresql://postgres@127.0.0.1:{free_port()}/none", migrate=False)
    try:
        with (
            structlog.testing.capture_logs() as logs,
            pytest.raises(Unavailable) as down,
            store.read() as tx,
        ):
            tx.session.connection()
    finally:
        store.close()
    assert down.value.reason == "DATABASE_UNAVAILABLE"
    causes = [x for x in logs if x["event"] == "database error"]
    assert causes and causes[0]["log_level"] == "warning"
    assert "refused" in causes[0]["error"].lower()
    assert causes[0]["storage_full"] is False
