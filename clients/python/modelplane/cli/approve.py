"""``modelplane approve``: record a signed approval or rejection of a version for a target."""

from __future__ import annotations

import argparse

from modelplane.cli._common import (
    VERSION_OR_ALIAS_HELP,
    add_request_id,
    client,
    numbered_version,
    server_errors,
    with_roles,
)
from modelplane.cli._output import Printer


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``approve`` command."""
    p = sub.add_parser(
        "approve",
        help="approve (or --reject) a version for a target; the server signs it",
        description="The approval is signed over the artifact, the latest evaluation and the "
        "policy revision; it stops counting once any of them changes. Roles come from the "
        "token when the server has access control, else from the global --roles option.",
    )
    p.add_argument("name", help="model id")
    p.add_argument("version", help=VERSION_OR_ALIAS_HELP)
    p.add_argument("--target", required=True, help="an alias name or deployments/NAME")
    p.add_argument("--reject", action="store_true", help="record a rejection")
    p.add_argument("--comment", default="")
    add_request_id(p)
    p.set_defaults(handler=_approve)


COLUMNS = ["name", "target", "decision", "approver", "roles", "evidence_sha256", "key_id"]


def _approve(args: argparse.Namespace, out: Printer) -> int:
    with server_errors(), client(args) as c:
        with_roles(c, args)
        a = c.approve(
            args.name,
            numbered_version(c, args.name, args.version, out),
            args.target,
            decision="reject" if args.reject else "approve",
            comment=args.comment,
            request_id=args.request_id or None,
        )
    out.emit(
        a,
        columns=COLUMNS,
        rows=[
            [
                a.name,
                a.target,
                a.decision,
                a.approver,
                ",".join(a.roles),
                a.evidence_sha256[:16],
                a.key_id,
            ]
        ],
    )
    return 0
