"""``modelplane audit`` commands: read, export, checkpoint and verify the audit trail."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, cast

from modelplane._client import VERIFY_AUDIT_TIMEOUT_S
from modelplane.audit_chain import CheckpointClaim, verify_export
from modelplane.cli._common import client, server_errors, takes_relative_times, whole_number
from modelplane.cli._main import CommandDefault
from modelplane.cli._output import (
    EXIT_CHECK_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliError,
    Printer,
    to_dict,
)
from modelplane.errors import DeadlineExceeded
from modelplane.files import replaced_atomically
from modelplane.units import parse_time
from modelplane.v1 import audit_pb2


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``audit`` commands."""
    p = sub.add_parser("audit", help="the hash-chained audit trail")
    s = p.add_subparsers(dest="audit_command", metavar="ACTION", required=True)

    ls = s.add_parser("list", help="list events in sequence order")
    ls.add_argument("--resource", default="", help="this resource and those under it")
    ls.add_argument("--actor", default="")
    ls.add_argument(
        "--since",
        default="",
        metavar="TIME",
        help="ISO-8601 (2026-11-26T10:00:00Z; no zone is UTC) or relative to now (-1h, -7d)",
    )
    ls.add_argument(
        "--limit", type=whole_number(), default=0, help="at most this many events (0: all)"
    )
    ls.set_defaults(handler=_list)
    takes_relative_times(ls)  # --since -1h

    e = s.add_parser("export", help="export the whole trail")
    e.add_argument("--format", default="jsonl", choices=("jsonl",))
    e.add_argument("--out", type=Path, help="file to write (default stdout)")
    e.set_defaults(handler=_export)

    c = s.add_parser("checkpoint", help="save a checkpoint of the chain head signed by the server")
    c.add_argument("--out", required=True, type=Path)
    c.set_defaults(handler=_checkpoint)

    v = s.add_parser(
        "verify",
        help="recompute the chain on the server, or an export file offline (exit 1 naming the "
        "first broken event); the server walks the whole trail in one call, which is given 1h "
        "unless the global --timeout says otherwise",
    )
    v.add_argument("--checkpoint", type=Path, help="a checkpoint saved earlier")
    v.add_argument(
        "--export",
        type=Path,
        metavar="FILE",
        help="check this `audit export` file here, without the server",
    )
    v.add_argument(
        "--public-key",
        type=Path,
        metavar="PEM",
        help="with --export and --checkpoint: the server's public key as `keys show` prints it, "
        "to check the checkpoint's signature (needs the cryptography package)",
    )
    v.set_defaults(handler=_verify)


COLUMNS = ["seq", "time", "actor", "action", "resource", "hash"]


def _since(text: str) -> datetime | None:
    if not text:
        return None
    try:
        return parse_time(text)
    except ValueError as exc:
        raise CliError(f"--since: {exc}", EXIT_USAGE) from None


def _list(args: argparse.Namespace, out: Printer) -> int:
    since = _since(args.since)
    events = []
    with server_errors(), client(args) as c:
        for event in c.audit_events(resource=args.resource, actor=args.actor, since=since):
            events.append(event)
            if args.limit and len(events) >= args.limit:
                break
    out.emit(
        {"events": [to_dict(e) for e in events]},
        columns=COLUMNS,
        rows=[
            [e.seq, e.time.ToJsonString(), e.actor, e.action, e.resource, e.hash[:16]]
            for e in events
        ],
    )
    return 0


def _export(args: argparse.Namespace, out: Printer) -> int:
    with server_errors(), client(args) as c:
        if args.out is None:
            sys.stdout.flush()
            c.export_audit(sys.stdout.buffer, format=args.format)
            sys.stdout.buffer.flush()
            return 0
        with replaced_atomically(args.out) as f:
            counted = _LineCounter(f)
            size = c.export_audit(cast(BinaryIO, counted), format=args.format)
    out.progress(f"wrote {size} bytes to {args.out}")
    if out.json_output:  # one JSON document on stdout, as every command prints
        out.emit(
            {"path": str(args.out), "format": args.format, "events": counted.lines, "bytes": size}
        )
    return 0


class _LineCounter:
    """A binary file's ``write`` that counts the lines (JSON Lines events) written."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.lines = 0

    def write(self, data: bytes) -> int:
        self.lines += data.count(b"\n")
        return self._f.write(data)


def _checkpoint(args: argparse.Namespace, out: Printer) -> int:
    with server_errors(), client(args) as c:
        cp = c.create_checkpoint()
    data = {
        "seq": cp.seq,
        "head_hash": cp.head_hash,
        "time": cp.time,
        "key_id": cp.key_id,
        "signature": cp.signature,
    }
    args.out.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    out.emit(data, columns=["seq", "head_hash", "key_id"], rows=[[cp.seq, cp.head_hash, cp.key_id]])
    return 0


#: The fields of a checkpoint file.
_CHECKPOINT_FIELDS = ("seq", "head_hash", "time", "key_id", "signature")


def _read_checkpoint(path: Path) -> tuple[dict[str, Any], CheckpointClaim]:
    """The checkpoint file's fields as written, and what they claim; exit 2 unless it is one
    (checked by :meth:`CheckpointClaim.from_dict`)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        claim = CheckpointClaim.from_dict(data)
    except (OSError, ValueError, OverflowError) as exc:
        raise CliError(f"--checkpoint {path}: not a checkpoint file ({exc})", EXIT_USAGE) from None
    return {name: data[name] for name in _CHECKPOINT_FIELDS}, claim


