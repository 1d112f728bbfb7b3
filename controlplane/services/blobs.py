"""Uploads and downloads of content-addressed blobs, and which blobs a caller may read."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from controlplane.auth.permissions import READ
from controlplane.blobstore import Blobs
from controlplane.domain import Blob
from controlplane.names import check_sha256, check_text, parse_blob
from controlplane.store import Store, Tx
from controlplane.store.repos import Sending
from modelplane.errors import NotFound, PermissionDenied
from modelplane.server.context import RequestContext


class BlobService:
    """Stores bytes by their sha256, checked against what the client declared."""

    def __init__(self, store: Store, blobs: Blobs) -> None:
        self.store = store
        self.blobs = blobs

    def upload(
        self,
        ctx: RequestContext,
        sha256: str,
        size_bytes: int,
        media_type: str,
        chunks: Iterable[bytes],
    ) -> Blob:
        """Receive ``chunks``; the digest is checked before anything is recorded.

        Bytes already stored answer the stored record to a caller who may read it. A caller
        whose roles hold only on some models and who may read the blob only because it sent
        the bytes (now, or before) gets the answer a first upload of its own would give: its
        name and the time of its sending, so that an upload tells it neither whether, nor by
        whom, nor when the bytes were stored. The stored record is left as it is."""
        check_sha256(sha256)
        check_text(media_type, "media_type", 256, single_line=True)
        size = self.blobs.receive(chunks, sha256, size_bytes)
        with self.store.write(ctx, "UploadBlob") as tx:
            blob = Blob(sha256, size, media_type, ctx.principal, tx.now)
            if tx.blobs.add_if_absent(blob):
                tx.record("UploadBlob", blob.name, None, blob)
                return blob
            existing = tx.blobs.get(sha256)
            assert existing is not None
            access = _access(tx, ctx, sha256)
            if access.refusal is None:
                if access.own is None and not tx.blobs.uploaded_by(sha256, ctx.principal):
                    tx.record("UploadBlob", existing.name, existing, existing)
                return _uploaded(existing, ctx, access, media_type)
            # Sending the bytes proves holding them: from now on this caller may read the blob
            # (and name it in a registration) as if it had stored it first.
            tx.record("UploadBlob", existing.name, existing, existing)
        # Answered as a later GetBlob will show it: the sending's time is the audit event's,
        # known once it is committed.
        with self.store.read() as rtx:
            access = _access(rtx, ctx, sha256)
        if access.refusal is not None:  # another model's version came to use it meanwhile
            return blob
        return _uploaded(existing, ctx, access, media_type)

    def get(self, name: str, ctx: RequestContext | None = None) -> Blob:
        """Blob ``name``'s record. With ``ctx``, a caller whose roles hold only on some
        models sees only blobs that those models' versions and evaluations use or that it sent
        the bytes of itself (BLOB_NOT_IN_SCOPE otherwise): a digest seen elsewhere opens
        nothing. Such a caller gets the same answer for a digest nobody uploaded, so that it
        cannot learn which digests are stored, and for a blob it reads only because it sent
        the bytes, the record shows its own sending (:meth:`upload`)."""
        sha256 = parse_blob(name)
        with self.store.read() as tx:
            access = _access(tx, ctx, sha256) if ctx is not None else _Access()
            if access.refusal is not None:
                raise access.refusal
            blob = tx.blobs.get(sha256)
        if blob is None:
            raise NotFound(f"blob {name} does not exist", reason="BLOB_NOT_FOUND")
        return _view(blob, ctx, access)

    def download(self, name: str, ctx: RequestContext | None = None) -> Iterator[bytes]:
        """The blob's bytes in chunks (NOT_FOUND before the first chunk when missing)."""
        blob = self.get(name, ctx)
        return self.blobs.iter_chunks(blob.sha256)


def require_readable(tx: Tx, ctx: RequestContext | None, digests: Iterable[str]) -> None:
    """Refuse (PERMISSION_DENIED, BLOB_NOT_IN_SCOPE) when a caller whose roles hold only on some
    models names a blob it may not read: one that no version or evaluation of those models
    uses, unless it sent the blob's bytes itself and no version or evaluation of another model
    has come to use them since; and when a caller holding no role that reads (only
    ``sidecar``) names a blob that is not the artifact or the baseline profile of a version of
    a deployed model, the only blobs a sidecar loads. Requests that name digests for the
    server to read on the caller's behalf (registering a version, evaluating) check them
    here, as downloads do."""
    if ctx is None:
        return
    for sha256 in digests:
        refusal = _access(tx, ctx, sha256).refusal
        if refusal is not None:
            raise refusal


@dataclass(frozen=True)
class _Access:
    """Whether a caller may read a blob: ``refusal`` when it may not; ``own`` when it may only
    because it sent the bytes itself (the sending that counts)."""

    refusal: PermissionDenied | None = None
    own: Sending | None = None


def _access(tx: Tx, ctx: RequestContext, sha256: str) -> _Access:
    """Whether ``ctx``'s caller may read blob ``sha256`` (:func:`require_readable` says when)."""
    scope = _model_scope(ctx)
    own: Sending | None = None
    if scope is not None and not tx.blobs.used_in(sha256, scope):
        # The uploaded-it rule is for the time between an upload and the registration that
        # names it: a use by another model since the sending may be another credential's of
        # the same principal.
        own = tx.blobs.last_sent(sha256, ctx.principal)
        if own is None or tx.blobs.used_elsewhere_since(sha256, scope, own.seq):
            return _Access(
                PermissionDenied(
                    f"blob blobs/{sha256} is not used by the models your roles hold on "
                    f"({', '.join(sorted(scope)) or 'none'})",
                    reason="BLOB_NOT_IN_SCOPE",
                )
            )
    sidecar_only = bool(ctx.grants) and not any(set(g.roles) & READ for g in ctx.grants)
    if sidecar_only and not tx.blobs.served(sha256):
        return _Access(
            PermissionDenied(
                f"blob blobs/{sha256} is no artifact or baseline profile of a deployed model's "
                "version: a caller holding only the sidecar role reads nothing else",
                reason="BLOB_NOT_IN_SCOPE",
            )
        )
    return _Access(own=own)


def _view(blob: Blob, ctx: RequestContext | None, access: _Access) -> Blob:
    """What ``ctx``'s caller sees of ``blob``: the record, or, when it reads the blob only
    because it sent the bytes and another principal stored them first, the record of its own
    sending (who stored the bytes first, and when, is not its to learn)."""
    own = access.own
    if ctx is None or own is None or blob.created_by == ctx.principal:
        return blob
    return replace(blob, created_by=ctx.principal, create_time=own.time or blob.create_time)


def _uploaded(existing: Blob, ctx: RequestContext, access: _Access, media_type: str) -> Blob:
    """The answer to an upload of bytes stored before: the record, or, for a caller who sees
    only its own sending (:func:`_view`), that sending with the media type it declared."""
    view = _view(existing, ctx, access)
    return existing if view is existing else replace(view, media_type=media_type)


def _model_scope(ctx: RequestContext) -> set[str] | None:
    """The models the caller's grants name, or None when a grant holds on every model."""
    if not ctx.grants or any(not g.scoped for g in ctx.grants):
        return None
    return {m for g in ctx.grants for m in g.models}
