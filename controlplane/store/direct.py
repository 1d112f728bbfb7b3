"""Statements of the hot path run on the session's own psycopg connection (PostgreSQL).

SQLAlchemy's ``Connection.execute`` of a cached Core statement costs about 100 us of CPU more
than the driver's own ``execute`` (cache key, execution context, result set-up), as much as
PostgreSQL spends on the statement itself. A :class:`Direct` statement is compiled once; on
PostgreSQL its SQL and processed parameters go straight to a psycopg cursor on the
SQLAlchemy connection it is given, in that connection's transaction, and rows come back as
plain tuples. Elsewhere (SQLite) it runs through SQLAlchemy unchanged. Errors are raised as
SQLAlchemy's (``IntegrityError``, ``OperationalError``), so callers translate them as before.

Only statements whose results are plain values (text, numbers) belong here: rows skip
SQLAlchemy's result processing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import psycopg
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Executable

#: How SQLAlchemy leaves an expanding ``IN`` in compiled SQL; psycopg takes ``= ANY(list)``.
_EXPANDING_IN = re.compile(r"IN \(__\[POSTCOMPILE_(\w+)\]\)")


class _Compiled:
    def __init__(self, statement: Any, conn: Connection) -> None:
        compiled = statement.compile(dialect=conn.dialect)
        self.sql = _EXPANDING_IN.sub(r"= ANY(%(\1)s)", compiled.string)
        self.construct_params = compiled.construct_params
        self.processors: dict[str, Callable[[Any], Any]] = {}
        for name, bind in compiled.binds.items():
            processor = bind.type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
            if processor is not None:
                self.processors[name] = processor


class Direct:
    """A Core statement, run without SQLAlchemy's per-execution work on PostgreSQL."""

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._pg: _Compiled | None = None

    def rows(self, conn: Connection, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Execute with ``params``; every row the statement returns (none for plain DML)."""
        if conn.dialect.name != "postgresql":
            result = conn.execute(self.statement, dict(params))
            return [tuple(r) for r in result] if result.returns_rows else []
        if self._pg is None:
            self._pg = _Compiled(self.statement, conn)
        pg = self._pg
        values = pg.construct_params(dict(params))
        for name, processor in pg.processors.items():
            if name in values:
                values[name] = processor(values[name])
        driver = conn.connection.driver_connection
        assert isinstance(driver, psycopg.Connection)
        try:
            with driver.cursor() as cur:
                cur.execute(pg.sql, values)
                return cur.fetchall() if cur.description is not None else []
        except psycopg.Error as exc:
            error = DBAPIError.instance(pg.sql, values, exc, psycopg.Error)
            if driver.broken:  # the connection was lost: the pool must not hand it out again
                conn.invalidate(exc)
            raise error from exc

    def first(self, conn: Connection, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        rows = self.rows(conn, params)
        return rows[0] if rows else None
