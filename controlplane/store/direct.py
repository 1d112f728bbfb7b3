"""Statements of the hot path run on the session's own DB-API connection.

SQLAlchemy's ``Connection.execute`` of a cached Core statement costs about 100 us of CPU more
than the driver's own ``execute`` (cache key, execution context, result set-up): as much as
PostgreSQL spends on the statement, several times what SQLite does. A :class:`Direct`
statement is compiled once per dialect; its SQL and processed parameters then go straight to a
cursor of the DB-API connection under the SQLAlchemy connection it is given, in that
connection's transaction, and rows come back as plain tuples. Errors are raised as
SQLAlchemy's (``IntegrityError``, ``OperationalError``), so callers translate them as before.

Only statements whose results are plain values (text, numbers) belong here: rows skip
SQLAlchemy's result processing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Executable

#: How SQLAlchemy leaves an expanding ``IN`` in compiled SQL, to be expanded per execution.
#: Here it takes the list as one parameter instead: ``= ANY(list)`` on PostgreSQL, a JSON
#: array read with ``json_each`` on SQLite.
_EXPANDING_IN = re.compile(r"IN \(__\[POSTCOMPILE_(\w+)\]\)")


class _Compiled:
    """A statement's SQL for one dialect, its parameter order (SQLite's ``?`` markers) and
    the bind processors of its parameters."""

    def __init__(self, statement: Any, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.expanding = set(_EXPANDING_IN.findall(compiled.string))
        if dialect.name == "postgresql":
            self.sql = _EXPANDING_IN.sub(r"= ANY(%(\1)s)", compiled.string)
            self.order: list[str] | None = None
        else:
            self.sql = _EXPANDING_IN.sub("IN (SELECT value FROM json_each(?))", compiled.string)
            self.order = list(compiled.positiontup or [])
        self.construct_params = compiled.construct_params
        self.processors: dict[str, Callable[[Any], Any]] = {}
        for name, bind in compiled.binds.items():
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                self.processors[name] = processor

    def parameters(self, params: Mapping[str, Any]) -> dict[str, Any] | list[Any]:
        values = self.construct_params(dict(params))
        for name, processor in self.processors.items():
            if name in values and name not in self.expanding:
                values[name] = processor(values[name])
        if self.order is None:
            return values
        for name in self.expanding:
            values[name] = json.dumps(list(values[name]))
        return [values[name] for name in self.order]


class Direct:
    """A Core statement, run without SQLAlchemy's per-execution work."""

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._compiled: dict[str, _Compiled] = {}

    def rows(self, conn: Connection, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Execute with ``params``; every row the statement returns (none for plain DML)."""
        dialect = conn.dialect
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            compiled = self._compiled[dialect.name] = _Compiled(self.statement, dialect)
        values = compiled.parameters(params)
        driver = conn.connection.driver_connection
        dbapi = dialect.loaded_dbapi
        cur = driver.cursor()  # type: ignore[union-attr]
        try:
            cur.execute(compiled.sql, values)
            return cur.fetchall() if cur.description is not None else []  # type: ignore[no-any-return]
        except dbapi.Error as exc:
            error = DBAPIError.instance(compiled.sql, values, exc, dbapi.Error)
            if getattr(driver, "broken", False):  # a lost connection leaves the pool
                conn.invalidate(exc)
            raise error from exc
        finally:
            cur.close()

    def first(self, conn: Connection, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        rows = self.rows(conn, params)
        return rows[0] if rows else None
