"""The Python SDK: one object per control-plane connection. The CLI is built on it."""

from __future__ import annotations

import base64
import hashlib
import math
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import grpc
from google.protobuf import field_mask_pb2, timestamp_pb2

from modelplane._code import without_credentials
from modelplane._deployments import DeploymentsMixin
from modelplane._environment import capture_environment
from modelplane.errors import (
    DeadlineExceeded,
    InvalidArgument,
    ModelplaneError,
    Unavailable,
    Unimplemented,
    error_info,
    from_rpc_error,
)
from modelplane.files import replaced_atomically
from modelplane.ids import claimed_role_names
from modelplane.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    blobs_pb2,
    blobs_pb2_grpc,
    deployments_pb2_grpc,
    evaluation_pb2,
    evaluation_pb2_grpc,
    governance_pb2,
    governance_pb2_grpc,
    operations_pb2,
    operations_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)

PRINCIPAL_METADATA_KEY = "x-modelplane-principal"
ROLES_METADATA_KEY = "x-modelplane-roles"
AUTHORIZATION_METADATA_KEY = "authorization"
#: Upload message and file read size. Each message costs the sync gRPC stream a hand-off
#: between threads on both sides, so fewer, larger messages cost less CPU; the servers keep
#: buffers this large on their heap (``modelplane.server.memory``) instead of faulting them in
#: per message (bench/README.md, "Upload message size").
CHUNK_BYTES = 1 << 20
#: Files up to this size are read once and uploaded from memory; larger ones are streamed
#: from the file (read twice: once for the digest the header declares, once to send).
READ_WHOLE_BYTES = 16 << 20
MAX_MESSAGE_BYTES = 2**31 - 1
T = TypeVar("T")

_UPLOAD_METHOD = blobs_pb2.DESCRIPTOR.services_by_name["BlobService"].methods_by_name["UploadBlob"]
_UPLOAD_PATH = f"/{_UPLOAD_METHOD.containing_service.full_name}/{_UPLOAD_METHOD.name}"
#: The key of ``UploadBlobRequest.chunk`` on the wire: its field number, wire type 2
#: (length-delimited).
_CHUNK_KEY = (blobs_pb2.UploadBlobRequest.DESCRIPTOR.fields_by_name["chunk"].number << 3) | 2


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode_chunk(chunk: bytes | memoryview, prefix: bytes = b"") -> bytes:
    """``UploadBlobRequest(chunk=chunk)`` serialized after ``prefix``, the serialized fields
    that come before it (the header, in the first message): the same bytes as
    ``SerializeToString`` of the message with both.

    Written out because protobuf's serializer grows its output buffer step by step: for a
    1 MiB chunk it took 1.3 ms of CPU with glibc's default malloc settings, against 35 us for
    this one concatenation (bench/README.md, "Upload serialization").
    """
    if not chunk:
        return prefix  # proto3 leaves an empty field off the wire
    return b"".join((prefix, _varint(_CHUNK_KEY), _varint(len(chunk)), chunk))


MEDIA_TYPES = {
    ".onnx": "application/onnx",
    ".parquet": "application/vnd.apache.parquet",
    ".csv": "text/csv",
    ".arrow": "application/vnd.apache.arrow.file",
    ".arrows": "application/vnd.apache.arrow.stream",
}


class ServerUnreachable(Unavailable):
    """No connection to the server could be made (as opposed to an error it answered)."""

    default_reason = "SERVER_UNREACHABLE"


class CallDeadlineExceeded(DeadlineExceeded):
    """The call's own deadline (the client's ``timeout``) passed before the server answered,
    as opposed to a DEADLINE_EXCEEDED the server sent (which carries its reason)."""


def rpc_error(exc: grpc.RpcError, server: str, *, not_served: str = "") -> ModelplaneError:
    """The SDK error for a failed call to ``server`` (e.g. "the sidecar at HOST:PORT"):
    ``ServerUnreachable`` or ``CallDeadlineExceeded`` when the server sent nothing (no
    ErrorInfo), else the error it answered.

    An UNIMPLEMENTED without ErrorInfo is gRPC's own answer for a method the server does not
    serve at all: :class:`Unimplemented` (reason ``UNIMPLEMENTED``) saying that the address
    answers but does not serve this API, followed by ``not_served``, the likely mix-up of
    addresses and what to give instead."""
    code = exc.code()  # type: ignore[attr-defined]
    if error_info(exc) is None:
        if code == grpc.StatusCode.UNAVAILABLE:
            return ServerUnreachable(f"cannot reach {server}: {exc.details()}")  # type: ignore[attr-defined]
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return CallDeadlineExceeded(
                f"no answer from {server} before the call's deadline: {exc.details()}"  # type: ignore[attr-defined]
            )
        if code == grpc.StatusCode.UNIMPLEMENTED:
            detail = exc.details() or "no detail"  # type: ignore[attr-defined]
            hint = f": {not_served}" if not_served else ""
            return Unimplemented(
                f"{server} answers, but does not serve this API (gRPC: {detail}){hint}",
                reason="UNIMPLEMENTED",
            )
    return from_rpc_error(exc)


def not_the_control_plane(address: str) -> str:
    """What to check when ``address``, taken for the control plane's, serves none of its API."""
    return (
        f"is {address} a sidecar's address? Give the control plane's gRPC address (the CLI's "
        "--server or MODELPLANE_SERVER, the SDK's Client(address)), not a sidecar's; or the "
        "control plane there is older than this client and lacks the call"
    )


def _sha256_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def model_name(model: str) -> str:
    """``fraud`` → ``models/fraud`` (full names pass through)."""
    return model if model.startswith("models/") else f"models/{model}"


def blob_name(blob: str) -> str:
    """``<sha256>`` → ``blobs/<sha256>`` (full names pass through)."""
    return blob if blob.startswith("blobs/") else f"blobs/{blob}"


def version_name(model: str, version: int | str) -> str:
    """A version by number, or by alias when given as ``@alias``."""
    text = str(version)
    if text.startswith("@"):
        return f"{model_name(model)}{text}"
    return f"{model_name(model)}/versions/{text}"


M = TypeVar("M", registry_pb2.Model, registry_pb2.ModelVersion)


def _with_fields(message: M, fields: Mapping[str, Any], call: str, updatable: Sequence[str]) -> M:
    """Set the fields an update names (labels replace the whole map). A name that is not
    among the ``updatable`` fields (a misspelling, or ``name`` and ``etag``, which say what to
    update) is :class:`InvalidArgument` (INVALID_UPDATE_MASK, as the server refuses a field it
    does not update) naming ``call``; a value of the wrong type is TypeError naming the
    field."""
    for key, value in fields.items():
        if key not in updatable:
            raise InvalidArgument(
                f"{call}() cannot update a field {key!r}: it updates {', '.join(updatable)}",
                reason="INVALID_UPDATE_MASK",
                metadata={"field": "update_mask"},
            )
        try:
            if key == "labels":
                message.labels.update(value)
            else:
                setattr(message, key, value)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{call}() field {key!r}: {exc}") from None
    return message


