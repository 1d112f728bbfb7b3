"""RFC 6902 JSONPatch operations, built as plain JSON."""

from __future__ import annotations

from typing import Any


def escape(key: str) -> str:
    """A map key as one JSON-pointer token (RFC 6901): ``~`` → ``~0``, ``/`` → ``~1``."""
    return key.replace("~", "~0").replace("/", "~1")


def add_to_list(path: str, exists: bool, items: list[Any]) -> list[dict[str, Any]]:
    """Operations appending ``items`` to the list at ``path`` (created when absent)."""
    if not items:
        return []
    if not exists:
        return [{"op": "add", "path": path, "value": list(items)}]
    return [{"op": "add", "path": f"{path}/-", "value": item} for item in items]


def add_to_map(path: str, exists: bool, entries: dict[str, Any]) -> list[dict[str, Any]]:
    """Operations setting ``entries`` in the map at ``path`` (created when absent)."""
    if not exists:
        return [{"op": "add", "path": path, "value": dict(entries)}]
    return [{"op": "add", "path": f"{path}/{escape(k)}", "value": v} for k, v in entries.items()]
