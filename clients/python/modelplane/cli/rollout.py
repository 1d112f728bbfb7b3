"""``modelplane rollout`` commands: move a candidate version into a deployment's traffic."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from modelplane._deployments import MAX_STEP_DURATION_SECONDS
from modelplane.cli._common import (
    VERSION_OR_ALIAS_HELP,
    add_request_id,
    client,
    duration,
    numbered_version,
    page_size,
    server_errors,
    version_or_alias,
    whole_number,
)
from modelplane.cli._output import (
    EXIT_CHECK_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Printer,
    dumps,
    to_dict,
)
from modelplane.cli.deployments import bounded_duration
from modelplane.v1 import deployments_pb2 as dp

STRATEGIES = {
    "shadow": dp.ROLLOUT_STRATEGY_SHADOW,
    "canary": dp.ROLLOUT_STRATEGY_CANARY,
    "ab": dp.ROLLOUT_STRATEGY_AB,
    "blue_green": dp.ROLLOUT_STRATEGY_BLUE_GREEN,
}
#: States a rollout never leaves.
FINAL_STATES = frozenset({"promoted", "rolled_back", "aborted"})
ACTIONS = ("pause", "resume", "abort", "promote", "rollback")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``rollout`` commands."""
    p = sub.add_parser("rollout", help="roll a candidate version out to a deployment")
    s = p.add_subparsers(dest="rollout_command", metavar="ACTION", required=True)

    st = s.add_parser("start", help="start a rollout of a candidate version")
    st.add_argument("name", help="the deployment")
    st.add_argument(
        "--candidate",
        required=True,
        type=version_or_alias,
        metavar="V",
        help=f"the candidate, a version of the deployment's model: {VERSION_OR_ALIAS_HELP}",
    )
    st.add_argument("--strategy", required=True, choices=sorted(STRATEGIES))
    st.add_argument(
        "--steps", metavar="P,P,...", help="canary traffic percents, ascending (default 10,50,100)"
    )
    st.add_argument("--split", type=float, metavar="PERCENT", help="A/B candidate share (50)")
    st.add_argument(
        "--shadow-fraction",
        type=float,
        metavar="F",
        help="share of traffic copied to a shadow candidate, in (0, 1] (default 1)",
    )
    st.add_argument(
        "--step-duration",
        metavar="DURATION",
        help="canary step / blue-green phase length, e.g. 30s, 5m, at most 7d (default 60s)",
    )
    st.add_argument(
        "--min-requests",
        type=whole_number(1),
        metavar="N",
        help="candidate requests per step (default 100)",
    )
    st.add_argument(
        "--guard",
        action="append",
        metavar="EXPR",
        help="a CEL guard added to the deployment's (repeatable); without any guard, the "
        "default guards on error rate and p99 latency apply",
    )
    st.add_argument("--etag", default="")
    add_request_id(st)
    st.set_defaults(handler=_start)

    ss = s.add_parser("status", help="the rollout's state, phase, step, versions and evidence")
    ss.add_argument("name")
    ss.add_argument(
        "--watch",
        action="store_true",
        help="print a line of JSON on every change until the rollout ends; exit 0 when it "
        "was promoted (or there is none), 1 when it was rolled back or aborted",
    )
    ss.add_argument(
        "--interval",
        type=duration(above_zero=True, maximum=MAX_INTERVAL),
        default=0.5,
        metavar="DURATION",
        help="time between polls with --watch (seconds, or with units: 500ms, 2s), above 0 "
        "and at most 1h",
    )
    ss.set_defaults(handler=_status)

    for action in ACTIONS:
        a = s.add_parser(action, help=f"{action} the rollout in progress")
        a.add_argument("name")
        a.add_argument("--reason", default="", help="why (recorded in the audit trail)")
        a.add_argument("--etag", default="")
        if action == "promote":
            a.add_argument(
                "--force",
                action="store_true",
                help="promote even while replicas report that they cannot load the candidate",
            )
        add_request_id(a)
        a.set_defaults(handler=_act, action=action)

    ev = s.add_parser(
        "events",
        help="the deployment's rollout events (transitions, replicas that cannot "
        "load the candidate, drift), newest first",
    )
    ev.add_argument("name", help="the deployment")
    ev.add_argument(
        "--page-size", type=page_size, default=0, metavar="N", help="events fetched per request"
    )
    ev.add_argument(
        "--limit", type=whole_number(), default=0, metavar="N", help="at most N events (0: all)"
    )
    ev.set_defaults(handler=_events)


