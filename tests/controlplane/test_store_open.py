"""Opening the store refuses a database URL it cannot use with the project's own errors, so
that its callers (the CLI among them) never handle SQLAlchemy's."""

from __future__ import annotations

import socket

import pytest

from controlplane.store import Store, check_db_url
from modelplane.errors import InvalidArgument, Unavailable


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_database_is_unavailable() -> None:
    with pytest.raises(Unavailable) as err:
        Store.open(f"postgresql://u@127.0.0.1:{_closed_port()}/x")
    assert err.value.reason == "DATABASE_UNAVAILABLE"
    assert err.value.message.startswith("cannot reach the database: ")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql://u@127.0.0.1:notaport/x", "cannot parse the database URL"),
        ("mysql://x/y", "unsupported database URL 'mysql'"),
        # The server keeps PATH.write-lock beside the file and watches PATH: an SQLite URI
        # filename used to fail at start with a bare FileNotFoundError.
        ("sqlite:///file:/tmp/cp.db?uri=true", "SQLite URI filenames"),
        ("sqlite:///file:cp.db", "SQLite URI filenames"),
    ],
)
def test_a_database_url_that_cannot_be_used_is_refused(url: str, says: str) -> None:
    for attempt in (check_db_url, Store.open):
        with pytest.raises(InvalidArgument) as err:
            attempt(url)
        assert err.value.reason == "INVALID_DB_URL" and says in err.value.message