def _load(path: Path) -> audit_pb2.Checkpoint:
    try:
        return audit_pb2.Checkpoint(**_read_checkpoint(path)[0])
    except ValueError as exc:  # a seq past int64
        raise CliError(f"--checkpoint {path}: not a checkpoint file ({exc})", EXIT_USAGE) from None


def _verify_timeout(args: argparse.Namespace) -> float:
    """How long ``audit verify`` waits for the server: the global ``--timeout`` when given
    (60 too), else :data:`~modelplane._client.VERIFY_AUDIT_TIMEOUT_S` (1 h), as the SDK's
    ``verify_audit`` waits: the server walks the whole trail in the one call."""
    if isinstance(args.timeout, CommandDefault):
        return VERIFY_AUDIT_TIMEOUT_S
    return float(args.timeout)


def _verify(args: argparse.Namespace, out: Printer) -> int:
    if args.export is not None:
        return _verify_export(args, out)
    if args.public_key is not None:
        raise CliError(
            "--public-key goes with --export: the server checks a checkpoint with its own key",
            EXIT_USAGE,
        )
    checkpoint = _load(args.checkpoint) if args.checkpoint else None
    timeout = _verify_timeout(args)
    with server_errors(), client(args) as c:
        try:
            r = c.verify_audit(checkpoint, timeout=timeout)
        except DeadlineExceeded as exc:
            raise CliError(
                f"the server did not finish verifying the audit trail within {timeout:g}s "
                f"({exc.message}); it stopped walking when the call ended. Give it longer "
                "(modelplane --timeout 2h audit verify ...), or verify an export here instead: "
                "modelplane audit export --out audit.jsonl, then modelplane audit verify --export "
                "audit.jsonl",
                EXIT_UNREACHABLE,
                status=exc.code.value,
                reason=exc.reason,
            ) from None
    out.emit(
        to_dict(r),
        columns=["ok", "checked", "head_seq", "first_bad_seq", "problem", "signature", "message"],
        rows=[
            [
                r.ok,
                r.checked,
                r.head_seq,
                r.first_bad_seq or "",
                r.problem,
                r.signature,
                r.message,
            ]
        ],
    )
    if r.problem == "CHECKPOINT_SIGNATURE_INVALID":
        # The chain itself was intact; the message says so and why the checkpoint failed.
        out.progress(r.message)
    elif not r.ok:
        out.progress(f"audit chain broken at event {r.first_bad_seq}: {r.message}")
    return EXIT_OK if r.ok else EXIT_CHECK_FAILED


def _verify_export(args: argparse.Namespace, out: Printer) -> int:
    """``audit verify --export FILE``: check the file here; no server is asked."""
    checkpoint = _read_checkpoint(args.checkpoint)[1] if args.checkpoint is not None else None
    public_key = None
    if args.public_key is not None:
        if checkpoint is None:
            raise CliError("--public-key checks a checkpoint: give --checkpoint too", EXIT_USAGE)
        try:
            public_key = args.public_key.read_bytes()
        except OSError as exc:
            raise CliError(
                f"--public-key {args.public_key}: {exc.strerror or exc}", EXIT_USAGE
            ) from None
    try:
        r = verify_export(args.export, checkpoint, public_key)
    except OSError as exc:
        raise CliError(f"--export {args.export}: {exc.strerror or exc}", EXIT_USAGE) from None
    except ValueError as exc:
        raise CliError(f"--public-key {args.public_key}: {exc}", EXIT_USAGE) from None
    out.emit(
        {"export": str(args.export), **r.to_dict()},
        columns=[
            "ok",
            "checked",
            "head_seq",
            "first_bad_line",
            "first_bad_seq",
            "problem",
            "signature",
            "message",
        ],
        rows=[
            [
                r.ok,
                r.checked,
                r.head_seq,
                r.first_bad_line or "",
                "" if r.first_bad_seq is None else r.first_bad_seq,
                r.problem,
                r.signature,
                r.message,
            ]
        ],
    )
    if r.problem == "CHECKPOINT_SIGNATURE_INVALID":
        out.progress(r.message)
    elif not r.ok:
        where = f"line {r.first_bad_line}" if r.first_bad_line else str(args.export)
        out.progress(f"audit export broken at {where}: {r.message}")
    return EXIT_OK if r.ok else EXIT_CHECK_FAILED
