"""A server-side audit verify of a long trail stops walking once its caller no longer waits,
and ends with the status that says why; the CLI and the SDK give it longer than other calls,
unless told how long. A real control plane process on SQLite, its trail extended with correctly
chained events; what deadline a call carries is read by a gRPC audit service that notes it."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from controlplane import audit
from controlplane.audit import VerifyStopped
from controlplane.audit._verify import STILL_WANTED_EVERY
from controlplane.services import ModelService
from controlplane.store import Store
from modelplane import Client
from modelplane._client import VERIFY_AUDIT_TIMEOUT_S
from modelplane.audit_chain import event_hash, utc_text
from modelplane.cli import main
from modelplane.server.context import RequestContext
from modelplane.testing.processes import Server, controlplane
from modelplane.v1 import audit_pb2, audit_pb2_grpc
from tests.conftest import grpc_service

#: Events in the trail: many more than the server walks before a short deadline passes.
EVENTS = 60_000


def _extend_trail(db: Path, count: int) -> int:
    """Append ``count`` correctly chained events to the trail in ``db`` (as a long-lived
    server's writes would have); the chain's new length."""
    with sqlite3.connect(db) as conn:
        seq, prev, last = conn.execute(
            "SELECT seq, hash, time FROM audit_events ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        time = datetime.fromisoformat(last).replace(tzinfo=UTC)
        rows = []
        for _ in range(count):
            seq, time = seq + 1, time + timedelta(milliseconds=1)
            fields = {
                "seq": seq,
                "time": utc_text(time),
                "actor": "ci",
                "action": "UpdateModel",
                "resource": "models/long",
                "request_id": f"r{seq}",
                "before_sha256": "a" * 64,
                "after_sha256": "b" * 64,
                "prev_hash": prev,
            }
            prev = event_hash(fields)
            # Stored as the server stores it: the time as SQLite text, then the hash.
            stored = {**fields, "time": time.strftime("%Y-%m-%d %H:%M:%S.%f"), "hash": prev}
            rows.append(tuple(stored.values()))
        conn.executemany(
            "INSERT INTO audit_events (seq, time, actor, action, resource, request_id, "
            "before_sha256, after_sha256, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?)",
            rows,
        )
    return seq


@pytest.fixture
def long_trail(tmp_path: Path) -> Iterator[tuple[Server, int]]:
    """A control plane process whose trail holds more than EVENTS events, and their count."""
    db = tmp_path / "cp.db"
    server = controlplane(tmp_path, f"sqlite:///{db}").start()
    try:
        with Client(server.address, principal="alice") as c:
            c.create_model("long")
        total = _extend_trail(db, EVENTS)
    except BaseException:
        server.stop()
        raise
    yield server, total
    server.stop()


def _verify_lines(server: Server) -> list[dict[str, object]]:
    return [e for e in server.json_lines() if e.get("method") == "VerifyAudit"]


def test_a_verify_past_its_deadline_stops_walking(
    long_trail: tuple[Server, int], capsys: pytest.CaptureFixture[str]
) -> None:
    server, total = long_trail
    with grpc.insecure_channel(server.address) as channel:
        stub = audit_pb2_grpc.AuditServiceStub(channel)
        with pytest.raises(grpc.RpcError) as ended:
            stub.VerifyAudit(
                audit_pb2.VerifyAuditRequest(),
                timeout=0.2,
                metadata=(("x-modelplane-principal", "ops"),),
            )
        assert ended.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    # The next verify is served, and walks the whole trail (the CLI gives it longer than the
    # 60 s other calls get).
    capsys.readouterr()
    assert main(["--server", server.address, "--as", "ops", "audit", "verify"]) == 0
    assert f"({total} events, head event {total})" in capsys.readouterr().out
    server.stop()  # the log is complete once the process has ended
    stopped = [
        e for e in server.json_lines() if e.get("event", "").startswith("audit verify stopped")
    ]
    assert len(stopped) == 1, server.tail()
    assert stopped[0]["code"] == "DEADLINE_EXCEEDED"
    assert 0 <= int(stopped[0]["checked"]) < total
    # Each call is logged with how it ended: the first not as OK.
    codes = [e["code"] for e in _verify_lines(server) if e.get("event") == "rpc"]
    assert sorted(codes) == ["DEADLINE_EXCEEDED", "OK"], server.tail()


def test_the_cli_says_what_to_do_when_verify_outlasts_its_timeout(
    long_trail: tuple[Server, int], capsys: pytest.CaptureFixture[str]
) -> None:
    server, _ = long_trail
    capsys.readouterr()
    code = main(["--server", server.address, "--as", "ops", "--timeout", "0.2", "audit", "verify"])
    err = capsys.readouterr().err
    assert code == 4, err
    assert "--timeout" in err and "audit verify --export" in err


def test_the_walk_asks_whether_it_is_still_wanted(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    store = Store.open(f"sqlite:///{db}")
    try:
        audit.install(store)
        ModelService(store).create(RequestContext(principal="alice"), "first")
        _extend_trail(db, 3 * STILL_WANTED_EVERY)
        asked: list[int] = []

        def wanted() -> bool:
            asked.append(1)
            return len(asked) < 3

        with pytest.raises(VerifyStopped) as stopped:
            audit.verify(store, wanted=wanted)
        assert stopped.value.checked == 2 * STILL_WANTED_EVERY
        assert audit.verify(store, wanted=lambda: True).ok
    finally:
        store.close()


def _up_to(seconds: float) -> float:
    """The most a service may read as left of a call given ``seconds``: gRPC sends a deadline
    as a timeout of a few significant digits, rounded up, and the two ends read it apart."""
    return seconds * 1.01 + 1


class _NotesDeadlines(audit_pb2_grpc.AuditServiceServicer):
    """An audit service that answers at once, noting the seconds each caller gave its call."""

    def __init__(self) -> None:
        self.given: dict[str, list[float]] = {"VerifyAudit": [], "CreateCheckpoint": []}

    def _note(self, method: str, context: grpc.ServicerContext) -> None:
        remaining = context.time_remaining()
        assert remaining is not None, "the call carried no deadline"
        self.given[method].append(remaining)

    def VerifyAudit(
        self, request: audit_pb2.VerifyAuditRequest, context: grpc.ServicerContext
    ) -> audit_pb2.VerifyAuditResponse:
        self._note("VerifyAudit", context)
        return audit_pb2.VerifyAuditResponse(ok=True, message="the chain is intact")

    def CreateCheckpoint(
        self, request: audit_pb2.CreateCheckpointRequest, context: grpc.ServicerContext
    ) -> audit_pb2.Checkpoint:
        self._note("CreateCheckpoint", context)
        return audit_pb2.Checkpoint(seq=0, head_hash="0" * 64, time="2026-11-29T10:00:00Z")


@pytest.fixture
def noting() -> Iterator[tuple[str, _NotesDeadlines]]:
    """The address of an audit service that notes its callers' deadlines, and the service."""
    service = _NotesDeadlines()
    with grpc_service(audit_pb2_grpc.add_AuditServiceServicer_to_server, service) as address:
        yield address, service


@pytest.mark.parametrize(
    ("timeout", "above", "at_most"),
    [
        pytest.param([], 60, VERIFY_AUDIT_TIMEOUT_S, id="not-given-1h"),
        pytest.param(["--timeout", "60"], 0, 60, id="60-given"),
        pytest.param(["--timeout", "1m"], 0, 60, id="1m-given"),
        pytest.param(["--timeout", "30"], 0, 30, id="30-given"),
        pytest.param(["--timeout", "2h"], VERIFY_AUDIT_TIMEOUT_S, 7200, id="2h-given"),
    ],
)
def test_the_cli_gives_verify_the_timeout_given_else_1h(
    noting: tuple[str, _NotesDeadlines],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    timeout: list[str],
    above: float,
    at_most: float,
) -> None:
    address, service = noting
    argv = ["--server", address, "--as", "ops", *timeout, "audit"]
    assert main([*argv, "verify"]) == 0, capsys.readouterr().err
    [given] = service.given["VerifyAudit"]
    assert above < given <= _up_to(at_most)
    # Other calls keep the global default, 60 s, when no --timeout is given.
    assert main([*argv, "checkpoint", "--out", str(tmp_path / "head.json")]) == 0
    [other] = service.given["CreateCheckpoint"]
    assert other <= _up_to(60 if not timeout else at_most)


def test_the_sdk_gives_verify_1h_unless_told(noting: tuple[str, _NotesDeadlines]) -> None:
    address, service = noting
    with Client(address, principal="ops", timeout=5) as c:
        assert c.verify_audit().ok
        assert c.verify_audit(timeout=2).ok
        assert c.verify_audit(timeout=7200).ok
        c.create_checkpoint()
    default, short, long = service.given["VerifyAudit"]
    assert _up_to(5) < default <= _up_to(VERIFY_AUDIT_TIMEOUT_S)  # not the client's 5 s
    assert short <= _up_to(2)
    assert _up_to(VERIFY_AUDIT_TIMEOUT_S) < long <= _up_to(7200)
    [other] = service.given["CreateCheckpoint"]
    assert other <= _up_to(5)