#: The longest pause between two polls of ``rollout status --watch``: an hour.
MAX_INTERVAL = 3600.0


def _enum_name(enum: Any, value: int, prefix: str) -> str | None:
    return None if value == 0 else str(enum.Name(value)).removeprefix(prefix).lower()


def status(d: dp.Deployment) -> dict[str, Any]:
    """The status document of a deployment's current (or last) rollout."""
    doc: dict[str, Any] = {
        "deployment": d.name,
        "champion_version": d.champion_version,
        "generation": d.generation,
    }
    if not d.HasField("rollout"):
        doc.update(
            state=None,
            phase=None,
            step=None,
            candidate_version=None,
            candidate_percent=None,
            strategy=None,
            rollout=None,
            reason=None,
            effective_guards=[],
            evidence=None,
            unloaded_replicas=[],
        )
        return doc
    r = d.rollout
    doc.update(
        state=_enum_name(dp.RolloutState, r.state, "ROLLOUT_STATE_"),
        phase=_enum_name(dp.RolloutPhase, r.phase, "ROLLOUT_PHASE_"),
        step=r.step,
        candidate_version=r.candidate_version,
        candidate_percent=r.candidate_percent,
        strategy=_enum_name(dp.RolloutStrategy, r.strategy, "ROLLOUT_STRATEGY_"),
        rollout=r.id,
        reason=r.reason,
        effective_guards=list(r.effective_guards),
        evidence=to_dict(r.evidence) if r.HasField("evidence") else None,
        unloaded_replicas=[_unloaded(u) for u in r.evidence.unloaded_replicas],
    )
    return doc


def _num(value: float | None, scale: float = 1.0, digits: int = 4) -> str:
    """A summary figure for a table: empty when the window had none."""
    return "" if value is None else f"{value * scale:.{digits}g}"


def _opt(message: Any, field: str) -> float | None:
    return getattr(message, field) if message.HasField(field) else None


Table = tuple[str, list[str], list[list[Any]]]


#: The arms table's title for each scope of the evidence (the latest window, or the sum of
#: the step or phase last judged whole: after an advance, the one that just ended).
_SCOPE_TITLES = {
    dp.EVIDENCE_SCOPE_WINDOW: "latest window",
    dp.EVIDENCE_SCOPE_STEP: "last step judged, all its windows",
    dp.EVIDENCE_SCOPE_PHASE: "last phase judged, all its windows",
}


