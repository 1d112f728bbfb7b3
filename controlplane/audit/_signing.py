"""The server's Ed25519 signing key and signed checkpoints of the chain head.

A checkpoint states "the chain had ``seq`` events and its head hash was ``head_hash`` at
``time``", signed by the server's key. Kept outside the database (a file, a ticket, an external
log), it lets :func:`controlplane.audit.verify` detect a chain cut back behind it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shlex
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from controlplane.audit._canonical import checkpoint_payload, utc_text
from controlplane.audit._chain import head
from controlplane.store import Store
from modelplane.errors import FailedPrecondition, InvalidArgument
from modelplane.files import replaced_atomically

PublicKeyLike = Ed25519PublicKey | Ed25519PrivateKey | str | bytes


#: How to make a key where the server is told to find one.
_CREATE_HINT = (
    "create one there with `openssl genpkey -algorithm ed25519 -out {path}` (then chmod 600), "
    "put there the key the other replicas use, or leave --signing-key unset to have one "
    "created at ARTIFACT_ROOT/keys/signing-key.pem"
)


def load_signing_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """The Ed25519 key stored at ``path`` (unencrypted PKCS#8 PEM); never created here.

    ``FailedPrecondition`` with reason ``SIGNING_KEY_MISSING`` when there is no file at
    ``path`` (a key named explicitly that is absent is a mistake to report, not a reason to sign
    with a new key that voids every earlier approval), ``SIGNING_KEY_INVALID`` when the file
    is no such key.
    """
    target = Path(path)
    try:
        data = target.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        raise FailedPrecondition(
            f"the audit signing key {target} does not exist; "
            + _CREATE_HINT.format(path=shlex.quote(str(target))),
            reason="SIGNING_KEY_MISSING",
        ) from None
    except OSError as exc:
        raise _invalid_key(target, exc) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise _invalid_key(target, exc) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise FailedPrecondition(
            f"the audit signing key {target} is not an Ed25519 key", reason="SIGNING_KEY_INVALID"
        )
    return key


def _invalid_key(target: Path, exc: Exception) -> FailedPrecondition:
    return FailedPrecondition(
        f"the audit signing key {target} cannot be read as an unencrypted PEM private key "
        f"({exc}); restore it (a new key voids the approvals and checkpoints signed with this "
        "one unless its public key is kept in --verification-keys)",
        reason="SIGNING_KEY_INVALID",
    )


def load_or_create_signing_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """The key stored at ``path`` (PKCS#8 PEM), created with mode 0600 when absent: for the
    server's default place only (an explicitly named key is read with
    :func:`load_signing_key`).

    Creation is atomic (written beside, then linked into place), so replicas starting together
    end up with the one key that won.
    """
    return _load_or_create(Path(path))[0]


def _load_or_create(target: Path) -> tuple[Ed25519PrivateKey, bool]:
    """:func:`load_or_create_signing_key`, and whether this call made the key."""
    created = False
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, pem)
            os.fsync(fd)
            os.close(fd)
            with contextlib.suppress(FileExistsError):
                os.link(tmp, target)
                created = True
        finally:
            os.unlink(tmp)
    return load_signing_key(target), created


def load_verification_keys(folder: str | os.PathLike[str]) -> dict[str, Ed25519PublicKey]:
    """The Ed25519 public keys in the files of ``folder``, by key id: the keys the server signed
    with before, whose signatures stay valid.

    Each file holds a PEM public key (as ``modelplane keys show`` prints it, its comment line
    included) or a PEM private key, of which only the public half is kept. Names starting with
    a dot and folders are passed over (a Kubernetes Secret mounted as a folder keeps its
    bookkeeping there). ``FailedPrecondition`` (``VERIFICATION_KEY_INVALID``) naming the folder
    or file when the folder cannot be read or a file holds no Ed25519 key.
    """
    root = Path(folder)
    try:
        entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    except OSError as exc:
        raise FailedPrecondition(
            f"the verification-key folder {root} cannot be read ({exc.strerror or exc}); "
            "name a folder holding the public keys (PEM) of keys the server signed with before",
            reason="VERIFICATION_KEY_INVALID",
        ) from None
    keys: dict[str, Ed25519PublicKey] = {}
    for entry in entries:
        if entry.is_dir():
            continue
        public = _verification_key(entry)
        keys[key_id(public)] = public
    return keys


def _verification_key(path: Path) -> Ed25519PublicKey:
    """The public key in one file of the verification-key folder."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        problem = f"cannot be read ({exc.strerror or exc})"
    else:
        loaded: object = None
        with contextlib.suppress(ValueError, TypeError):
            loaded = serialization.load_pem_public_key(data)
        if loaded is None:
            with contextlib.suppress(ValueError, TypeError):
                loaded = serialization.load_pem_private_key(data, password=None)
        if isinstance(loaded, Ed25519PrivateKey):
            return loaded.public_key()
        if isinstance(loaded, Ed25519PublicKey):
            return loaded
        problem = "holds no Ed25519 key" if loaded is not None else "is not a PEM key"
    raise FailedPrecondition(
        f"the verification key {path} {problem}; each file of the folder must be an Ed25519 "
        "public key in PEM, as `modelplane keys show` prints it (move other files elsewhere)",
        reason="VERIFICATION_KEY_INVALID",
    )


class SigningKeys(Ed25519PrivateKey):
    """The server's active signing key, with the public keys of its retired keys.

    It is an :class:`Ed25519PrivateKey` that signs with the active key (and whose
    :meth:`public_key` is the active key's), so every service that takes the server's key takes
    it; only the checks of a signature look past the active key, with :func:`public_key_for`,
    so approvals and checkpoints signed by a retired key stay valid while only the active key
    signs.
    """

    def __init__(
        self,
        active: Ed25519PrivateKey,
        retired: Mapping[str, Ed25519PublicKey] | None = None,
        *,
        created: Path | None = None,
    ) -> None:
        self.active = active
        self.key_id = key_id(active)
        #: The retired keys' public keys by key id (the active key is never among them).
        self.retired = {k: v for k, v in (retired or {}).items() if k != self.key_id}
        #: The file the active key was generated in as these keys were loaded (the default
        #: place held none); None when it was there already or named explicitly.
        self.created = created

    def discard_created(self) -> None:
        """Remove the key file generated as these keys were loaded (see :attr:`created`), and
        its folder when that is left empty, so that the next start finds no key there again;
        a file that holds another key by now (another replica's) is left alone."""
        path = self.created
        if path is None:
            return
        with contextlib.suppress(FailedPrecondition, OSError):
            if key_id(load_signing_key(path)) == self.key_id:
                path.unlink()
        with contextlib.suppress(OSError):
            path.parent.rmdir()
        self.created = None

    def public_key(self) -> Ed25519PublicKey:
        return self.active.public_key()

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        return self.active.private_bytes(encoding, format, encryption_algorithm)

    def private_bytes_raw(self) -> bytes:
        return self.active.private_bytes_raw()

    def sign(self, data: bytes | bytearray | memoryview) -> bytes:
        return self.active.sign(data)

    def __copy__(self) -> SigningKeys:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> SigningKeys:
        return self


def load_signing_keys(
    path: str | os.PathLike[str], *, create: bool, verification_keys: str | os.PathLike[str] = ""
) -> SigningKeys:
    """The server's keys: the signing key at ``path`` (created when absent only with
    ``create``, for the default place; :attr:`SigningKeys.created` says whether it was) and
    the retired keys in the ``verification_keys`` folder (none when empty), read first, so that
    a folder that cannot be used leaves no new key behind."""
    retired = load_verification_keys(verification_keys) if verification_keys else {}
    if not create:
        return SigningKeys(load_signing_key(path), retired)
    active, created = _load_or_create(Path(path))
    return SigningKeys(active, retired, created=Path(path) if created else None)


def public_key_for(key: Ed25519PrivateKey, kid: str) -> tuple[Ed25519PublicKey | None, bool]:
    """The public key that checks a signature naming key ``kid``, given the server's ``key``:
    its own when ``kid`` is its id, a retired key's when ``key`` holds one of that id (then
    True, it is retired), else None."""
    if kid == key_id(key):
        return key.public_key(), False
    retired = key.retired.get(kid) if isinstance(key, SigningKeys) else None
    return retired, retired is not None


def shown_key_id(kid: str) -> str:
    """A key id as a message shows it: as is when it looks like one, else quoted and cut."""
    return kid if re.fullmatch(r"[0-9a-f]{16}", kid) else repr(kid[:40])


def _known_keys(key: Ed25519PrivateKey) -> str:
    """Which keys ``key`` verifies with, for a message."""
    retired = sorted(key.retired) if isinstance(key, SigningKeys) else []
    return f"this server's key is {key_id(key)}" + (
        f", its verification keys {', '.join(retired)}" if retired else " (no verification keys)"
    )


def _public(key: PublicKeyLike) -> Ed25519PublicKey:
    if isinstance(key, Ed25519PrivateKey):
        return key.public_key()
    if isinstance(key, Ed25519PublicKey):
        return key
    try:
        loaded = serialization.load_pem_public_key(key.encode() if isinstance(key, str) else key)
    except ValueError as exc:
        raise InvalidArgument(
            f"the public key is not a PEM public key ({exc})", reason="INVALID_PUBLIC_KEY"
        ) from None
    if not isinstance(loaded, Ed25519PublicKey):
        raise InvalidArgument("the public key is not an Ed25519 key", reason="INVALID_PUBLIC_KEY")
    return loaded


def public_key_pem(key: PublicKeyLike) -> str:
    """The public half of ``key`` as SubjectPublicKeyInfo PEM text."""
    return (
        _public(key)
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


def key_id(key: PublicKeyLike) -> str:
    """A short fingerprint of the public key: the first 16 hex digits of SHA-256 of its bytes."""
    raw = _public(key).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement of the chain head: ``seq`` events ending in ``head_hash``."""

    seq: int
    head_hash: str
    time: datetime
    key_id: str
    signature: str

    def payload(self) -> bytes:
        """The bytes the signature covers."""
        return checkpoint_payload(self.seq, self.head_hash, self.time, self.key_id)

    def signature_valid(self, public_key: PublicKeyLike) -> bool:
        """Whether the signature is ``public_key``'s over :meth:`payload`."""
        try:
            signature = base64.b64decode(self.signature, validate=True)
            _public(public_key).verify(signature, self.payload())
        except (InvalidSignature, ValueError):
            return False
        return True

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "seq": self.seq,
            "head_hash": self.head_hash,
            "time": utc_text(self.time),
            "key_id": self.key_id,
            "signature": self.signature,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Checkpoint:
        """Parse :meth:`to_dict` output; ``InvalidArgument`` (INVALID_CHECKPOINT) if malformed."""
        try:
            seq, time = data["seq"], datetime.fromisoformat(data["time"])
            # In UTC here, where a time whose offset takes it past year 1 or 9999 is refused.
            time = time.astimezone(UTC) if time.tzinfo else time.replace(tzinfo=UTC)
            fields = (data["head_hash"], data["key_id"], data["signature"])
            if not isinstance(seq, int) or seq < 0 or not all(isinstance(f, str) for f in fields):
                raise TypeError("wrong field types")
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise InvalidArgument(
                f"the checkpoint is malformed ({exc}); it needs seq, head_hash, time, key_id "
                "and signature",
                reason="INVALID_CHECKPOINT",
            ) from None
        return cls(seq, fields[0], time, *fields[1:])

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the checkpoint as JSON to ``path`` (replacing it atomically)."""
        with replaced_atomically(path) as f:
            f.write((json.dumps(self.to_dict(), indent=2) + "\n").encode("utf-8"))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Checkpoint:
        """Read a checkpoint written by :meth:`save`."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InvalidArgument(
                f"cannot read the checkpoint {path}: {exc}", reason="INVALID_CHECKPOINT"
            ) from None
        return cls.from_dict(data)


def check_checkpoint(cp: Checkpoint, key: PublicKeyLike) -> tuple[bool, str]:
    """Whether ``key`` signed the checkpoint, and a note: why not, or that a retired key did.

    ``key`` is a public key, or the server's key (a :class:`SigningKeys` verifies with the key
    the checkpoint names, the active one or a retired one). A message of a failure names the
    key the checkpoint names and the keys it was checked against.
    """
    if isinstance(key, Ed25519PrivateKey):
        public, retired = public_key_for(key, cp.key_id)
        if public is None:
            return False, (
                f"{_NOT_VERIFIED}: it names key {shown_key_id(cp.key_id)}, and "
                f"{_known_keys(key)}; if that was this server's key before, start the server "
                "with its public key in --verification-keys DIR, else the checkpoint was altered"
            )
        if cp.signature_valid(public):
            return True, f"signed by retired key {cp.key_id}" if retired else ""
        whose = "a retired key of this server" if retired else "this server's key"
        return False, (
            f"{_NOT_VERIFIED} with key {cp.key_id}, which it names ({whose}): the checkpoint "
            "was altered"
        )
    if cp.signature_valid(key):
        return True, ""
    given = key_id(key)
    if cp.key_id != given:
        return False, (
            f"{_NOT_VERIFIED}: it names key {shown_key_id(cp.key_id)}, and the given public key "
            f"is {given}; check it with that key, or the checkpoint was altered"
        )
    return False, f"{_NOT_VERIFIED} with key {given}, which it names: the checkpoint was altered"


_NOT_VERIFIED = "the checkpoint's signature does not verify"


def checkpoint(store: Store, signer: Ed25519PrivateKey) -> Checkpoint:
    """Sign the current head of the chain."""
    with store.read() as tx:
        seq, head_hash = head(tx.session)
    unsigned = Checkpoint(seq, head_hash, datetime.now(UTC), key_id(signer), "")
    signature = base64.b64encode(signer.sign(unsigned.payload())).decode("ascii")
    return Checkpoint(seq, head_hash, unsigned.time, unsigned.key_id, signature)
