"""``modelplane deployments`` commands: a model served under a stable name."""

from __future__ import annotations

import argparse
from typing import Any

from modelplane._deployments import MAX_DRIFT_COOLDOWN_SECONDS, check_seconds, deployment_name
from modelplane.cli._checks import message_dict, unique_key_values
from modelplane.cli._common import (
    VERSION_OR_ALIAS_HELP,
    add_request_id,
    client,
    numbered_version,
    server_errors,
    version_or_alias,
    whole_number,
)
from modelplane.cli._output import EXIT_USAGE, CliError, Printer
from modelplane.errors import InvalidArgument
from modelplane.units import parse_duration
from modelplane.v1 import deployments_pb2


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``deployments`` commands."""
    p = sub.add_parser("deployments", help="deployments: a model served under a stable name")
    s = p.add_subparsers(dest="deployments_command", metavar="ACTION", required=True)

    c = s.add_parser("create", help="create a deployment of a model")
    c.add_argument("name", help="deployment id (the OIP model name sidecars serve it under)")
    c.add_argument("--model", required=True, help="the model (NAME or models/NAME)")
    c.add_argument(
        "--champion",
        required=True,
        type=version_or_alias,
        metavar="V",
        help=f"the champion, a version of --model: {VERSION_OR_ALIAS_HELP}",
    )
    _settings_arguments(c)
    add_request_id(c)
    c.set_defaults(handler=_create)

    g = s.add_parser("get", help="show a deployment")
    g.add_argument("name")
    g.set_defaults(handler=_get)

    ls = s.add_parser("list", help="list deployments")
    ls.set_defaults(handler=_list)

    u = s.add_parser("update", help="change guards, drift thresholds, hook, description, labels")
    u.add_argument("name")
    _settings_arguments(u)
    u.add_argument("--clear-guards", action="store_true", help="remove every guard")
    u.add_argument("--etag", default="")
    add_request_id(u)
    u.set_defaults(handler=_update)

    d = s.add_parser("delete", help="delete a deployment with no rollout in progress")
    d.add_argument("name")
    d.add_argument("--etag", default="")
    add_request_id(d)
    d.set_defaults(handler=_delete)


def _settings_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--guard",
        action="append",
        metavar="EXPR",
        help="a CEL guard over champion/candidate/shadow window summaries (repeatable)",
    )
    p.add_argument("--description")
    p.add_argument(
        "--label",
        action="append",
        metavar="KEY=VALUE",
        help="a label (repeatable; on update, replaces all labels)",
    )
    p.add_argument(
        "--drift-max-psi", type=float, metavar="PSI", help="drift when any PSI is above this"
    )
    p.add_argument(
        "--drift-max-share",
        type=float,
        metavar="SHARE",
        help="drift when the share of drifted features is above this",
    )
    p.add_argument(
        "--drift-min-rows",
        type=whole_number(),
        metavar="N",
        help="rows drift is judged over: each arm's counts are summed across reports and "
        "replicas until they hold N (default 200; 1 judges every report with rows)",
    )
    p.add_argument(
        "--drift-cooldown",
        metavar="DURATION",
        help="time between two drift events, from 0 to 366d",
    )
    p.add_argument("--webhook", metavar="URL", help="retraining hook URL (admins only)")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """The SDK keyword arguments for the options given (absent options are left out)."""
    out: dict[str, Any] = {}
    if getattr(args, "clear_guards", False):
        if args.guard:
            raise CliError("--clear-guards and --guard contradict each other", EXIT_USAGE)
        out["guards"] = []
    elif args.guard is not None:
        out["guards"] = list(args.guard)
    if args.description is not None:
        out["description"] = args.description
    if args.label is not None:
        out["labels"] = unique_key_values(args.label, "--label")
    if args.webhook is not None:
        out["webhook_url"] = args.webhook
    drift: dict[str, Any] = {}
    if args.drift_max_psi is not None:
        drift["max_psi"] = args.drift_max_psi
    if args.drift_max_share is not None:
        drift["max_drifted_share"] = args.drift_max_share
    if args.drift_min_rows is not None:
        drift["min_rows"] = args.drift_min_rows
    if args.drift_cooldown is not None:
        drift["cooldown"] = bounded_duration(
            "--drift-cooldown", args.drift_cooldown, MAX_DRIFT_COOLDOWN_SECONDS
        )
    if drift:
        out["drift_thresholds"] = drift
    return out


def thresholds_dict(d: deployments_pb2.Deployment) -> dict[str, Any]:
    """A deployment's drift thresholds as :meth:`update_deployment` takes them."""
    t = d.drift_thresholds
    out: dict[str, Any] = {"min_rows": t.min_rows}
    if t.HasField("max_psi"):
        out["max_psi"] = t.max_psi
    if t.HasField("max_drifted_share"):
        out["max_drifted_share"] = t.max_drifted_share
    if t.HasField("cooldown"):
        out["cooldown"] = t.cooldown.ToTimedelta().total_seconds()
    return out


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def bounded_duration(option: str, text: str, maximum: float) -> float:
    """Seconds in ``text``, from 0 to ``maximum``; a usage error (exit 2) otherwise, before
    anything is sent."""
    seconds = _duration(text)
    try:
        return check_seconds(seconds, option, maximum, "INVALID_DURATION")
    except InvalidArgument as exc:
        raise CliError(exc.message, EXIT_USAGE, reason=exc.reason) from None