def _lineage_key(key: object, what: str) -> str:
    """A parameter or metric name as protobuf takes it: a ``str`` (else TypeError) that is
    UTF-8 text (a lone surrogate is :class:`InvalidArgument`, as the server's reason for a bad
    ``what`` says)."""
    if not isinstance(key, str):
        raise TypeError(f"register_version() {what} names must be str, not {type(key).__name__}")
    _utf8(key, f"{what} name {_cut(key)}", what)
    return key


def _utf8(text: str, subject: str, what: str) -> None:
    """Refuse ``text`` that protobuf cannot encode (a lone surrogate) as INVALID_{WHAT}."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgument(
            f"{subject} is not UTF-8 text: {exc.reason} at position {exc.start}",
            reason=f"INVALID_{what.upper()}",
            metadata={"field": f"{what}s"},
        ) from None


def _cut(value: str) -> str:
    """``value`` quoted for a message, cut to 80 characters as the server shows it."""
    return repr(value if len(value) <= 80 else value[:77] + "...")


def _parameters(params: Mapping[str, object]) -> dict[str, str]:
    """``params`` as the request's map of texts: each value as ``str()`` gives it. A value
    ``str()`` cannot give (an int of more than 4,300 digits) or that is no UTF-8 text is
    :class:`InvalidArgument` (INVALID_PARAMETER, field ``parameters``) naming the
    parameter; a name that is no ``str`` is TypeError."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = _lineage_key(key, "parameter")
        try:
            text = str(value)
        except ValueError as exc:
            raise InvalidArgument(
                f"the value of parameter {_cut(name)} cannot be sent as text: {exc}",
                reason="INVALID_PARAMETER",
                metadata={"field": "parameters"},
            ) from None
        _utf8(text, f"the value of parameter {_cut(name)}", "parameter")
        out[name] = text
    return out


def _metrics(metrics: Mapping[str, object]) -> dict[str, float]:
    """``metrics`` as the request's map of doubles, refused as the server refuses a metric
    that is not a finite number (INVALID_METRIC, field ``metrics``, naming it): one ``float()``
    cannot convert (a text that is no number, an int too large for a double) or that is
    infinite or NaN. A value of a type ``float()`` does not take (None, a list) is TypeError."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = _lineage_key(key, "metric")
        try:
            number = float(value)  # type: ignore[arg-type]
        except (ValueError, OverflowError) as exc:
            raise InvalidArgument(
                f"metric {_cut(name)} is not a finite number: {exc}",
                reason="INVALID_METRIC",
                metadata={"field": "metrics"},
            ) from None
        except TypeError:
            raise TypeError(
                f"register_version() metric {_cut(name)} must be a number, "
                f"not {type(value).__name__}"
            ) from None
        if not math.isfinite(number):
            raise InvalidArgument(
                f"metric {_cut(name)} is not a finite number",
                reason="INVALID_METRIC",
                metadata={"field": "metrics"},
            )
        out[name] = number
    return out


def _timestamp(value: datetime, field: str) -> timestamp_pb2.Timestamp:
    """``value`` (a naive time taken as UTC) as a Timestamp; a time outside the years 1 to
    9999 in UTC is :class:`InvalidArgument` (INVALID_TIMESTAMP) naming ``field``, and
    anything but a ``datetime`` (a string, a number) is ``TypeError``."""
    if not isinstance(value, datetime):
        raise TypeError(f"{field} must be a datetime, not {type(value).__name__}")
    stamp = timestamp_pb2.Timestamp()
    try:
        stamp.FromDatetime(value)
    except (OverflowError, ValueError):
        raise InvalidArgument(
            f"{field} {value.isoformat()} is outside the years 1 to 9999 in UTC",
            reason="INVALID_TIMESTAMP",
            metadata={"field": field},
        ) from None
    return stamp


_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)


def pem_problem(data: bytes) -> str | None:
    """What is wrong with ``data`` as a PEM file (None when nothing is): gRPC takes an empty
    CA bundle as none given, trusting the system's CAs instead, and reports other bad files
    only once it connects, as a server it cannot reach."""
    if not data.strip():
        return "is empty"
    blocks = _PEM_BLOCK.findall(data)
    if not blocks:
        return "holds no PEM block (-----BEGIN ...----- to -----END ...-----)"
    for label, body in blocks:
        if label == b"ENCRYPTED PRIVATE KEY" or b"Proc-Type: 4,ENCRYPTED" in body:
            return (
                "holds an encrypted private key, which gRPC cannot use (it takes no "
                "passphrase): decrypt it, e.g. with openssl pkey -in KEY -out PLAIN"
            )
        try:
            decoded = base64.b64decode(b"".join(body.split()), validate=True)
        except ValueError:
            decoded = b""
        if not decoded:
            return f"holds a PEM block ({label.decode()}) that is not base64 data"
    return None


#: PEM labels of an X.509 certificate that OpenSSL and BoringSSL read as one.
_CERTIFICATE_LABELS = (b"CERTIFICATE", b"X509 CERTIFICATE", b"TRUSTED CERTIFICATE")
#: What each kind of TLS file must hold, and what its PEM block begins with.
_HOLDS = {
    "certificate": ("a certificate", "-----BEGIN CERTIFICATE-----"),
    "private key": ("a private key", "-----BEGIN PRIVATE KEY-----"),
}


def pem_kind_problem(data: bytes, holds: str) -> str | None:
    """What is wrong with the PEM file ``data`` as one holding ``holds`` ("certificate",
    "private key"; "" for anything): gRPC reports a CA bundle of public keys only, say, once
    it connects, as a server it cannot reach (after its SSL library's log lines)."""
    if holds not in _HOLDS:
        return None
    labels = [label for label, _ in _PEM_BLOCK.findall(data)]
    if holds == "certificate":
        found = any(label in _CERTIFICATE_LABELS for label in labels)
    else:
        found = any(label.endswith(b"PRIVATE KEY") for label in labels)
    if found:
        return None
    kind, begin = _HOLDS[holds]
    held = ", ".join(sorted({label.decode() for label in labels}))
    return f"holds no {holds}, only {held}: give a PEM file holding {kind} ({begin})"


def read_pem(path: str | os.PathLike[str] | None, what: str, *, holds: str = "") -> bytes | None:
    """The PEM file ``path`` (None when none is given); InvalidArgument naming ``what`` and
    the file when it cannot be read (UNREADABLE_TLS_FILE), is empty or not PEM, or holds no
    block of the kind ``holds`` says (``certificate``, ``private key``; INVALID_TLS_FILE)."""
    if path is None or str(path) == "":
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidArgument(
            f"cannot read the {what} {path}: {exc.strerror}", reason="UNREADABLE_TLS_FILE"
        ) from None
    problem = pem_problem(data)
    if problem is not None:
        raise InvalidArgument(
            f"the {what} {path} {problem}: give a PEM file", reason="INVALID_TLS_FILE"
        )
    problem = pem_kind_problem(data, holds)
    if problem is not None:
        raise InvalidArgument(f"the {what} {path} {problem}", reason="INVALID_TLS_FILE")
    return data


def _open_channel(
    address: str,
    tls: bool,
    ca: str | os.PathLike[str] | None,
    cert: str | os.PathLike[str] | None,
    key: str | os.PathLike[str] | None,
) -> grpc.Channel:
    """A plaintext or TLS channel with the message limits the servers use, which tries to
    reconnect to a server it lost within about ``RECONNECT_BACKOFF_MS`` (then at most every
    ``MAX_RECONNECT_BACKOFF_MS``): gRPC's defaults (1 s, growing to 2 min) would leave the
    retries of a call (``RETRY_BACKOFF_S``) all failing while the server is up again."""
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
    ]
    if not tls:
        return grpc.insecure_channel(address, options=options)
    if bool(cert) != bool(key):
        raise InvalidArgument(
            "a client certificate needs both tls_cert and tls_key", reason="INCOMPLETE_TLS_CLIENT"
        )
    # Each checked before connecting: gRPC would report a bad one as a server it cannot reach.
    roots = read_pem(ca, "CA bundle", holds="certificate")
    chain = read_pem(cert, "TLS certificate", holds="certificate")
    private_key = read_pem(key, "TLS key", holds="private key")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=roots, private_key=private_key, certificate_chain=chain
    )
    return grpc.secure_channel(address, credentials, options=options)


