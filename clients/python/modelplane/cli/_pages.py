"""Paged lists: one page or every page, and the next page's token where a table has no place
for it."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Any

from modelplane.cli._output import Printer


def pages(
    fetch: Callable[[str], Any], field: str, page_size: int, page_token: str
) -> tuple[list[Any], str]:
    """The items of ``field`` from one page when ``page_size`` or ``page_token`` is given,
    from every page otherwise (``fetch(token)`` returns a list response); with the token of
    the page after the last one read (empty at the end)."""
    one_page = bool(page_size or page_token)
    items: list[Any] = []
    token = page_token
    while True:
        page = fetch(token)
        items.extend(getattr(page, field))
        token = page.next_page_token
        if one_page or not token:
            return items, token


def note_next_page(out: Printer, token: str) -> None:
    """Say on stderr how to fetch the page after this one (``next page: --page-token TOKEN``)
    when there is one and the output is a table; JSON output carries it as ``next_page_token``.
    """
    if token and not out.json_output:
        out.progress(f"next page: --page-token {shlex.quote(token)}")