COLUMNS = ["name", "model", "champion", "rollout", "state", "candidate", "percent", "generation"]


def row(d: deployments_pb2.Deployment) -> list[object]:
    """A deployment's table row."""
    r = d.rollout if d.HasField("rollout") else None
    return [
        d.name,
        d.model,
        d.champion_version,
        "" if r is None else deployments_pb2.RolloutStrategy.Name(r.strategy)[17:].lower(),
        "" if r is None else deployments_pb2.RolloutState.Name(r.state)[14:].lower(),
        "" if r is None else r.candidate_version,
        "" if r is None else f"{r.candidate_percent:g}",
        d.generation,
    ]


def _create(args: argparse.Namespace, out: Printer) -> int:
    kw = _settings(args)
    drift = kw.pop("drift_thresholds", {})
    with server_errors(), client(args) as c:
        created = c.create_deployment(
            args.name,
            model=args.model,
            champion_version=int(numbered_version(c, args.model, args.champion, out)),
            max_psi=drift.get("max_psi"),
            max_drifted_share=drift.get("max_drifted_share"),
            min_rows=drift.get("min_rows", 0),
            drift_cooldown=drift.get("cooldown"),
            request_id=args.request_id or None,
            **kw,
        )
    out.emit(message_dict(created), columns=COLUMNS, rows=[row(created)])
    return 0


def _get(args: argparse.Namespace, out: Printer) -> int:
    with server_errors(), client(args) as c:
        d = c.get_deployment(args.name)
    out.emit(message_dict(d), columns=COLUMNS, rows=[row(d)])
    return 0


def _list(args: argparse.Namespace, out: Printer) -> int:
    with server_errors(), client(args) as c:
        items = list(c.list_deployments())
    out.emit(
        {"deployments": [message_dict(d) for d in items]},
        columns=COLUMNS,
        rows=[row(d) for d in items],
    )
    return 0


def _update(args: argparse.Namespace, out: Printer) -> int:
    kw = _settings(args)
    if not kw:
        raise CliError(
            "name something to change: --guard, --clear-guards, --description, --label, "
            "--drift-*, --webhook",
            EXIT_USAGE,
        )
    etag = args.etag
    with server_errors(), client(args) as c:
        if "drift_thresholds" in kw:
            # The API replaces all four thresholds together: the ones not named keep their
            # values, read here and sent back under the etag read with them, so that a change
            # made in between is refused (ABORTED) rather than undone.
            current = c.get_deployment(args.name)
            kw["drift_thresholds"] = {**thresholds_dict(current), **kw["drift_thresholds"]}
            etag = etag or current.etag
        updated = c.update_deployment(
            args.name, etag=etag, request_id=args.request_id or None, **kw
        )
    out.emit(message_dict(updated), columns=COLUMNS, rows=[row(updated)])
    return 0


def _delete(args: argparse.Namespace, out: Printer) -> int:
    with server_errors(), client(args) as c:
        c.delete_deployment(args.name, etag=args.etag, request_id=args.request_id or None)
    out.emit({"deleted": deployment_name(args.name)})
    return 0
