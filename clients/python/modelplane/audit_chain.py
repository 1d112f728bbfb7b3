"""The audit chain's canonical encoding and hashes, and offline verification of an export.

The control plane hashes its events and signs its checkpoints with this module
(``controlplane.audit`` re-exports it), so an export checked here is checked against the very
bytes the server hashed. It needs the standard library only, as the light client install has
it; checking a checkpoint's signature needs the ``cryptography`` package besides.

The encoding is JSON with sorted keys, no whitespace and UTF-8 text, after reducing values to
JSON types: dataclasses become objects of their fields, datetimes ISO 8601 text in UTC with
microseconds (naive ones are taken as UTC), dates ISO text, timedeltas seconds, enums their
value, bytes base64 text, sets sorted lists, non-finite floats their name. Any other type is
refused, so that a digest always means the same bytes.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import hashlib
import json
import math
import os
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import PurePath
from typing import IO, Any

#: The ``prev_hash`` of the first event.
GENESIS_HASH = "0" * 64

#: The fields of an event its hash covers, as each line of an export holds them.
HASHED_FIELDS = (
    "seq",
    "time",
    "actor",
    "action",
    "resource",
    "request_id",
    "before_sha256",
    "after_sha256",
    "prev_hash",
)

#: Every field of an exported event: the hashed ones and the hash.
EVENT_FIELDS = (*HASHED_FIELDS, "hash")


def utc_text(value: datetime) -> str:
    """``2026-11-26T10:00:00.000000Z``: one spelling per instant."""
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


#: Field names of the dataclasses met so far (``dataclasses.fields`` is slow to call per value).
_DATACLASS_FIELDS: dict[type, tuple[str, ...]] = {}


def plain(value: Any) -> Any:
    """``value`` reduced to JSON types, as the module docstring describes."""
    # Fast paths by exact type for what domain objects are made of; every other type (and any
    # subclass) takes the general path below, which gives the same result for these.
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is dict:
        return {str(k): plain(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [plain(v) for v in value]
    names = _DATACLASS_FIELDS.get(kind)
    if names is not None:
        return {name: plain(getattr(value, name)) for name in names}
    return _plain_general(value)


def _plain_general(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, enum.Enum):
        return plain(value.value)
    if isinstance(value, datetime):
        return utc_text(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, Decimal | uuid.UUID | PurePath):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = tuple(f.name for f in dataclasses.fields(value))
        _DATACLASS_FIELDS[type(value)] = names
        return {name: plain(getattr(value, name)) for name in names}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((plain(v) for v in value), key=canonical_json)
    raise TypeError(f"the audit trail cannot encode a {type(value).__name__}")


def canonical_json(value: Any) -> bytes:
    """The canonical encoding of ``value``."""
    return json.dumps(
        plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def object_digest(value: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of a domain object; empty for None."""
    if value is None:
        return ""
    return hashlib.sha256(canonical_json(value)).hexdigest()


def event_hash(fields: Mapping[str, Any]) -> str:
    """SHA-256 (hex) over the canonical encoding of an event's fields, ``prev_hash`` included."""
    return hashlib.sha256(canonical_json({"v": 1, **fields})).hexdigest()


def checkpoint_payload(seq: int, head_hash: str, time: datetime, key_id: str) -> bytes:
    """The bytes a checkpoint's signature covers."""
    return canonical_json(
        {"v": 1, "seq": seq, "head_hash": head_hash, "time": utc_text(time), "key_id": key_id}
    )


