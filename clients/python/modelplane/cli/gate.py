"""``modelplane gate``: evaluate the policy bound to a target for a version."""

from __future__ import annotations

import argparse
import difflib
import json

from modelplane.cli._common import (
    VERSION_OR_ALIAS_HELP,
    add_request_id,
    client,
    numbered_version,
    server_errors,
)
from modelplane.cli._output import EXIT_CHECK_FAILED, EXIT_OK, Printer, to_dict
from modelplane.errors import ModelplaneError


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


def _ungoverned(target: str, governed: list[str] | None) -> str:
    """The warning for a gate on a target no policy governs: it passes anything, and a
    misspelt target (in a CI script, say) would let any version through."""
    text = (
        f"warning: no policy governs target {target!r}, so this gate passes whatever the "
        "version's evidence"
    )
    if governed is None:
        return text
    close = difflib.get_close_matches(target, governed, n=3, cutoff=0.8)
    hint = f"; did you mean {' or '.join(repr(t) for t in close)}?" if close else ""
    known = ", ".join(sorted(governed)) if governed else "none yet"
    return f"{text}{hint} (governed targets: {known})"


def _gate(args: argparse.Namespace, out: Printer) -> int:
    with server_errors(), client(args) as c:
        version = numbered_version(c, args.name, args.version, out)
        d = c.evaluate_gate(args.name, version, args.target, request_id=args.request_id or None)
        if not d.policy:
            try:
                governed: list[str] | None = [p.target for p in c.list_policies()]
            except ModelplaneError:  # not allowed to list them: the warning goes without
                governed = None
            out.progress(_ungoverned(args.target, governed))
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
