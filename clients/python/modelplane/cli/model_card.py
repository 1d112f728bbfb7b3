"""``modelplane model-card``: a version's model card as Markdown, HTML or JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from modelplane.cli._common import client, server_errors
from modelplane.cli._output import Printer


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``model-card`` command."""
    p = sub.add_parser(
        "model-card",
        help="print a version's model card",
        description="Intended use and limitations, lineage, evaluation metrics and slices, "
        "fairness, data validation, gate decisions and approvals with signature status.",
    )
    p.add_argument("name", help="model id")
    p.add_argument("version", help="version number or @ALIAS")
    p.add_argument("--format", choices=("md", "html", "json"), default="md")
    p.add_argument("--out", type=Path, help="file to write (default stdout)")
    p.set_defaults(handler=_card)


def _card(args: argparse.Namespace, out: Printer) -> int:
    with server_errors(), client(args) as c:
        card = c.model_card(args.name, args.version, format=args.format)
    if args.out is not None:
        args.out.write_text(card.content, encoding="utf-8")
        out.emit({"name": card.name, "format": card.format, "path": str(args.out)})
    elif out.json_output:
        data = json.loads(card.content) if card.format == "json" else {"content": card.content}
        out.emit({"name": card.name, "format": card.format, **data})
    else:
        sys.stdout.write(card.content if card.content.endswith("\n") else card.content + "\n")
    return 0