def status_tables(d: dp.Deployment, doc: dict[str, Any]) -> list[Table]:
    """``rollout status`` as tables: the rollout, its arms' and shadow's latest window (or
    step or phase, when that was judged whole), the guards' results and the replicas that
    cannot load the candidate, from ``d`` and its ``status`` document ``doc`` (the JSON
    document holds every histogram besides)."""
    fields = [
        ["deployment", doc["deployment"]],
        ["champion", doc["champion_version"]],
        ["generation", doc["generation"]],
    ]
    if doc["state"] is None:
        fields.append(["rollout", "none"])
        return [("deployment", ["field", "value"], fields)]
    r = d.rollout
    fields += [
        ["rollout", doc["rollout"]],
        ["state", doc["state"]],
        ["phase", doc["phase"] or ""],
        ["strategy", doc["strategy"]],
        ["step", _step_shown(doc["phase"], doc["step"], len(d.rollout.steps))],
        ["candidate", f"{doc['candidate_version']} at {doc['candidate_percent']:g}%"],
        ["reason", doc["reason"]],
    ]
    tables: list[Table] = [("rollout", ["field", "value"], fields)]
    if not r.HasField("evidence"):
        return tables
    ev = r.evidence
    if ev.HasField("window_end_time"):
        fields.append(["window end", ev.window_end_time.ToJsonString()])
    fields += [
        ["replicas reporting", ev.replica_count],
        ["candidate requests this step", ev.step_candidate_requests],
    ]
    arms = []
    # Drift over fewer rows than the deployment's min_rows judges nothing and reads as noise
    # (one row's PSI): its cells stay empty, as guards skip it.
    min_rows = d.drift_thresholds.min_rows if d.HasField("drift_thresholds") else 0
    for arm in (ev.champion, ev.candidate):
        if not arm.arm:
            continue
        drift = arm.drift if arm.HasField("drift") and arm.drift.rows >= min_rows else None
        arms.append(
            [
                arm.arm,
                arm.version,
                arm.requests,
                arm.errors,
                _num(_opt(arm, "error_rate")),
                _num(_opt(arm, "latency_p50"), 1000),
                _num(_opt(arm, "latency_p99"), 1000),
                _num(_opt(arm, "accuracy")),
                "" if drift is None else _num(_opt(drift, "drifted_share")),
                "" if drift is None else _num(_opt(drift, "max_psi")),
            ]
        )
    tables.append(
        (
            _SCOPE_TITLES.get(ev.scope, "latest window"),
            [
                "arm",
                "version",
                "requests",
                "errors",
                "error rate",
                "p50 ms",
                "p99 ms",
                "accuracy",
                "drifted share",
                "max psi",
            ],
            arms,
        )
    )
    if ev.HasField("shadow"):
        sh = ev.shadow
        tables.append(
            (
                "shadow",
                [
                    "version",
                    "pairs",
                    "disagreement rate",
                    "mean abs diff",
                    "ks",
                    "errors",
                    "dropped",
                    "dropped rate",
                    "p50 ms",
                    "p99 ms",
                ],
                [
                    [
                        sh.version,
                        sh.pairs,
                        _num(_opt(sh, "disagreement_rate")),
                        _num(_opt(sh, "mean_abs_diff")),
                        _num(_opt(sh, "ks_statistic")),
                        sh.errors,
                        sh.dropped,
                        _num(_opt(sh, "dropped_rate")),
                        _num(_opt(sh, "latency_p50"), 1000),
                        _num(_opt(sh, "latency_p99"), 1000),
                    ]
                ],
            )
        )
    tables.append(
        (
            "guards",
            ["guard", "passed", "error", "detail"],
            [[g.expression, guard_outcome(g), g.error, g.detail] for g in ev.guards],
        )
    )
    tables.append(
        (
            "replicas that cannot load the candidate",
            ["replica", "version", "error", "first report", "last report"],
            [list(_unloaded(u).values()) for u in ev.unloaded_replicas],
        )
    )
    return tables


def _step_shown(phase: str | None, step: int, of: int = 0) -> str:
    """A canary step in a table, counted from 1 as reasons count them ("2 of 3"); nothing
    outside the canary phase. The JSON keeps the proto's index, from 0."""
    if phase != "canary":
        return ""
    return f"{step + 1} of {of}" if of else str(step + 1)


def guard_outcome(g: dp.GuardResult) -> str:
    """A guard's result in the status table: ``yes``; ``no`` (it failed: the candidate is
    rolled back); ``skipped`` (not judged on this window, as too few requests or no value for
    what it reads were there, which its error says); ``not evaluated`` (it erred, and the
    phase's default guards judge in its place). The JSON document keeps ``passed`` and
    ``error`` as the server sent them."""
    if g.passed:
        return "yes"
    if g.error.startswith("skipped:"):
        return "skipped"
    if g.error.startswith("not evaluated:"):
        return "not evaluated"
    return "no"


def _print_status(out: Printer, d: dp.Deployment) -> None:
    doc = status(d)
    out.emit_tables(doc, status_tables(d, doc))


def _unloaded(u: dp.UnloadedReplica) -> dict[str, Any]:
    return {
        "replica": u.replica,
        "version": u.version,
        "error": u.error,
        "first_report_time": u.first_report_time.ToJsonString(),
        "last_report_time": u.last_report_time.ToJsonString(),
    }


def event(e: dp.RolloutEvent) -> dict[str, Any]:
    """The document of one rollout event, in the words of ``rollout status``."""
    return {
        "time": e.create_time.ToJsonString(),
        "rollout": e.rollout_id,
        "action": e.action,
        "state": _enum_name(dp.RolloutState, e.state, "ROLLOUT_STATE_"),
        "phase": _enum_name(dp.RolloutPhase, e.phase, "ROLLOUT_PHASE_"),
        "step": e.step,
        "candidate_percent": e.candidate_percent,
        "actor": e.actor,
        "reason": e.reason,
        "evidence": to_dict(e.evidence) if e.HasField("evidence") else None,
    }


