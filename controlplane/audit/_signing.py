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
import tempfile
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


def load_or_create_signing_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """The key stored at ``path`` (PKCS#8 PEM), created with mode 0600 when absent.

    Creation is atomic (written beside, then linked into place), so replicas starting together
    end up with the one key that won.
    """
    target = Path(path)
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
        finally:
            os.unlink(tmp)
    try:
        key = serialization.load_pem_private_key(target.read_bytes(), password=None)
    except (ValueError, TypeError, OSError) as exc:
        raise FailedPrecondition(
            f"the audit signing key {target} cannot be read as an unencrypted PEM private key "
            f"({exc}); restore it or move it away to have a new one created",
            reason="SIGNING_KEY_INVALID",
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise FailedPrecondition(
            f"the audit signing key {target} is not an Ed25519 key", reason="SIGNING_KEY_INVALID"
        )
    return key


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


def checkpoint(store: Store, signer: Ed25519PrivateKey) -> Checkpoint:
    """Sign the current head of the chain."""
    with store.read() as tx:
        seq, head_hash = head(tx.session)
    unsigned = Checkpoint(seq, head_hash, datetime.now(UTC), key_id(signer), "")
    signature = base64.b64encode(signer.sign(unsigned.payload())).decode("ascii")
    return Checkpoint(seq, head_hash, unsigned.time, unsigned.key_id, signature)