@dataclasses.dataclass(frozen=True)
class CheckpointClaim:
    """A checkpoint as read from its file: what it says of the chain head, trusted only once
    :func:`check_signature` has verified it."""

    seq: int
    head_hash: str
    time: datetime
    key_id: str
    signature: str

    @classmethod
    def from_dict(cls, data: Any) -> CheckpointClaim:
        """Read ``modelplane audit checkpoint`` output; ``ValueError`` saying why otherwise."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        missing = [k for k in ("seq", "head_hash", "time", "key_id", "signature") if k not in data]
        if missing:
            raise ValueError(f"it lacks {', '.join(missing)}")
        seq = data["seq"]
        # bool is an int to Python; a checkpoint's seq is a whole JSON number.
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise ValueError("seq is not a whole number >= 0")
        texts = [data[k] for k in ("head_hash", "time", "key_id", "signature")]
        if not all(isinstance(t, str) for t in texts):
            raise ValueError("head_hash, time, key_id and signature must be text")
        try:
            time = datetime.fromisoformat(data["time"])
            # In UTC here, as the server reads it, refusing an offset past year 1 or 9999.
            time = time.astimezone(UTC) if time.tzinfo else time.replace(tzinfo=UTC)
        except (ValueError, OverflowError):
            raise ValueError(f"time {data['time'][:40]!r} is not an ISO 8601 time") from None
        return cls(seq, data["head_hash"], time, data["key_id"], data["signature"])

    def payload(self) -> bytes:
        """The bytes the signature covers."""
        return checkpoint_payload(self.seq, self.head_hash, self.time, self.key_id)


class SignatureStatus(enum.StrEnum):
    """Whether a checkpoint's signature was checked, and how that went."""

    VERIFIED = "verified"
    INVALID = "invalid"
    NOT_CHECKED = "not_checked"


def _public_key_text(pem: str | bytes) -> bytes:
    """The PEM inside ``pem``: text as ``modelplane keys show`` prints it (a comment line, then
    PEM), or its ``--output json`` document with a ``pem`` field."""
    raw = pem.encode("utf-8") if isinstance(pem, str) else pem
    if raw.lstrip().startswith(b"{"):
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"not a JSON document ({exc})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("pem"), str):
            raise ValueError("a JSON public key needs a pem field, as keys show prints it")
        return str(doc["pem"]).encode("utf-8")
    return raw


def check_signature(checkpoint: CheckpointClaim, public_key: str | bytes | None) -> tuple[str, str]:
    """``(status, note)``: whether ``public_key`` (PEM) signed ``checkpoint``, as the server
    checks it. Without a key, or without the ``cryptography`` package, the status is
    ``not_checked`` and the note says why. ``ValueError`` if the key is no Ed25519 PEM key."""
    status, note, _ = _check_signature(checkpoint, public_key)
    return status, note