#: How much longer than the wait it asks for a WaitOperation call may take: the server ends
#: the wait, reads the operation once more and answers within it.
WAIT_CALL_MARGIN_S = 5.0
#: The longest one WaitOperation call waits on the server; a longer wait is asked for as this.
MAX_WAIT_S = 60.0
#: How long :meth:`Client.verify_audit` waits unless told otherwise, whatever the client's
#: timeout: the server walks the whole trail in the one call (some 300,000 events a minute on
#: a loaded machine), and stops walking when the call ends.
VERIFY_AUDIT_TIMEOUT_S = 3600.0
#: A wait answered not done with more than this left of it was answered early (the server
#: holds only so many waits at once); it is asked again after a pause of
#: ``EARLY_WAIT_PAUSE_S``.
EARLY_WAIT_ANSWER_S = 0.5
EARLY_WAIT_PAUSE_S = 1.0

#: The first pause before a call is tried again (doubled for each further try, with jitter).
#: After a failure to connect, the pause ends as soon as the channel is connected again.
RETRY_BACKOFF_S = 0.2
#: The longest pause between two tries, however many came before.
MAX_RETRY_PAUSE_S = 10.0
#: The first pause before the channel tries to reconnect to a server it could not reach, and
#: the longest one (gRPC grows it by 1.6 times per failed attempt, with jitter).
RECONNECT_BACKOFF_MS = 100
MAX_RECONNECT_BACKOFF_MS = 1000


def _pause(channel: grpc.Channel, seconds: float) -> None:
    """Wait ``seconds`` before a call is tried again, or less: until a channel that was not
    connected when the pause began is connected (so a server that is back is tried at once;
    one that answered keeps its backoff)."""
    reconnected = threading.Event()
    states: list[grpc.ChannelConnectivity] = []

    def on_change(state: grpc.ChannelConnectivity) -> None:
        states.append(state)
        if state is grpc.ChannelConnectivity.READY and len(states) > 1:
            reconnected.set()

    channel.subscribe(on_change, try_to_connect=True)
    try:
        reconnected.wait(seconds)
    finally:
        channel.unsubscribe(on_change)


def _retryable(exc: grpc.RpcError, request: Any) -> bool:
    """UNAVAILABLE, for a read or a mutation that carries a request id (nothing else is
    safe to send twice)."""
    if exc.code() != grpc.StatusCode.UNAVAILABLE:  # type: ignore[attr-defined]
        return False
    descriptor = getattr(request, "DESCRIPTOR", None)
    if descriptor is None or "request_id" not in descriptor.fields_by_name:
        return True
    return bool(request.request_id)


def metadata_value(value: str, what: str, *, secret: bool = False) -> str:
    """``value``, checked for sending as gRPC metadata, which carries printable ASCII only
    (no accents, no CR or LF): anything else is InvalidArgument naming ``what`` (reason
    INVALID_METADATA, ``metadata["field"]`` = ``what``) instead of gRPC's INTERNAL "Invalid
    metadata" once a call is made. A ``secret`` value is not shown."""
    bad = next((ch for ch in value if not " " <= ch <= "~"), None)
    if bad is None:
        return value
    held = f"{what} holds a character" if secret else f"{what} {value!r} holds {bad!r}"
    raise InvalidArgument(
        f"{held} that gRPC metadata cannot carry: printable ASCII only "
        "(no accents, no control characters or line breaks)",
        reason="INVALID_METADATA",
        metadata={"field": what},
    )


def check_roles(roles: Sequence[str]) -> tuple[str, ...]:
    """Claimed roles as a server without access control takes them: stripped, lower-cased,
    distinct and sorted, empty entries left out.

    A name gRPC metadata cannot carry is InvalidArgument (INVALID_METADATA, see
    :func:`metadata_value`); one that is not a role name, or more than
    :data:`~modelplane.ids.MAX_ROLES` distinct names, InvalidArgument with reason INVALID_ROLES
    as the server answers it (:func:`modelplane.ids.claimed_role_names`). A single string
    (not a list of names) or a name that is not a string is TypeError."""
    if isinstance(roles, str) or not all(isinstance(r, str) for r in roles):
        raise TypeError("roles must be a list of role names, such as ['risk', 'ml-lead']")
    names = [r.strip() for r in roles if r.strip()]
    metadata_value(",".join(names), "roles")
    return claimed_role_names(names)


