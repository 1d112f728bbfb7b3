"""``modelplane keys``: the server's signing key."""

from __future__ import annotations

import argparse
import sys

from modelplane.cli._common import client, server_errors
from modelplane.cli._output import Printer


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``keys`` commands."""
    p = sub.add_parser("keys", help="the server's signing key")
    s = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    show = s.add_parser("show", help="print the public key (PEM) that verifies signatures")
    show.set_defaults(handler=_show)


def _show(args: argparse.Namespace, out: Printer) -> int:
    with server_errors(), client(args) as c:
        key = c.public_key()
    if out.json_output:
        out.emit({"key_id": key.key_id, "algorithm": key.algorithm, "pem": key.pem})
    else:
        sys.stdout.write(f"# key id {key.key_id} ({key.algorithm})\n{key.pem}")
    return 0
