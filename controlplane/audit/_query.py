"""Reading the audit trail: filtered pages of events and a JSON Lines export."""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Generator
from datetime import UTC, datetime
from typing import Any, TextIO

from sqlalchemy import ColumnElement, or_
from sqlmodel import col, select

from controlplane.audit._canonical import utc_text
from controlplane.audit._chain import EVENT_COLUMNS, AuditEvent, chain_condition, event_from_row
from controlplane.store import Store
from controlplane.store.pagination import decode, encode, page_size
from controlplane.store.repos import about_models
from controlplane.store.tables import AuditEventRow
from modelplane.errors import InvalidArgument

#: Events read per query while scanning the whole trail.
SCAN_BATCH = 1000


def iter_events(
    store: Store, after_seq: int = 0, batch: int = SCAN_BATCH
) -> Generator[AuditEvent, None, None]:
    """Every event of the chain after ``after_seq`` in sequence order, read in batches (by
    default the whole chain, which starts at 1). A row out of the chain (numbered below 1, or
    on SQLite not by a whole number) is not read, and :func:`controlplane.audit.verify` names
    it; an event with a value of the wrong type is read as
    :func:`controlplane.audit._chain.event_from_row` says."""
    with store.read() as tx:
        last = after_seq
        chain = chain_condition(tx.session)
        while True:
            rows = list(
                tx.session.exec(
                    select(*EVENT_COLUMNS)
                    .where(chain, col(AuditEventRow.seq) > last)
                    .order_by(col(AuditEventRow.seq))
                    .limit(batch)
                )
            )
            for row in rows:
                yield event_from_row(row)
            if len(rows) < batch:
                return
            last = rows[-1].seq


def list_events(
    store: Store,
    resource: str | None = None,
    actor: str | None = None,
    since: datetime | None = None,
    *,
    page_size_: int = 0,
    page_token: str = "",
    models: Collection[str] | None = None,
) -> tuple[list[AuditEvent], str]:
    """A page of the chain's events in sequence order (those numbered from 1, as export and
    verify read them), and the token of the next page ("" at the end).

    ``resource`` matches that resource and the resources under it (``models/m`` also matches
    ``models/m/versions/1``); ``actor`` matches exactly; ``since`` keeps events at or after it;
    ``models`` (a caller scoped to some models) keeps only events about those models, selected
    in the query, so that a page and its token show nothing of the others. Rows out of the
    chain and events with values of the wrong type are treated as in :func:`iter_events`.
    """
    if since is not None and not isinstance(since, datetime):
        raise InvalidArgument("since must be a timestamp", reason="INVALID_ARGUMENT")
    query: dict[str, Any] = {
        "list": "auditEvents",
        "resource": resource or "",
        "actor": actor or "",
        "since": utc_text(since) if since else "",
    }
    after = decode(page_token, query)
    limit = page_size(page_size_)
    conditions: list[ColumnElement[bool]] = []
    if resource:
        conditions.append(
            or_(
                col(AuditEventRow.resource) == resource,
                col(AuditEventRow.resource).startswith(resource.rstrip("/") + "/", autoescape=True),
            )
        )
    if actor:
        conditions.append(col(AuditEventRow.actor) == actor)
    if models is not None:
        conditions.append(about_models(col(AuditEventRow.resource), models))
    if since is not None:
        aware = since if since.tzinfo else since.replace(tzinfo=UTC)
        conditions.append(col(AuditEventRow.time) >= aware.astimezone(UTC))
    if after:
        if not isinstance(after[0], int):
            raise InvalidArgument("page_token is malformed", reason="INVALID_PAGE_TOKEN")
        conditions.append(col(AuditEventRow.seq) > after[0])
    with store.read() as tx:
        # The chain starts at 1, as export and verify read it; a row below 1 is not part of it.
        conditions.append(chain_condition(tx.session))
        rows = list(
            tx.session.exec(
                select(*EVENT_COLUMNS)
                .where(*conditions)
                .order_by(col(AuditEventRow.seq))
                .limit(limit + 1)
            )
        )
        events = [event_from_row(r) for r in rows]
    token = encode(query, [events[limit - 1].seq]) if len(events) > limit else ""
    return events[:limit], token


def export_jsonl(store: Store, out: TextIO | str | os.PathLike[str]) -> int:
    """Write every event as one JSON object per line, in sequence order; returns the count."""
    if isinstance(out, str | os.PathLike):
        with open(out, "w", encoding="utf-8") as handle:
            return export_jsonl(store, handle)
    count = 0
    for event in iter_events(store):
        out.write(json.dumps(event.to_dict(), sort_keys=True, ensure_ascii=False) + "\n")
        count += 1
    return count
