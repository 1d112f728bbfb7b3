"""``modelplane gate``: evaluate the policy bound to a target for a version."""

from __future__ import annotations

import argparse
import json

from modelplane.cli._common import (
    VERSION_OR_ALIAS_HELP,
    add_request_id,
    client,
    numbered_version,
    server_errors,
)
from modelplane.cli._output import EXIT_CHECK_FAILED, EXIT_OK, Printer, to_dict


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``gate`` command."""
    p = sub.add_parser(
        "gate",
        help="check a version against the policy of a target (exit 0 pass, 1 fail)",
        description="Evaluate every rule of the policy bound to TARGET against the version's "
        "latest evaluation, approvals, labels and lineage. The decision is recorded; moving a "
        "governed alias needs a passing one.",
    )
    p.add_argument("name", help="model id")
    p.add_argument("version", help=VERSION_OR_ALIAS_HELP)
    p.add_argument("--target", required=True, help="an alias name or deployments/NAME")
    add_request_id(p)
    p.set_defaults(handler=_gate)


def _values(values: dict[str, object]) -> str:
    return ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in values.items())


def _gate(args: argparse.Namespace, out: Printer) -> int:
    with server_errors(), client(args) as c:
        version = numbered_version(c, args.name, args.version, out)
        d = c.evaluate_gate(args.name, version, args.target, request_id=args.request_id or None)
    data = to_dict(d)
    rows = [
        [r["index"], r["outcome"], r["expression"], _values(r.get("values") or {}), r["message"]]
        for r in data.get("results", [])
    ]
    verdict = "PASSED" if d.passed else "FAILED"
    policy = f"{d.policy} r{d.policy_revision}" if d.policy else "no policy bound"
    against = f"; delta against {d.compared_version}" if d.compared_version else ""
    out.emit(
        data,
        columns=["#", "outcome", "rule", "values", "message"],
        rows=rows,
        title=(
            f"gate {args.target}: {verdict} ({policy}; evidence {d.evaluation or 'none'}{against})"
        ),
    )
    return EXIT_OK if d.passed else EXIT_CHECK_FAILED