def _check_signature(
    checkpoint: CheckpointClaim, public_key: str | bytes | None
) -> tuple[str, str, str]:
    """:func:`check_signature`'s status and note, and for a signature that does not verify,
    what to do about it (empty otherwise)."""
    if public_key is None:
        return (
            SignatureStatus.NOT_CHECKED,
            "the checkpoint's signature was not checked (no public key given; save the one "
            "`modelplane keys show` prints and pass it with --public-key)",
            "",
        )
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError:
        return (
            SignatureStatus.NOT_CHECKED,
            "the checkpoint's signature was not checked: that needs the cryptography package "
            "(pip install cryptography)",
            "",
        )
    try:
        key = serialization.load_pem_public_key(_public_key_text(public_key))
    except ValueError as exc:
        raise ValueError(f"not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    given_id = hashlib.sha256(raw).hexdigest()[:16]
    try:
        key.verify(base64.b64decode(checkpoint.signature, validate=True), checkpoint.payload())
    except (InvalidSignature, ValueError, binascii.Error):
        named = f"{checkpoint.key_id[:40]!r}"
        if checkpoint.key_id != given_id:
            other = f" (the checkpoint names key {named}, the given key is {given_id})"
            advice = (
                f"to check the export against the checkpoint, give with --public-key the public "
                f"key of key {named}, which the checkpoint names (`modelplane keys show` on the "
                "server that signed it prints it); if no server has that key, the checkpoint "
                "was altered"
            )
        else:
            other = ""
            advice = (
                "the given key is the one the checkpoint names, so the checkpoint was altered "
                "after it was signed: check the export against an unaltered checkpoint no newer "
                "than the export"
            )
        return (
            SignatureStatus.INVALID,
            "the checkpoint's signature does not verify with the given public key; the "
            f"checkpoint was altered or signed by another key{other}",
            advice,
        )
    return SignatureStatus.VERIFIED, "", ""


class ExportProblem(enum.StrEnum):
    """What is wrong with an export file; the first seven are also what the server's verify
    of its own chain names (``controlplane.audit.Problem``)."""

    EVENT_ALTERED = "EVENT_ALTERED"
    EVENT_OUT_OF_RANGE = "EVENT_OUT_OF_RANGE"
    EVENT_MISSING = "EVENT_MISSING"
    CHAIN_BROKEN = "CHAIN_BROKEN"
    TRUNCATED = "TRUNCATED"
    CHECKPOINT_MISMATCH = "CHECKPOINT_MISMATCH"
    CHECKPOINT_SIGNATURE_INVALID = "CHECKPOINT_SIGNATURE_INVALID"
    #: The line holds the same event as an earlier line.
    EVENT_DUPLICATED = "EVENT_DUPLICATED"
    #: The line holds another event under a sequence number an earlier line has.
    EVENT_INSERTED = "EVENT_INSERTED"
    #: The line holds a later event than the one due, which comes further down.
    EVENT_OUT_OF_ORDER = "EVENT_OUT_OF_ORDER"
    EMPTY_EXPORT = "EMPTY_EXPORT"
    NOT_JSON = "NOT_JSON"
    #: JSON, but not an event: a field missing, unknown, repeated or of the wrong type.
    LINE_MALFORMED = "LINE_MALFORMED"
    #: The file ends in the middle of its last line.
    LINE_TRUNCATED = "LINE_TRUNCATED"
    #: Something other than events after the last event.
    TRAILING_DATA = "TRAILING_DATA"


#: What a chain that holds together shows and what it cannot: the server's verify and
#: :func:`verify_export` say it of a chain checked without a checkpoint.
CHAIN_ALONE = (
    "as far as the chain alone shows: a rewrite that recomputes every hash, or a cut tail, "
    "needs a checkpoint to detect"
)

#: How to take the checkpoint that :data:`CHAIN_ALONE` asks for.
TAKE_CHECKPOINT = "take one with `modelplane audit checkpoint` and keep it outside the database"


def _events(count: int) -> str:
    return f"{count} event{'s' if count != 1 else ''}"


def intact_message(
    what: str,
    checked: int,
    head_seq: int,
    checkpoint_seq: int | None = None,
    checkpoint_time: str = "",
    advice: str = TAKE_CHECKPOINT,
) -> str:
    """What a chain that passed verification shows, and what it does not: ``what`` (``the
    chain``, ``the export``) holds ``checked`` events to ``head_seq``; checked against the
    checkpoint of ``checkpoint_time`` that saw ``checkpoint_seq`` events, or else only against
    itself (``advice`` then says how to get a checkpoint). The server's verify and
    :func:`verify_export` word it alike."""
    counted = f"{_events(checked)}, head event {head_seq}"
    if checkpoint_seq is None:
        return f"{what} is intact ({counted}) {CHAIN_ALONE}" + (f"; {advice}" if advice else "")
    seen = (
        f"events 1 to {checkpoint_seq} are as the checkpoint of {checkpoint_time} saw them"
        if checkpoint_seq
        else f"the checkpoint of {checkpoint_time} saw no events"
    )
    message = f"{what} is intact ({counted}): {seen}"
    if head_seq > checkpoint_seq:
        message += (
            f"; the events after {checkpoint_seq} hold together, which a later checkpoint "
            "would confirm"
        )
    return message


def checkpoint_mismatch_message(
    what: str, seq: int, checkpoint_time: str, line: int | None = None
) -> str:
    """The message for event ``seq`` of ``what`` (on ``line`` of an export) whose hash is not
    the head hash the checkpoint of ``checkpoint_time`` saw: something changed at or before
    it, and which event cannot be told (a rewrite can recompute every hash after the event it
    changed)."""
    at = f" (line {line})" if line is not None else ""
    return (
        f"{what} differs from the checkpoint of {checkpoint_time} at or before event {seq}{at}: "
        f"the hash of event {seq} is not the head hash the checkpoint saw, so events up to "
        f"{seq} were altered, removed or inserted and the hashes after them recomputed (which "
        "event cannot be told)"
    )


def truncated_message(
    what: str,
    head_seq: int,
    checkpoint_seq: int,
    checkpoint_time: str,
    line: int | None = None,
) -> str:
    """The message for ``what`` ending at event ``head_seq`` (on ``line`` of an export) before
    the checkpoint's event ``checkpoint_seq``: its last events were cut, or earlier ones were
    removed and the rest renumbered and rehashed, and which cannot be told."""
    at = f" (line {line})" if line is not None else ""
    gone = checkpoint_seq - head_seq
    tail = (
        f"events {head_seq + 1} to {checkpoint_seq} were"
        if gone > 1
        else f"event {checkpoint_seq} was"
    )
    return (
        f"{what} ends at event {head_seq}{at} but the checkpoint of {checkpoint_time} saw "
        f"{_events(checkpoint_seq)}: {_events(gone)} {'are' if gone > 1 else 'is'} gone: "
        f"{tail} cut from the end, or events up to {checkpoint_seq} were removed and those "
        "after them renumbered with their hashes recomputed (which events cannot be told)"
    )


#: What :func:`verify_export` advises when it had no checkpoint to compare.
_EXPORT_ADVICE = (
    "check it against a checkpoint no newer than the export (taken with `modelplane audit "
    "checkpoint` and kept outside the database) with --checkpoint, and the server's public key "
    "with --public-key"
)


@dataclasses.dataclass(frozen=True)
class ExportVerifyResult:
    """The outcome of :func:`verify_export`.

    ``first_bad_line`` (1-based) is the first line found wrong and ``first_bad_seq`` the event
    the problem names (for a missing event, the missing sequence number, as the server's verify
    reports it), or None when it names none; ``first_bad_line`` is None too when the problem is
    no line's (an empty file, an export ending before its checkpoint's event). ``lines``
    counts the lines read (to the first bad one); ``checked``, ``head_seq`` and ``head_hash``
    describe the export up to its last good event; ``first_seq`` is the sequence number of its
    first line. ``signature`` is ``verified``, ``invalid``, ``not_checked`` or empty when no
    checkpoint was given.
    """

    ok: bool
    lines: int
    checked: int
    first_seq: int | None
    head_seq: int
    head_hash: str
    first_bad_line: int | None = None
    first_bad_seq: int | None = None
    problem: str = ""
    message: str = ""
    signature: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return dataclasses.asdict(self)


class _Bad(Exception):
    """A problem found at a line; ends the walk."""

    def __init__(
        self, problem: ExportProblem, message: str, line: int | None, seq: int | None
    ) -> None:
        super().__init__(message)
        self.problem, self.message, self.line, self.seq = problem, message, line, seq


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class _Repeated(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Repeated(key)
        out[key] = value
    return out


def _parse(raw: bytes) -> Any:
    """The JSON value of a line; ``ValueError`` when it is none (``_Repeated`` for a key given
    twice, which plain ``json.loads`` would silently resolve to its last value)."""
    return json.loads(
        raw.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_refuse_constant
    )


def _event(value: Any, line: int) -> dict[str, Any]:
    """``value`` checked to be an exported event."""
    if not isinstance(value, dict):
        raise _Bad(
            ExportProblem.LINE_MALFORMED,
            f"line {line} is JSON but not an event object",
            line,
            None,
        )
    seq = value.get("seq")
    seq_ok = isinstance(seq, int) and not isinstance(seq, bool)
    named = seq if seq_ok else None
    what = f"line {line} (event {seq})" if seq_ok else f"line {line}"
    missing = [k for k in EVENT_FIELDS if k not in value]
    if missing:
        raise _Bad(ExportProblem.LINE_MALFORMED, f"{what} lacks {', '.join(missing)}", line, named)
    unknown = sorted(k for k in value if k not in EVENT_FIELDS)
    if unknown:
        raise _Bad(
            ExportProblem.LINE_MALFORMED,
            f"{what} has fields no event has, which no hash covers: {', '.join(unknown)[:200]}",
            line,
            named,
        )
    if not seq_ok:
        raise _Bad(ExportProblem.LINE_MALFORMED, f"{what}: seq is not a whole number", line, None)
    wrong = [k for k in EVENT_FIELDS if k != "seq" and not isinstance(value[k], str)]
    if wrong:
        raise _Bad(
            ExportProblem.LINE_MALFORMED, f"{what}: {', '.join(wrong)} must be text", line, named
        )
    return value


def _read_event(raw: bytes, line: int) -> dict[str, Any]:
    """The event on a line, or ``_Bad`` saying why there is none (NOT_JSON for any line that
    is not JSON; the caller tells a truncated line and trailing data apart)."""
    try:
        value = _parse(raw)
    except _Repeated as exc:
        raise _Bad(
            ExportProblem.LINE_MALFORMED,
            f"line {line} gives the field {exc.key[:40]!r} twice",
            line,
            None,
        ) from None
    except (ValueError, RecursionError):
        blank = not raw.strip()
        raise _Bad(
            ExportProblem.NOT_JSON,
            f"line {line} is {'blank' if blank else 'not JSON'}",
            line,
            None,
        ) from None
    return _event(value, line)


def _only_junk(rest: Iterator[bytes]) -> bool:
    """Whether no line of ``rest`` is a JSON object (what an event line would be)."""
    for raw in rest:
        try:
            if isinstance(_parse(raw), dict):
                return False
        except (ValueError, RecursionError, _Repeated):
            continue
    return True


def _line_of(rest: Iterator[bytes], start: int, seq: int) -> int | None:
    """The number of the first line of ``rest`` (numbered from ``start``) holding event
    ``seq``."""
    for number, raw in enumerate(rest, start):
        try:
            value = _parse(raw)
        except (ValueError, RecursionError, _Repeated):
            continue
        if isinstance(value, dict) and type(value.get("seq")) is int and value["seq"] == seq:
            return number
    return None


def _event_at(path: str | os.PathLike[str], line: int) -> dict[str, Any]:
    """The event on line ``line`` of the file, read again (it was found good earlier)."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            if number == line:
                return dict(_parse(raw))
    raise OSError(f"{path} changed while it was read: line {line} is gone")


@dataclasses.dataclass
class _Walk:
    lines: int = 0
    checked: int = 0
    first_seq: int | None = None
    head_seq: int = 0
    head_hash: str = GENESIS_HASH


def _walk(
    path: str | os.PathLike[str],
    handle: IO[bytes],
    state: _Walk,
    checkpoint: CheckpointClaim | None,
    start: tuple[int, str] | None,
) -> None:
    """Check every line in turn, recording the good ones in ``state``; ``_Bad`` at the first
    line found wrong. ``start`` is the sequence number and ``prev_hash`` the first line is taken
    to have (a full export's are 1 and the genesis hash)."""
    expected, prev = start or (1, GENESIS_HASH)
    lines = iter(handle)
    for number, raw in enumerate(lines, 1):
        state.lines = number
        try:
            event = _read_event(raw, number)
        except _Bad as bad:
            if bad.problem is not ExportProblem.NOT_JSON:
                raise
            if not raw.endswith(b"\n") and raw.lstrip().startswith(b"{"):
                raise _Bad(
                    ExportProblem.LINE_TRUNCATED,
                    f"line {number} is cut short: the file ends in the middle of an event",
                    number,
                    None,
                ) from None
            if state.checked and _only_junk(lines):
                raise _Bad(
                    ExportProblem.TRAILING_DATA,
                    f"{bad.message}: the file goes on after its last event (event "
                    f"{state.head_seq}, line {number - 1}) with something that is no event",
                    number,
                    None,
                ) from None
            raise
        seq = event["seq"]
        if seq < 1:
            raise _Bad(
                ExportProblem.EVENT_OUT_OF_RANGE,
                f"line {number} holds event {seq}: sequence numbers start at 1",
                number,
                seq,
            )
        if state.first_seq is None:
            state.first_seq = seq
        if seq > expected:
            later = _line_of(lines, number + 1, expected)
            if later is not None:
                raise _Bad(
                    ExportProblem.EVENT_OUT_OF_ORDER,
                    f"line {number} holds event {seq} where event {expected} was due; event "
                    f"{expected} comes at line {later}: the events were reordered",
                    number,
                    seq,
                )
            raise _Bad(
                ExportProblem.EVENT_MISSING,
                f"event {expected} is missing: line {number} holds event {seq}"
                + (f", after event {expected - 1}" if number > 1 else ""),
                number,
                expected,
            )
        if seq < expected:
            # The lines so far hold consecutive events, so this number's first line is known.
            earlier = number - (expected - seq)
            same = _event_at(path, earlier) == event
            raise _Bad(
                ExportProblem.EVENT_DUPLICATED if same else ExportProblem.EVENT_INSERTED,
                f"line {number} holds event {seq} again, as line {earlier} does"
                + (
                    ": a duplicated line"
                    if same
                    else ", with other fields: one of the two was inserted"
                ),
                number,
                seq,
            )
        fields = {k: event[k] for k in HASHED_FIELDS}
        if event_hash(fields) != event["hash"]:
            raise _Bad(
                ExportProblem.EVENT_ALTERED,
                f"line {number} (event {seq}, {event['action'][:80]} "
                f"{event['resource'][:200]}) was altered: its fields no longer match its hash",
                number,
                seq,
            )
        if event["prev_hash"] != prev:
            raise _Bad(
                ExportProblem.CHAIN_BROKEN,
                f"line {number} (event {seq}) does not follow "
                + (
                    f"event {seq - 1}: its prev_hash is not that event's hash (an event before "
                    "it was replaced)"
                    if seq > 1
                    else "the start of the chain: its prev_hash is not the genesis hash"
                ),
                number,
                seq,
            )
        if (
            checkpoint is not None
            and seq == checkpoint.seq
            and event["hash"] != checkpoint.head_hash
        ):
            raise _Bad(
                ExportProblem.CHECKPOINT_MISMATCH,
                checkpoint_mismatch_message(
                    "the export", seq, utc_text(checkpoint.time), line=number
                ),
                number,
                seq,
            )
        state.checked += 1
        expected, prev = seq + 1, event["hash"]
        state.head_seq, state.head_hash = seq, event["hash"]
    if state.lines == 0:
        raise _Bad(
            ExportProblem.EMPTY_EXPORT,
            "the export is empty: it holds no events to verify",
            None,
            None,
        )
    if checkpoint is not None:
        if state.head_seq < checkpoint.seq:
            raise _Bad(
                ExportProblem.TRUNCATED,
                truncated_message(
                    "the export",
                    state.head_seq,
                    checkpoint.seq,
                    utc_text(checkpoint.time),
                    line=state.lines,
                ),
                None,
                state.head_seq + 1,
            )
        if checkpoint.seq == 0 and checkpoint.head_hash != GENESIS_HASH:
            raise _Bad(
                ExportProblem.CHECKPOINT_MISMATCH,
                "the empty-chain checkpoint is malformed",
                None,
                0,
            )


def verify_export(
    path: str | os.PathLike[str],
    checkpoint: CheckpointClaim | None = None,
    public_key: str | bytes | None = None,
) -> ExportVerifyResult:
    """Check a JSON Lines export of the audit trail without the server.

    Every line must be an event whose hash matches its fields (hashed as the server hashes
    them), whose ``prev_hash`` is the previous line's hash (the genesis hash for event 1), and
    whose sequence number is one more than the previous line's. The result names the first
    line found wrong: altered, missing, reordered, duplicated or inserted events, lines that
    are not JSON or not events, a last line cut short and trailing data. A file whose first
    event is not event 1 is checked from its first line on, and reported as missing the events
    before it. With ``checkpoint`` the export must reach its event and have its hash there;
    with ``public_key`` (PEM) its signature is checked first, and a checkpoint whose signature
    does not verify is not compared (as the server's verify does). Without a checkpoint only
    the export's own consistency is checked: a rewrite that recomputes every hash after the
    event it changed, or events cut from the end, still hold together, and the message of a
    result that passes says so. A checkpoint shows such a change up to its event, but not
    which event changed; the messages say both as the server's verify says them
    (:func:`intact_message`, :func:`checkpoint_mismatch_message`, :func:`truncated_message`).

    ``OSError`` when the file cannot be read; ``ValueError`` when ``public_key`` is not an
    Ed25519 PEM key.
    """
    signature, note, advice = "", "", ""
    if checkpoint is not None:
        signature, note, advice = _check_signature(checkpoint, public_key)
    trusted = checkpoint if signature != SignatureStatus.INVALID else None

    state = _Walk()
    bad: _Bad | None = None
    with open(path, "rb") as handle:
        try:
            _walk(path, handle, state, trusted, None)
        except _Bad as exc:
            bad = exc
    if (
        bad is not None
        and bad.problem is ExportProblem.EVENT_MISSING
        and bad.line == 1
        and state.first_seq is not None
    ):
        bad, state = _partial(path, trusted)

    def result(**kw: Any) -> ExportVerifyResult:
        return ExportVerifyResult(
            lines=state.lines,
            checked=state.checked,
            first_seq=state.first_seq,
            head_seq=state.head_seq,
            head_hash=state.head_hash,
            signature=str(signature),
            **kw,
        )

    def with_note(message: str) -> str:
        return f"{message}; {note}" if note else message

    if bad is not None:
        return result(
            ok=False,
            first_bad_line=bad.line,
            first_bad_seq=bad.seq,
            problem=str(bad.problem),
            message=with_note(bad.message),
        )
    if signature == SignatureStatus.INVALID:
        return result(
            ok=False,
            problem=str(ExportProblem.CHECKPOINT_SIGNATURE_INVALID),
            message=f"{note}; "
            + intact_message("the export itself", state.checked, state.head_seq, advice=advice),
        )
    if checkpoint is None:
        intact = intact_message("the export", state.checked, state.head_seq, advice=_EXPORT_ADVICE)
    else:
        intact = intact_message(
            "the export",
            state.checked,
            state.head_seq,
            checkpoint.seq,
            utc_text(checkpoint.time),
        )
    return result(ok=True, message=with_note(intact))


def _partial(
    path: str | os.PathLike[str], checkpoint: CheckpointClaim | None
) -> tuple[_Bad, _Walk]:
    """The problem of an export whose first line is a later event than 1 (and event 1 is
    nowhere in it), and the walk of it from its first line on: the events before it are
    missing, and the link of its first event to them cannot be checked."""
    state = _Walk()
    with open(path, "rb") as handle:
        first = _read_event(handle.readline(), 1)
        handle.seek(0)
        try:
            _walk(path, handle, state, checkpoint, (first["seq"], first["prev_hash"]))
            rest = (
                f"from its first line on, its {state.checked} events (to event "
                f"{state.head_seq}) are intact"
            )
        except _Bad as later:
            rest = f"checked from its first line on, {later.message}"
    seq = first["seq"]
    span = "event 1 is" if seq == 2 else f"events 1 to {seq - 1} are"
    bad = _Bad(
        ExportProblem.EVENT_MISSING,
        f"the export starts at event {seq}, so {span} missing: the server exports the whole "
        f"chain from event 1, and the link of event {seq} to the events before it cannot be "
        f"checked; {rest}",
        1,
        1,
    )
    return bad, state
