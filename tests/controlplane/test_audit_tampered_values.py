"""An audit row edited by hand to hold a value of the wrong type (SQLite's columns take any):
verify names the event instead of failing, and listing, export and appends keep working."""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane import audit
from controlplane.audit import Problem
from controlplane.services import ModelService
from controlplane.store import Store
from modelplane.audit_chain import ExportProblem, verify_export
from modelplane.server.context import RequestContext
from tests.controlplane.conftest import RunningControlPlane

EPOCH = "1970-01-01T00:00:00.000000Z"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A SQLite store whose audit chain holds four events."""
    path = tmp_path / "audit.db"
    store = Store.open(f"sqlite:///{path}")
    audit.install(store)
    models = ModelService(store)
    for i in range(4):
        models.create(RequestContext(principal="alice"), f"m{i}")
    store.close()
    return path


def tamper(path: Path, statement: str) -> None:
    with sqlite3.connect(path) as con:
        con.execute(statement)
    con.close()


@pytest.fixture
def opened(db: Path) -> Iterator[Store]:
    store = Store.open(f"sqlite:///{db}")
    audit.install(store)
    yield store
    store.close()


def test_a_time_that_is_not_a_timestamp_is_named_altered(
    db: Path, opened: Store, tmp_path: Path
) -> None:
    tamper(db, "UPDATE audit_events SET time = 'not a time' WHERE seq = 2")
    result = audit.verify(opened)
    assert not result.ok
    assert (result.problem, result.first_bad_seq) == (Problem.EVENT_ALTERED, 2)
    assert result.checked == 1 and result.head_seq == 1
    events, token = audit.list_events(opened)
    assert [e.seq for e in events] == [1, 2, 3, 4] and token == ""
    assert events[1].to_dict()["time"] == "not a time"
    assert events[1].time == audit.UNREADABLE_TIME and events[1].stored == {"time": "not a time"}
    # The export writes the time as stored, so an offline check names the same event.
    exported = tmp_path / "export.jsonl"
    assert audit.export_jsonl(opened, exported) == 4
    assert json.loads(exported.read_text().splitlines()[1])["time"] == "not a time"
    offline = verify_export(exported)
    assert (offline.problem, offline.first_bad_seq) == (ExportProblem.EVENT_ALTERED, 2)


def test_the_newest_event_with_an_unreadable_time_does_not_stop_appends(
    db: Path, opened: Store
) -> None:
    tamper(db, "UPDATE audit_events SET time = 12345 WHERE seq = 4")
    ModelService(opened).create(RequestContext(principal="alice"), "m-after")
    events, _ = audit.list_events(opened)
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert events[3].stored == {"time": 12345} and events[4].stored == {}
    result = audit.verify(opened)
    assert (result.problem, result.first_bad_seq) == (Problem.EVENT_ALTERED, 4)


def test_a_text_field_that_is_not_text_is_named_altered(db: Path, opened: Store) -> None:
    # The actor's own bytes, stored as a blob rather than as text.
    tamper(db, "UPDATE audit_events SET actor = CAST(actor AS BLOB) WHERE seq = 3")
    result = audit.verify(opened)
    assert (result.problem, result.first_bad_seq) == (Problem.EVENT_ALTERED, 3)
    events, _ = audit.list_events(opened)
    assert events[2].actor == "YWxpY2U=" and events[2].stored == {"actor": "YWxpY2U="}


@pytest.mark.parametrize(
    ("statement", "bad"),
    [
        ("UPDATE audit_events SET seq = 2.5 WHERE seq = 2", 2),
        ("UPDATE audit_events SET seq = 'x' WHERE seq = 4", 4),
        # Text and bytes sort after every number: such a row is named where it is missing.
        ("UPDATE audit_events SET seq = '2x' WHERE seq = 2", 2),
        ("UPDATE audit_events SET seq = 'one' WHERE seq = 1", 1),
        ("UPDATE audit_events SET seq = CAST('3' AS BLOB) WHERE seq = 3", 3),
    ],
)
def test_a_sequence_number_that_is_not_a_whole_number_is_out_of_range(
    db: Path, opened: Store, statement: str, bad: int
) -> None:
    tamper(db, statement)
    result = audit.verify(opened)
    assert not result.ok
    assert (result.problem, result.first_bad_seq) == (Problem.EVENT_OUT_OF_RANGE, bad)
    assert "not a whole number" in result.message
    # Out of the chain, as a row numbered below 1 is: listed and exported without it.
    events, _ = audit.list_events(opened, page_size_=1)
    assert events and all(isinstance(e.seq, int) for e in events)
    out = io.StringIO()
    assert audit.export_jsonl(opened, out) == 3
    ModelService(opened).create(RequestContext(principal="alice"), "m-after")
    assert audit.verify(opened).problem == Problem.EVENT_OUT_OF_RANGE


def test_the_server_names_the_event_and_keeps_listing(
    controlplane: RunningControlPlane,
) -> None:
    with controlplane.client("alice") as c:
        for i in range(3):
            c.create_model(f"m{i}")
        tamper(
            Path(controlplane.db_url.removeprefix("sqlite:///")),
            "UPDATE audit_events SET time = '2026-13-45 99:00:00' WHERE seq = 2",
        )
        result = c.verify_audit()
        assert not result.ok
        assert (result.problem, result.first_bad_seq) == ("EVENT_ALTERED", 2)
        events = list(c.audit_events())
        assert [e.seq for e in events] == [1, 2, 3]
        assert events[1].time.ToJsonString() == "1970-01-01T00:00:00Z"
        out = io.BytesIO()
        c.export_audit(out)
        lines = out.getvalue().decode().splitlines()
        assert json.loads(lines[1])["time"] == "2026-13-45 99:00:00"
