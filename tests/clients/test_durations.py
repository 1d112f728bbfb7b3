"""One way to write a duration everywhere: amounts with units that add up (``1h30m``; the
spellings taken before, ``500us``, ``2ms``, ``30s``, ``10m``, ``7d``, still are); a bare number
is seconds only where the option is in seconds (``--timeout``, ``--drain-seconds``), and needs a
unit elsewhere (``--max-queue-delay 2`` could mean 2 s or 2 ms). Every CLI duration option and
the sidecar's duration settings read them alike; times
(``audit list --since``, ``alias get --as-of``) are ISO-8601, naive meaning UTC, or relative to
now (``-1h``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modelplane import Client
from modelplane.cli import build_parser, main
from modelplane.units import parse_duration, parse_time
from modelplane.v1 import registry_pb2

DEAD = ["--server", "127.0.0.1:1", "--timeout", "1"]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("500us", 500e-6),
        ("2ms", 0.002),
        ("30s", 30.0),
        ("10m", 600.0),
        ("1h", 3600.0),
        ("7d", 7 * 86400.0),
        ("1w", 7 * 86400.0),
        ("1h30m", 5400.0),
        ("1m30s", 90.0),
        ("1h 30m", 5400.0),
        (".5s", 0.5),
        ("1e-3s", 0.001),
        (" 30 s ", 30.0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    assert parse_duration(text, bare_seconds=True) == pytest.approx(seconds)


@pytest.mark.parametrize(("text", "seconds"), [("90", 90.0), ("0.5", 0.5), ("1e3", 1000.0)])
def test_a_bare_number_is_seconds_only_where_seconds_are_asked_for(
    text: str, seconds: float
) -> None:
    assert parse_duration(text, bare_seconds=True) == pytest.approx(seconds)
    with pytest.raises(ValueError, match="needs a unit"):
        parse_duration(text)


@pytest.mark.parametrize(
    "text", ["", "s", "-1", "1x", "1h30", "nan", "inf", "1e999", "h1", "1e400s"]
)
def test_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text, bare_seconds=True)


def test_times() -> None:
    now = datetime(2026, 11, 26, 12, tzinfo=UTC)
    assert parse_time("-1h30m", now) == now - timedelta(minutes=90)
    assert parse_time("now", now) == now
    assert parse_time("2026-11-26T10:00:00", now) == datetime(2026, 11, 26, 10, tzinfo=UTC)
    assert parse_time("2026-11-26T10:00:00+02:00", now) == datetime(2026, 11, 26, 8, tzinfo=UTC)
    for bad in ("yesterday", "-soon", "0001-01-01T00:00:00+01:00"):
        with pytest.raises(ValueError, match="not a time"):
            parse_time(bad, now)


@pytest.mark.parametrize(
    ("text", "down", "up"),
    [
        ("2026-11-29T06:56:18.224222999Z", 224222, 224223),
        ("2026-11-29T06:56:18.224222001", 224222, 224223),
        ("2026-11-29T06:56:18.224222000Z", 224222, 224222),
        ("2026-11-29T06:56:18,2242220001+00:00", 224222, 224223),
        ("2026-11-29T06:56:18.224222", 224222, 224222),
        ("2026-11-29T06:56:18.5", 500000, 500000),
    ],
)
def test_digits_past_microseconds_round_down_or_up(text: str, down: int, up: int) -> None:
    """A datetime holds microseconds: ``round_up`` keeps a window's bounds (``>= since``,
    ``< until``) exact against times stamped in microseconds; rounding down (the default)
    keeps an as-of time (``<= as_of``) exact."""
    second = datetime(2026, 11, 29, 6, 56, 18, tzinfo=UTC)
    assert parse_time(text) == second + timedelta(microseconds=down)
    assert parse_time(text, round_up=True) == second + timedelta(microseconds=up)
    carried = parse_time("2026-11-29T07:59:59.9999999+01:00", round_up=True)
    assert carried == datetime(2026, 11, 29, 7, tzinfo=UTC)


@pytest.mark.parametrize(
    ("argv", "attribute", "seconds"),
    [
        (["--timeout", "10m", "models", "list"], "timeout", 600.0),
        (["--timeout", "1m30s", "models", "list"], "timeout", 90.0),
        (["--timeout", "2.5", "models", "list"], "timeout", 2.5),
        (["operations", "wait", "operations/x", "--timeout", "1m"], "wait_timeout", 60.0),
        (["operations", "wait", "operations/x", "--timeout", "0"], "wait_timeout", 0.0),
        (
            ["evaluate", "m", "1", "--data", "d.csv", "--label", "y", "--wait-timeout", "10m"],
            "wait_timeout",
            600,
        ),
        (["rollout", "status", "d", "--watch", "--interval", "500ms"], "interval", 0.5),
    ],
)
def test_cli_durations_take_units(argv: list[str], attribute: str, seconds: float) -> None:
    assert getattr(build_parser().parse_args(argv), attribute) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--timeout", "0s", "models", "list"], "--timeout"),
        (["--timeout", "10000w", "models", "list"], "--timeout"),
        (["operations", "wait", "operations/x", "--timeout", "soon"], "--timeout"),
        (
            ["evaluate", "m", "1", "--data", "d.csv", "--label", "y", "--wait-timeout", "0ms"],
            "--wait-timeout",
        ),
        (["rollout", "status", "d", "--watch", "--interval", "2h"], "--interval"),
    ],
)
def test_cli_durations_out_of_range(
    argv: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert f"argument {option}:" in capsys.readouterr().err


def test_audit_list_since_takes_a_relative_time(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []

    def events(self: Client, **kw: Any) -> list[Any]:
        seen.append(kw["since"])
        return []

    monkeypatch.setattr(Client, "audit_events", events)
    before = datetime.now(UTC)
    assert main([*DEAD, "--output", "json", "audit", "list", "--since", "-1h30m"]) == 0
    assert main([*DEAD, "--output", "json", "audit", "list", "--since", "2026-11-26T10:00"]) == 0
    ago = before - seen[0]
    assert timedelta(minutes=89) < ago <= timedelta(minutes=90)
    assert seen[1] == datetime(2026, 11, 26, 10, tzinfo=UTC)


def test_alias_get_as_of_without_a_zone_is_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []

    def get_alias(self: Client, model: str, alias: str, *, as_of: Any = None) -> Any:
        seen.append(as_of)
        return registry_pb2.Alias(
            name=f"models/{model}/aliases/{alias}", version=f"models/{model}/versions/1"
        )

    monkeypatch.setattr(Client, "get_alias", get_alias)
    argv = [*DEAD, "--output", "json", "alias", "get", "fraud", "champion", "--as-of"]
    assert main([*argv, "2026-01-31T12:00:00"]) == 0
    assert main([*argv, "-1d"]) == 0
    assert seen[0] == datetime(2026, 1, 31, 12, tzinfo=UTC)
    assert seen[1].tzinfo is not None and seen[1] < datetime.now(UTC) - timedelta(hours=23)


def test_the_sidecar_takes_bare_seconds_and_compound_durations(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sidecar.settings import SidecarSettings

    settings = SidecarSettings(  # type: ignore[call-arg]
        model="m.onnx", drain_seconds="30", shutdown_delay="1m30s", max_queue_delay="2ms"
    )
    assert (settings.drain_seconds, settings.shutdown_delay) == (30.0, 90.0)
    assert settings.max_queue_delay == pytest.approx(0.002)
    monkeypatch.setenv("MODELPLANE_SIDECAR_DRAIN_SECONDS", "45")
    assert SidecarSettings(model="m.onnx").drain_seconds == 45.0  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="needs a unit"):
        SidecarSettings(model="m.onnx", max_queue_delay="2")  # type: ignore[call-arg]
    for huge in ("1e300", "1e300s"):  # past what a stop can wait
        with pytest.raises(ValueError, match="less than or equal"):
            SidecarSettings(model="m.onnx", drain_seconds=huge)  # type: ignore[call-arg]


def test_sidecar_serve_takes_drain_seconds_in_seconds() -> None:
    from modelplane.cli.sidecar import _settings

    args = build_parser().parse_args(
        ["sidecar", "serve", "--model", "m.onnx", "--drain-seconds", "30"]
    )
    assert _settings(args).drain_seconds == 30.0
