"""Fixtures shared by the whole suite: PostgreSQL databases, a control-plane server, models,
an S3 endpoint."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.s3server import S3_ENV, S3Server, start_s3

#: Fixtures shared by test modules in different folders.
pytest_plugins = ["tests.hook_support"]

PG_ADMIN_URL = os.environ.get(
    "MODELPLANE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def _require_pg() -> bool:
    return os.environ.get("MODELPLANE_REQUIRE_PG", "") not in ("", "0")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run, dropped at the end.

    Skips (or fails, under MODELPLANE_REQUIRE_PG=1) when no server is reachable.
    """
    import psycopg

    name = f"modelplane_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        reason = (
            f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {str(exc).strip().splitlines()[0]}"
        )
        if _require_pg():
            pytest.fail(f"MODELPLANE_REQUIRE_PG=1 but {reason}")
        pytest.skip(reason)
    admin.close()
    with private_database(name) as url:
        yield url


@contextmanager
def private_database(name: str, *, also_drop: tuple[str, ...] = ()) -> Iterator[str]:
    """Create the PostgreSQL database ``name`` and give its URL; at the end, end its sessions
    and drop it (and the databases ``also_drop`` names, which it may have been renamed to)."""
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            for db in (name, *also_drop):
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (db,),
                )
                admin.execute(f'DROP DATABASE IF EXISTS "{db}"')


@contextmanager
def grpc_service(add: Callable[[Any, grpc.Server], None], servicer: Any) -> Iterator[str]:
    """A real gRPC server on a free loopback port serving ``servicer`` (added with ``add``, a
    generated ``add_...Servicer_to_server``) for the ``with`` block; gives its address."""
    server = grpc.server(futures.ThreadPoolExecutor(2))
    add(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0)


@pytest.fixture
def taken() -> Iterator[str]:
    """HOST:PORT of an address another socket listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL on each backend: a new SQLite file, or the run's PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def own_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of the test's own on each backend, which no other test sees (its
    tables, triggers and schema revision included): a new SQLite file, or a PostgreSQL
    database of its own, dropped at the end."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'own.db'}"
        return
    request.getfixturevalue("pg_url")  # skips without a server
    with private_database(f"modelplane_owndb_{uuid.uuid4().hex[:12]}") as url:
        yield url


def unique(prefix: str = "m") -> str:
    """A model id no other test uses (tests share the PostgreSQL database)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session", autouse=True)
def _server_logs_to_stderr() -> None:
    """In-process servers log JSON lines to stderr, as they do when run from the CLI."""
    from modelplane.server import configure_logging

    configure_logging("warning")


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    """One S3 server per test process; tests take buckets of their own from it. The
    credentials it takes are set in this process's environment for the session."""
    saved = {k: os.environ.get(k) for k in S3_ENV}
    os.environ.update(S3_ENV)
    server = start_s3()
    yield server
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