class Client(DeploymentsMixin):
    """A connection to a Modelplane control plane.

    Every method raises a :class:`modelplane.ModelplaneError` subclass when the server refuses
    the call (with its code and reason), :class:`ServerUnreachable` when no server answered,
    :class:`CallDeadlineExceeded` when none answered in time, and :class:`InvalidArgument` for
    an argument the SDK refuses before sending it, as the server would (a field an update does
    not have, a time outside the years 1 to 9999, text gRPC metadata cannot carry, a TLS file
    that is not PEM). As with any Python library, a local file that cannot be read or written
    raises :class:`OSError` (``FileNotFoundError``, ``IsADirectoryError``, ...) before
    anything is uploaded or downloaded, and an argument of the wrong type :class:`TypeError`.

    A call the server could not take (UNAVAILABLE: unreachable, or its database busy) is tried
    ``retries`` times in all, with backoff, all within the call's ``timeout`` (a download or
    audit export until its first bytes arrive). Mutations carry a request id, the same on
    every try, so a retry never applies one twice; when a mutation fails anyway (a deadline
    that passed while the server worked, say), its error holds that id in
    ``metadata["request_id"]``: passing it back as ``request_id=`` with the same arguments
    answers what the first call did, if it landed.
    """

    def __init__(
        self,
        address: str = "127.0.0.1:50051",
        *,
        principal: str | None = None,
        timeout: float = 60.0,
        channel: grpc.Channel | None = None,
        token: str | None = None,
        tls_ca: str | os.PathLike[str] | None = None,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        tls: bool = False,
        retries: int = 3,
    ) -> None:
        """Connect to ``address``.

        ``token`` (default: ``MODELPLANE_TOKEN``) is sent as ``authorization: Bearer`` to a
        server with access control; ``principal`` names the caller to one without it. TLS is
        used when ``tls`` is true or any of ``tls_ca`` (CA bundle to trust instead of the
        system's), ``tls_cert`` and ``tls_key`` (client certificate for mutual TLS) is given.
        """
        self.address = address
        self.timeout = timeout
        self.retries = max(1, retries)
        token = token if token is not None else os.environ.get("MODELPLANE_TOKEN", "")
        metadata: list[tuple[str, str]] = []
        if principal:
            metadata.append((PRINCIPAL_METADATA_KEY, metadata_value(principal, "principal")))
        if token:
            token = metadata_value(token.strip(), "token", secret=True)
            metadata.append((AUTHORIZATION_METADATA_KEY, f"Bearer {token}"))
        self._metadata: tuple[tuple[str, str], ...] = tuple(metadata)
        self._channel = channel or _open_channel(
            address, tls or bool(tls_ca or tls_cert or tls_key), tls_ca, tls_cert, tls_key
        )
        self.registry = registry_pb2_grpc.RegistryServiceStub(self._channel)
        self.blobs = blobs_pb2_grpc.BlobServiceStub(self._channel)
        # UploadBlob with requests serialized here (``encode_chunk``); the stub's method
        # serializes each message with protobuf.
        self._upload = self._channel.stream_unary(
            _UPLOAD_PATH, response_deserializer=blobs_pb2.Blob.FromString
        )
        self.operations = operations_pb2_grpc.OperationsServiceStub(self._channel)
        self.evaluation = evaluation_pb2_grpc.EvaluationServiceStub(self._channel)
        self.governance = governance_pb2_grpc.GovernanceServiceStub(self._channel)
        self.audit = audit_pb2_grpc.AuditServiceStub(self._channel)
        self.deployments = deployments_pb2_grpc.DeploymentServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(
        self, method: Callable[..., T], request: Any, *, timeout: float | None = None, **kw: Any
    ) -> T:
        """Call ``method``, retrying as the class says, within ``timeout`` seconds in all
        (default: the client's): each try gets what is left of it, and no try starts that the
        backoff would leave no time for. For a client-streaming method, ``request`` is a
        function returning a fresh request iterator: each try sends the whole stream again (an
        iterator is spent by the first)."""

        def attempt(left: float | None) -> T:
            payload = request() if callable(request) else request
            return method(payload, timeout=left, metadata=self._metadata, **kw)

        return self._retrying(attempt, request, timeout)

    def _stream(
        self, method: Callable[..., Iterator[T]], request: Any, *, timeout: float | None = None
    ) -> Iterator[T]:
        """The messages of a server-streaming call, the whole stream within ``timeout``
        (default: the client's). Opening it is retried as :meth:`_call` retries a call, until
        the first message arrives; a failure after that is raised (its messages may have been
        used already)."""

        def attempt(left: float | None) -> tuple[T | None, Iterator[T]]:
            stream = method(request, timeout=left, metadata=self._metadata)
            return next(stream, None), stream

        first, stream = self._retrying(attempt, request, timeout)
        if first is None:
            return
        yield first
        try:
            yield from stream
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def _retrying(
        self, attempt: Callable[[float | None], T], request: Any, timeout: float | None
    ) -> T:
        """``attempt(seconds_left)`` until it returns, retried as the class says."""
        budget = self.timeout if timeout is None else timeout
        end = None if budget is None else time.monotonic() + budget
        left = budget
        for tries in range(1, self.retries + 1):
            try:
                return attempt(left)
            except grpc.RpcError as exc:
                pause = min(
                    RETRY_BACKOFF_S * 2 ** (tries - 1) * random.uniform(0.5, 1.5),
                    MAX_RETRY_PAUSE_S,
                )
                if (
                    tries < self.retries
                    and _retryable(exc, request)
                    and (end is None or end - time.monotonic() - pause > 0)
                ):
                    _pause(self._channel, pause)
                    if end is not None:
                        left = end - time.monotonic()
                    continue
                err = self._error(exc)
                request_id = getattr(request, "request_id", "")
                if request_id:
                    err.metadata.setdefault("request_id", request_id)
                raise err from None
        raise AssertionError("unreachable")

    def _error(self, exc: grpc.RpcError) -> ModelplaneError:
        return rpc_error(
            exc,
            f"the control plane at {self.address}",
            not_served=not_the_control_plane(self.address),
        )

    @staticmethod
    def _rid() -> str:
        return str(uuid.uuid4())

    # Models ----------------------------------------------------------------------------------

    def create_model(
        self,
        model_id: str,
        *,
        description: str = "",
        labels: Mapping[str, str] | None = None,
        intended_use: str = "",
        limitations: str = "",
        request_id: str | None = None,
    ) -> registry_pb2.Model:
        """Create ``models/{model_id}``."""
        model = registry_pb2.Model(
            description=description,
            labels=dict(labels or {}),
            intended_use=intended_use,
            limitations=limitations,
        )
        return self._call(
            self.registry.CreateModel,
            registry_pb2.CreateModelRequest(
                model_id=model_id, model=model, request_id=request_id or self._rid()
            ),
        )

    def get_model(self, model: str) -> registry_pb2.Model:
        return self._call(
            self.registry.GetModel, registry_pb2.GetModelRequest(name=model_name(model))
        )

    def list_models_page(
        self, *, filter: str = "", order_by: str = "", page_size: int = 0, page_token: str = ""
    ) -> registry_pb2.ListModelsResponse:
        """One page of models."""
        return self._call(
            self.registry.ListModels,
            registry_pb2.ListModelsRequest(
                filter=filter, order_by=order_by, page_size=page_size, page_token=page_token
            ),
        )

    def list_models(
        self, *, filter: str = "", order_by: str = "", page_size: int = 0
    ) -> Iterator[registry_pb2.Model]:
        """Every model matching ``filter``, fetching pages as needed."""
        token = ""
        while True:
            page = self.list_models_page(
                filter=filter, order_by=order_by, page_size=page_size, page_token=token
            )
            yield from page.models
            token = page.next_page_token
            if not token:
                return

    def update_model(
        self, model: str, *, etag: str = "", request_id: str | None = None, **fields: Any
    ) -> registry_pb2.Model:
        """Change ``description``, ``labels``, ``intended_use`` or ``limitations`` (another
        field name is :class:`InvalidArgument`, INVALID_UPDATE_MASK, before anything is
        sent)."""
        message = _with_fields(
            registry_pb2.Model(name=model_name(model), etag=etag),
            fields,
            "update_model",
            ("description", "labels", "intended_use", "limitations"),
        )
        return self._call(
            self.registry.UpdateModel,
            registry_pb2.UpdateModelRequest(
                model=message,
                update_mask=field_mask_pb2.FieldMask(paths=list(fields)),
                request_id=request_id or self._rid(),
            ),
        )

    def delete_model(
        self, model: str, *, etag: str = "", force: bool = False, request_id: str | None = None
    ) -> None:
        self._call(
            self.registry.DeleteModel,
            registry_pb2.DeleteModelRequest(
                name=model_name(model), etag=etag, force=force, request_id=request_id or self._rid()
            ),
        )

    # Blobs -----------------------------------------------------------------------------------

    def upload_blob(
        self, source: str | os.PathLike[str] | bytes, media_type: str = ""
    ) -> blobs_pb2.Blob:
        """Upload a file or bytes; the server checks the digest computed here. A file that
        cannot be read raises :class:`OSError` (``FileNotFoundError``, ...)."""
        if not isinstance(source, bytes):
            path = Path(source)
            media_type = media_type or MEDIA_TYPES.get(
                path.suffix.lower(), "application/octet-stream"
            )
            if path.stat().st_size <= READ_WHOLE_BYTES:
                source = path.read_bytes()  # read once: hashed and sent from memory
        if isinstance(source, bytes):
            sha, size = hashlib.sha256(source).hexdigest(), len(source)
            whole = memoryview(source)

            def chunks() -> Iterator[bytes | memoryview]:
                for i in range(0, len(whole), CHUNK_BYTES):
                    yield whole[i : i + CHUNK_BYTES]
        else:
            sha, size = _sha256_file(path)

            def chunks() -> Iterator[bytes | memoryview]:
                with path.open("rb") as f:
                    while chunk := f.read(CHUNK_BYTES):
                        yield chunk

        def requests() -> Iterator[bytes]:
            # The header rides in the first message with the first chunk: one message less
            # per upload, and a blob up to CHUNK_BYTES travels as a single message.
            header = blobs_pb2.UploadBlobHeader(sha256=sha, size_bytes=size, media_type=media_type)
            prefix = blobs_pb2.UploadBlobRequest(header=header).SerializeToString()
            for chunk in chunks():
                yield encode_chunk(chunk, prefix)
                prefix = b""
            if prefix:  # an empty blob: the header alone
                yield prefix

        return self._call(self._upload, requests)  # uploads are keyed by digest: safe to resend

    def get_blob(self, sha256: str) -> blobs_pb2.Blob:
        """A blob's metadata, by its digest or its name ``blobs/{sha256}`` (as
        :meth:`upload_blob` returns it)."""
        return self._call(self.blobs.GetBlob, blobs_pb2.GetBlobRequest(name=blob_name(sha256)))

    def download_blob(self, sha256: str, out: str | os.PathLike[str]) -> Path:
        """Write a blob (by its digest or its name ``blobs/{sha256}``) to ``out`` after
        checking its digest: ``out`` appears only whole and checked (it is written under a
        temporary name of its own, then renamed)."""
        target = Path(out)
        digest = hashlib.sha256()
        request = blobs_pb2.DownloadBlobRequest(name=blob_name(sha256))
        sha256 = request.name.removeprefix("blobs/")
        with replaced_atomically(target) as f:
            for message in self._stream(self.blobs.DownloadBlob, request):
                digest.update(message.chunk)
                f.write(message.chunk)
            if digest.hexdigest() != sha256:
                raise ModelplaneError(
                    f"downloaded bytes do not hash to {sha256}", reason="DIGEST_MISMATCH"
                )
        return target

    # Versions --------------------------------------------------------------------------------

    def register_version(
        self,
        model: str,
        onnx: str | os.PathLike[str],
        *,
        datasets: Mapping[str, str | os.PathLike[str]] | None = None,
        label: str = "",
        feature_names: Sequence[str] = (),
        params: Mapping[str, str] | None = None,
        metrics: Mapping[str, float] | None = None,
        code_repo: str = "",
        code_commit: str = "",
        training_run_id: str = "",
        description: str = "",
        labels: Mapping[str, str] | None = None,
        capture_env: bool = True,
        request_id: str | None = None,
    ) -> registry_pb2.ModelVersion:
        """Upload the ONNX file and datasets, then register a version with full lineage.

        ``code_repo`` is recorded without the credentials a git remote may carry (see
        :func:`modelplane._code.without_credentials`). Nothing is uploaded until the arguments
        are checked: a file that cannot be read raises :class:`OSError`
        (``FileNotFoundError``, ...), an argument of the wrong type :class:`TypeError`, and a
        metric that is no finite number (``float()`` cannot convert it, or it is infinite or
        NaN) or a parameter that ``str()`` cannot give :class:`InvalidArgument`
        (INVALID_METRIC, INVALID_PARAMETER, naming it)."""
        for path in (onnx, *(datasets or {}).values()):
            os.stat(path)  # a missing dataset fails before the ONNX file is uploaded
        # Every field but what the uploads give, so that an argument the request cannot hold
        # is refused before anything is uploaded.
        request = registry_pb2.CreateModelVersionRequest(
            parent=model_name(model),
            description=description,
            labels=dict(labels or {}),
            datasets=[
                # A file name that is not UTF-8 is recorded with \xNN escapes (protobuf
                # strings are UTF-8), so it reads as the bytes it was.
                registry_pb2.DatasetInput(
                    role=role, source=os.fsencode(path).decode("utf-8", "backslashreplace")
                )
                for role, path in (datasets or {}).items()
            ],
            label_column=label,
            feature_names=list(feature_names),
            training_run_id=training_run_id,
            parameters=_parameters(params or {}),
            metrics=_metrics(metrics or {}),
            code=registry_pb2.CodeRef(
                repository=without_credentials(code_repo), commit=code_commit
            ),
            request_id=request_id or self._rid(),
        )
        # The environment first: a failure to read it must not come after the uploads.
        environment = capture_environment() if capture_env else None
        request.artifact_sha256 = self.upload_blob(onnx).sha256
        for dataset, path in zip(request.datasets, (datasets or {}).values(), strict=True):
            dataset.sha256 = self.upload_blob(path).sha256
        if environment is not None:
            request.environment.CopyFrom(environment)
        return self._call(self.registry.CreateModelVersion, request)

    def get_version(self, model: str, version: int | str) -> registry_pb2.ModelVersion:
        """A version by number, or by alias as ``"@champion"``."""
        return self._call(
            self.registry.GetModelVersion,
            registry_pb2.GetModelVersionRequest(name=version_name(model, version)),
        )

    def list_versions_page(
        self,
        model: str,
        *,
        filter: str = "",
        order_by: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> registry_pb2.ListModelVersionsResponse:
        return self._call(
            self.registry.ListModelVersions,
            registry_pb2.ListModelVersionsRequest(
                parent=model_name(model),
                filter=filter,
                order_by=order_by,
                page_size=page_size,
                page_token=page_token,
            ),
        )

    def list_versions(
        self, model: str, *, filter: str = "", order_by: str = "", page_size: int = 0
    ) -> Iterator[registry_pb2.ModelVersion]:
        token = ""
        while True:
            page = self.list_versions_page(
                model, filter=filter, order_by=order_by, page_size=page_size, page_token=token
            )
            yield from page.versions
            token = page.next_page_token
            if not token:
                return

    def update_version(
        self,
        model: str,
        version: int | str,
        *,
        etag: str = "",
        request_id: str | None = None,
        **fields: Any,
    ) -> registry_pb2.ModelVersion:
        """Change ``description`` or ``labels`` (another field name is
        :class:`InvalidArgument`, INVALID_UPDATE_MASK, before anything is sent)."""
        message = _with_fields(
            registry_pb2.ModelVersion(name=version_name(model, version), etag=etag),
            fields,
            "update_version",
            ("description", "labels"),
        )
        return self._call(
            self.registry.UpdateModelVersion,
            registry_pb2.UpdateModelVersionRequest(
                version=message,
                update_mask=field_mask_pb2.FieldMask(paths=list(fields)),
                request_id=request_id or self._rid(),
            ),
        )

    def archive_version(
        self, model: str, version: int | str, *, etag: str = "", request_id: str | None = None
    ) -> registry_pb2.ModelVersion:
        return self._call(
            self.registry.ArchiveModelVersion,
            registry_pb2.ArchiveModelVersionRequest(
                name=version_name(model, version), etag=etag, request_id=request_id or self._rid()
            ),
        )

    def download_version(self, model: str, version: int | str, out: str | os.PathLike[str]) -> Path:
        """Write the version's ONNX artifact to ``out``."""
        v = self.get_version(model, version)
        return self.download_blob(v.artifact.sha256, out)

    # Aliases ---------------------------------------------------------------------------------

    def set_alias(
        self,
        model: str,
        alias: str,
        version: int | str,
        *,
        reason: str = "",
        etag: str = "",
        request_id: str | None = None,
    ) -> registry_pb2.Alias:
        """Point ``alias`` at ``version``; with ``etag`` (an alias's ``etag`` as read), only
        while it has not moved since (else :class:`Aborted`, ETAG_MISMATCH)."""
        return self._call(
            self.registry.SetAlias,
            registry_pb2.SetAliasRequest(
                name=f"{model_name(model)}/aliases/{alias}",
                version=version_name(model, version),
                reason=reason,
                etag=etag,
                request_id=request_id or self._rid(),
            ),
        )

    def get_alias(
        self, model: str, alias: str, *, as_of: datetime | None = None
    ) -> registry_pb2.Alias:
        """Where ``alias`` points now, or at ``as_of`` (a naive time is taken as UTC); a time
        outside the years 1 to 9999 in UTC is :class:`InvalidArgument` (INVALID_TIMESTAMP)."""
        request = registry_pb2.GetAliasRequest(name=f"{model_name(model)}/aliases/{alias}")
        if as_of is not None:
            request.as_of.CopyFrom(_timestamp(as_of, "as_of"))
        return self._call(self.registry.GetAlias, request)

    def list_aliases(self, model: str) -> list[registry_pb2.Alias]:
        return list(
            self._call(
                self.registry.ListAliases, registry_pb2.ListAliasesRequest(parent=model_name(model))
            ).aliases
        )

    def delete_alias(
        self,
        model: str,
        alias: str,
        *,
        reason: str = "",
        etag: str = "",
        request_id: str | None = None,
    ) -> None:
        """Remove ``alias``; with ``etag``, only while it has not moved since it was read."""
        self._call(
            self.registry.DeleteAlias,
            registry_pb2.DeleteAliasRequest(
                name=f"{model_name(model)}/aliases/{alias}",
                reason=reason,
                etag=etag,
                request_id=request_id or self._rid(),
            ),
        )

    def alias_history(
        self, model: str, alias: str | None = None, *, page_size: int = 0
    ) -> Iterator[registry_pb2.AliasEvent]:
        """Moves of one alias (or every alias of the model), newest first."""
        name = f"{model_name(model)}/aliases/{alias}" if alias else model_name(model)
        token = ""
        while True:
            page = self._call(
                self.registry.ListAliasHistory,
                registry_pb2.ListAliasHistoryRequest(
                    name=name, page_size=page_size, page_token=token
                ),
            )
            yield from page.events
            token = page.next_page_token
            if not token:
                return

    # Operations ------------------------------------------------------------------------------

    def get_operation(self, name: str) -> operations_pb2.Operation:
        return self._call(
            self.operations.GetOperation, operations_pb2.GetOperationRequest(name=name)
        )

    def list_operations(
        self, *, target: str = "", page_size: int = 0, page_token: str = ""
    ) -> operations_pb2.ListOperationsResponse:
        return self._call(
            self.operations.ListOperations,
            operations_pb2.ListOperationsRequest(
                target=target, page_size=page_size, page_token=page_token
            ),
        )

    def cancel_operation(self, name: str) -> operations_pb2.Operation:
        """Cancel an operation (best effort); returns it, done with error CANCELLED, or as it
        was when it had already finished."""
        return self._call(
            self.operations.CancelOperation, operations_pb2.CancelOperationRequest(name=name)
        )

    # Evaluation, governance and audit -------------------------------------------------------

    def with_roles(self, roles: Sequence[str]) -> Client:
        """Send ``roles`` (in ``x-modelplane-roles``) on every call from now on.

        Only a server without access control reads them (and believes them); a server with
        access control ignores them and takes roles from the caller's token. Names are
        stripped and lower-cased (:func:`check_roles`); one that is not a role name, or more
        than :data:`~modelplane.ids.MAX_ROLES`, is InvalidArgument (INVALID_ROLES) here, as
        such a server would refuse it. An empty list sends none.
        """
        names = ",".join(check_roles(roles))
        kept = tuple(kv for kv in self._metadata if kv[0] != ROLES_METADATA_KEY)
        self._metadata = (*kept, (ROLES_METADATA_KEY, names)) if names else kept
        return self

    def wait_operation(self, name: str, timeout: float = 10.0) -> operations_pb2.Operation:
        """Wait on the server until the operation is done or ``timeout`` (at most
        :data:`MAX_WAIT_S`) passes.

        The call's deadline is the client's timeout or, when that is shorter, the wait and
        :data:`WAIT_CALL_MARGIN_S`, so that a wait longer than the client's timeout is
        answered by the server rather than cut off here (a client without a timeout waits
        without a deadline)."""
        end = time.monotonic() + min(max(timeout, 0.0), MAX_WAIT_S)
        while True:
            wait = max(end - time.monotonic(), 0.0)
            request = operations_pb2.WaitOperationRequest(name=name)
            request.timeout.FromTimedelta(timedelta(seconds=wait))
            deadline = (
                None if self.timeout is None else max(self.timeout, wait + WAIT_CALL_MARGIN_S)
            )
            op = self._call(self.operations.WaitOperation, request, timeout=deadline)
            left = end - time.monotonic()
            if op.done or left <= EARLY_WAIT_ANSWER_S:
                return op
            # Answered well before the wait's end: the server holds only so many waits at
            # once, and answered this one as the operation stands. Ask again shortly.
            time.sleep(min(EARLY_WAIT_PAUSE_S, left))

    def evaluate(
        self,
        model: str,
        version: int | str,
        data: str | os.PathLike[str] | bytes,
        *,
        label: str,
        features: Sequence[str] = (),
        slices: Sequence[str] = (),
        protected: Sequence[str] = (),
        compare_to: str = "champion",
        role: str = "holdout",
        task: str = "",
        positive_class: str | int = "",
        request_id: str | None = None,
    ) -> operations_pb2.Operation:
        """Upload ``data`` and start a server-side evaluation; returns its operation.

        ``task`` (``classification`` or ``regression``; empty: detected from the model's
        outputs) overrides the detection, e.g. for a one-column classifier whose score is no
        Sigmoid or Softmax output and whose outputs name no label; ``positive_class`` names
        the class binary metrics and fairness call positive (empty: the model's second class).
        """
        blob = self.upload_blob(data)
        return self._call(
            self.evaluation.Evaluate,
            evaluation_pb2.EvaluateRequest(
                name=version_name(model, version),
                dataset_sha256=blob.sha256,
                dataset_role=role,
                label=label,
                features=list(features),
                slice_columns=list(slices),
                protected_columns=list(protected),
                compare_to=compare_to,
                task=task,
                positive_class=str(positive_class),
                request_id=request_id or self._rid(),
            ),
        )

    def operation_result(
        self, operation: operations_pb2.Operation, *, timeout: float = 600.0
    ) -> evaluation_pb2.Evaluation:
        """Wait for an evaluation operation and return its Evaluation (or raise its error)."""
        deadline = time.monotonic() + timeout
        op = operation
        while not op.done:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded(
                    f"{op.name} is still running after {timeout:g}s", reason="OPERATION_TIMEOUT"
                )
            op = self.wait_operation(op.name, min(left, 30.0))
        if op.HasField("error"):
            raise operation_error(op.error)
        result = evaluation_pb2.Evaluation()
        op.result.Unpack(result)
        return result

    def get_evaluation(self, name: str) -> evaluation_pb2.Evaluation:
        return self._call(
            self.evaluation.GetEvaluation, evaluation_pb2.GetEvaluationRequest(name=name)
        )

    def list_evaluations_page(
        self, model: str, version: int | str, *, page_size: int = 0, page_token: str = ""
    ) -> evaluation_pb2.ListEvaluationsResponse:
        """One page of a version's evaluations, newest first, with its next_page_token."""
        return self._call(
            self.evaluation.ListEvaluations,
            evaluation_pb2.ListEvaluationsRequest(
                parent=version_name(model, version), page_size=page_size, page_token=page_token
            ),
        )

    def list_evaluations(
        self, model: str, version: int | str, *, page_size: int = 0
    ) -> Iterator[evaluation_pb2.Evaluation]:
        """A version's evaluations, newest first."""
        token = ""
        while True:
            page = self.list_evaluations_page(model, version, page_size=page_size, page_token=token)
            yield from page.evaluations
            token = page.next_page_token
            if not token:
                return

    def create_policy(
        self,
        policy_id: str,
        *,
        target: str,
        rules: Sequence[str],
        description: str = "",
        request_id: str | None = None,
    ) -> governance_pb2.Policy:
        """Create ``policies/{policy_id}`` bound to ``target``."""
        return self._call(
            self.governance.CreatePolicy,
            governance_pb2.CreatePolicyRequest(
                policy_id=policy_id,
                policy=governance_pb2.Policy(
                    target=target, rules=list(rules), description=description
                ),
                request_id=request_id or self._rid(),
            ),
        )

    def get_policy(self, policy: str, *, revision: int = 0) -> governance_pb2.Policy:
        return self._call(
            self.governance.GetPolicy,
            governance_pb2.GetPolicyRequest(name=policy_name(policy), revision=revision),
        )

    def list_policies(self, *, page_size: int = 0) -> Iterator[governance_pb2.Policy]:
        token = ""
        while True:
            page = self._call(
                self.governance.ListPolicies,
                governance_pb2.ListPoliciesRequest(page_size=page_size, page_token=token),
            )
            yield from page.policies
            token = page.next_page_token
            if not token:
                return

    def update_policy(
        self,
        policy: str,
        *,
        etag: str = "",
        rules: Sequence[str] | None = None,
        description: str | None = None,
        target: str | None = None,
        request_id: str | None = None,
    ) -> governance_pb2.Policy:
        """Change rules, description or target; a change of rules or target makes a new
        revision, a description-only change keeps it."""
        message = governance_pb2.Policy(name=policy_name(policy), etag=etag)
        paths = []
        if rules is not None:
            message.rules.extend(rules)
            paths.append("rules")
        if description is not None:
            message.description = description
            paths.append("description")
        if target is not None:
            message.target = target
            paths.append("target")
        return self._call(
            self.governance.UpdatePolicy,
            governance_pb2.UpdatePolicyRequest(
                policy=message,
                update_mask=field_mask_pb2.FieldMask(paths=paths),
                request_id=request_id or self._rid(),
            ),
        )

    def delete_policy(self, policy: str, *, etag: str = "", request_id: str | None = None) -> None:
        self._call(
            self.governance.DeletePolicy,
            governance_pb2.DeletePolicyRequest(
                name=policy_name(policy), etag=etag, request_id=request_id or self._rid()
            ),
        )

    def evaluate_gate(
        self, model: str, version: int | str, target: str, *, request_id: str | None = None
    ) -> governance_pb2.GateDecision:
        """Evaluate the policy bound to ``target`` for a version; the decision is recorded."""
        return self._call(
            self.governance.EvaluateGate,
            governance_pb2.EvaluateGateRequest(
                name=version_name(model, version),
                target=target,
                request_id=request_id or self._rid(),
            ),
        )

    def list_gate_decisions(
        self, model: str, version: int | str, *, target: str = ""
    ) -> list[governance_pb2.GateDecision]:
        out: list[governance_pb2.GateDecision] = []
        token = ""
        while True:
            page = self._call(
                self.governance.ListGateDecisions,
                governance_pb2.ListGateDecisionsRequest(
                    parent=version_name(model, version), target=target, page_token=token
                ),
            )
            out.extend(page.decisions)
            token = page.next_page_token
            if not token:
                return out

    def approve(
        self,
        model: str,
        version: int | str,
        target: str,
        *,
        decision: str = "approve",
        comment: str = "",
        request_id: str | None = None,
    ) -> governance_pb2.Approval:
        """Record a signed approval (or ``decision="reject"``) of a version for a target."""
        return self._call(
            self.governance.Approve,
            governance_pb2.ApproveRequest(
                name=version_name(model, version),
                target=target,
                decision=decision,
                comment=comment,
                request_id=request_id or self._rid(),
            ),
        )

    def list_approvals(self, model: str, version: int | str) -> list[governance_pb2.Approval]:
        out: list[governance_pb2.Approval] = []
        token = ""
        while True:
            page = self._call(
                self.governance.ListApprovals,
                governance_pb2.ListApprovalsRequest(
                    parent=version_name(model, version), page_token=token
                ),
            )
            out.extend(page.approvals)
            token = page.next_page_token
            if not token:
                return out

    def verify_version(
        self, model: str, version: int | str
    ) -> governance_pb2.VerifyVersionResponse:
        """Check every approval signature and evaluation digest of a version."""
        return self._call(
            self.governance.VerifyVersion,
            governance_pb2.VerifyVersionRequest(name=version_name(model, version)),
        )

    def public_key(self) -> governance_pb2.PublicKey:
        """The server's Ed25519 public key."""
        return self._call(self.governance.GetPublicKey, governance_pb2.GetPublicKeyRequest())

    def model_card(
        self, model: str, version: int | str, *, format: str = "md"
    ) -> governance_pb2.ModelCard:
        """The version's model card, rendered by the server as ``md``, ``html`` or ``json``."""
        return self._call(
            self.governance.GetModelCard,
            governance_pb2.GetModelCardRequest(name=version_name(model, version), format=format),
        )

    def audit_events(
        self,
        *,
        resource: str = "",
        actor: str = "",
        since: datetime | None = None,
        page_size: int = 0,
    ) -> Iterator[audit_pb2.AuditEvent]:
        """Audit events in sequence order, filtered (``since``: as ``get_alias`` takes
        ``as_of``)."""
        stamp = None if since is None else _timestamp(since, "since")
        token = ""
        while True:
            request = audit_pb2.ListAuditEventsRequest(
                resource=resource, actor=actor, page_size=page_size, page_token=token
            )
            if stamp is not None:
                request.since.CopyFrom(stamp)
            page = self._call(self.audit.ListAuditEvents, request)
            yield from page.events
            token = page.next_page_token
            if not token:
                return

    def export_audit(self, out: BinaryIO, *, format: str = "jsonl") -> int:
        """Write the whole audit trail to ``out`` as JSON Lines; returns the bytes written."""
        written = 0
        request = audit_pb2.ExportAuditEventsRequest(format=format)
        for message in self._stream(self.audit.ExportAuditEvents, request):
            out.write(message.chunk)
            written += len(message.chunk)
        return written

    def create_checkpoint(self) -> audit_pb2.Checkpoint:
        """A checkpoint of the audit chain head, signed by the server key."""
        return self._call(self.audit.CreateCheckpoint, audit_pb2.CreateCheckpointRequest())

    def verify_audit(
        self, checkpoint: audit_pb2.Checkpoint | None = None, *, timeout: float | None = None
    ) -> audit_pb2.VerifyAuditResponse:
        """Recompute the audit chain on the server (checking ``checkpoint`` when given).

        The server walks the whole trail in this one call, so it gets ``timeout`` seconds
        (default :data:`VERIFY_AUDIT_TIMEOUT_S`, 1 h, not the client's timeout). When they
        pass the server stops walking and this raises ``DeadlineExceeded``: give it longer, or
        export the trail (:meth:`export_audit`) and check the file with
        :func:`modelplane.audit_chain.verify_export`.
        """
        request = audit_pb2.VerifyAuditRequest()
        if checkpoint is not None:
            request.checkpoint.CopyFrom(checkpoint)
        budget = VERIFY_AUDIT_TIMEOUT_S if timeout is None else timeout
        return self._call(self.audit.VerifyAudit, request, timeout=budget)


def policy_name(policy: str) -> str:
    """``gate`` → ``policies/gate`` (full names pass through)."""
    return policy if policy.startswith("policies/") else f"policies/{policy}"


def operation_error(error: operations_pb2.OperationError) -> ModelplaneError:
    """The SDK error of a failed operation, chosen by its code."""
    cls = next(
        (c for c in ModelplaneError.__subclasses__() if c.code.value == error.code),
        ModelplaneError,
    )
    return cls(error.message, reason=error.reason)
