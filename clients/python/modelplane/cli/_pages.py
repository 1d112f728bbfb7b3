"""The next page of a one-page list, where a table has no place for it."""

from __future__ import annotations

import shlex

from modelplane.cli._output import Printer


def note_next_page(out: Printer, token: str) -> None:
    """Say on stderr how to fetch the page after this one (``next page: --page-token TOKEN``)
    when there is one and the output is a table; JSON output carries it as ``next_page_token``.
    """
    if token and not out.json_output:
        out.progress(f"next page: --page-token {shlex.quote(token)}")