EVENT_COLUMNS = [
    "time",
    "rollout",
    "action",
    "state",
    "phase",
    "step",
    "percent",
    "actor",
    "reason",
]


def _percents(text: str) -> list[float]:
    """The percents of ``--steps`` (``10,50,100``); a usage error (exit 2) for none, for an
    item that is not a number, or for an empty one (``10,,50``: a step lost to a typo would
    change what the rollout does)."""
    items = [x.strip() for x in text.split(",")]
    if not any(items):
        raise CliError("--steps needs at least one percent", EXIT_USAGE)
    if "" in items:
        raise CliError(
            f"--steps {text!r}: item {items.index('') + 1} is empty; use percents like 10,50,100",
            EXIT_USAGE,
        )
    try:
        return [float(x) for x in items]
    except ValueError:
        raise CliError(f"--steps {text!r}: use percents like 10,50,100", EXIT_USAGE) from None


def _rollout(args: argparse.Namespace) -> dict[str, Any]:
    """The SDK keyword arguments of ``rollout start``."""
    kw: dict[str, Any] = {"strategy": args.strategy, "guards": args.guard or []}
    if args.steps is not None:
        kw["steps"] = _percents(args.steps)
    given = {
        "split": args.split,
        "shadow_fraction": args.shadow_fraction,
        "step_duration": None
        if args.step_duration is None
        else bounded_duration("--step-duration", args.step_duration, MAX_STEP_DURATION_SECONDS),
        "min_requests": args.min_requests,
    }
    for key, value in given.items():
        if value is None:
            continue  # the server's default
        if not value > 0:  # NaN too; a 0 would be sent as "default"
            flag = "--" + key.replace("_", "-")
            raise CliError(
                f"{flag} must be a number above 0, not {value} (leave it out for the default)",
                EXIT_USAGE,
            )
        kw[key] = value
    return kw


def _start(args: argparse.Namespace, out: Printer) -> int:
    kw = _rollout(args)
    with server_errors(), client(args) as c:
        candidate = args.candidate
        if isinstance(candidate, str):  # @ALIAS, of the deployment's model
            model = c.get_deployment(args.name).model
            candidate = numbered_version(c, model, candidate, out)
        d = c.start_rollout(
            args.name, int(candidate), etag=args.etag, request_id=args.request_id or None, **kw
        )
    _print_status(out, d)
    return 0


def _status(args: argparse.Namespace, out: Printer) -> int:
    with server_errors(), client(args) as c:
        d = c.get_deployment(args.name)
        if not args.watch:
            _print_status(out, d)
            return 0
        last: str | None = None
        while True:
            doc = status(d)
            line = dumps(doc)
            # The evidence changes with every window; print when anything does.
            if line != last:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
                last = line
            if doc["state"] is None or doc["state"] == "promoted":
                return EXIT_OK
            if doc["state"] in FINAL_STATES:  # rolled back or aborted: the candidate failed
                return EXIT_CHECK_FAILED
            time.sleep(max(0.05, args.interval))
            d = c.get_deployment(args.name)


def _act(args: argparse.Namespace, out: Printer) -> int:
    with server_errors(), client(args) as c:
        method = getattr(c, f"{args.action}_rollout")
        extra = {"force": True} if getattr(args, "force", False) else {}
        d = method(
            args.name,
            reason=args.reason,
            etag=args.etag,
            request_id=args.request_id or None,
            **extra,
        )
    _print_status(out, d)
    return 0


def _events(args: argparse.Namespace, out: Printer) -> int:
    docs = []
    with server_errors(), client(args) as c:
        for e in c.list_rollout_events(args.name, page_size=args.page_size):
            docs.append(event(e))
            if args.limit and len(docs) >= args.limit:
                break
    out.emit(
        {"events": docs},
        columns=EVENT_COLUMNS,
        rows=[
            [
                d["time"],
                d["rollout"],
                d["action"],
                d["state"],
                d["phase"],
                _step_shown(d["phase"], d["step"]),
                f"{d['candidate_percent']:g}",
                d["actor"],
                d["reason"],
            ]
            for d in docs
        ],
    )
    return 0
