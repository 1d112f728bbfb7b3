"""Uploads and downloads of content-addressed blobs."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from controlplane.auth.permissions import READ
from controlplane.blobstore import Blobs
from controlplane.domain import Blob
from controlplane.names import check_sha256, check_text, parse_blob
from controlplane.store import Store, Tx
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
        """Receive ``chunks``; the digest is checked before anything is recorded."""
        check_sha256(sha256)
        check_text(media_type, "media_type", 256, single_line=True)
        size = self.blobs.receive(chunks, sha256, size_bytes)
        with self.store.write(ctx, "UploadBlob") as tx:
            blob = Blob(sha256, size, media_type, ctx.principal, tx.now)
            if not tx.blobs.add_if_absent(blob):
                existing = tx.blobs.get(sha256)
                assert existing is not None
                if not tx.blobs.uploaded_by(sha256, ctx.principal):
                    # Sending the bytes proves holding them: from now on this caller may read
                    # the blob (and name it in a registration) as if it had stored it first.
                    tx.record("UploadBlob", existing.name, existing, existing)
                return existing
            tx.record("UploadBlob", blob.name, None, blob)
            return blob

    def get(self, name: str, ctx: RequestContext | None = None) -> Blob:
        """Blob ``name``'s record. With ``ctx``, a caller whose roles hold only on some
        models sees only blobs it uploaded or that those models' versions and evaluations
        use (BLOB_NOT_IN_SCOPE otherwise): a digest seen elsewhere opens nothing. Such a
        caller gets the same answer for a digest nobody uploaded, so that it cannot learn
        which digests are stored."""
        sha256 = parse_blob(name)
        with self.store.read() as tx:
            require_readable(tx, ctx, [sha256])
            blob = tx.blobs.get(sha256)
        if blob is None:
            raise NotFound(f"blob {name} does not exist", reason="BLOB_NOT_FOUND")
        return blob

    def download(self, name: str, ctx: RequestContext | None = None) -> Iterator[bytes]:
        """The blob's bytes in chunks (NOT_FOUND before the first chunk when missing)."""
        blob = self.get(name, ctx)
        return self.blobs.iter_chunks(blob.sha256)


def require_readable(tx: Tx, ctx: RequestContext | None, digests: Iterable[str]) -> None:
    """Refuse (PERMISSION_DENIED, BLOB_NOT_IN_SCOPE) when a caller whose roles hold only on some
    models names a blob it may not read: one it did not upload and that no version or
    evaluation of those models uses; and when a caller holding no role that reads (only
    ``sidecar``) names a blob that is not the artifact or the baseline profile of a version of
    a deployed model, the only blobs a sidecar loads. Requests that name digests for the
    server to read on the caller's behalf (registering a version, evaluating) check them
    here, as downloads do."""
    if ctx is None:
        return
    scope = _model_scope(ctx)
    sidecar_only = bool(ctx.grants) and not any(set(g.roles) & READ for g in ctx.grants)
    for sha256 in digests:
        if scope is not None and not tx.blobs.used_by(sha256, scope, ctx.principal):
            raise PermissionDenied(
                f"blob blobs/{sha256} is not used by the models your roles hold on "
                f"({', '.join(sorted(scope)) or 'none'})",
                reason="BLOB_NOT_IN_SCOPE",
            )
        if sidecar_only and not tx.blobs.served(sha256):
            raise PermissionDenied(
                f"blob blobs/{sha256} is no artifact or baseline profile of a deployed model's "
                "version: a caller holding only the sidecar role reads nothing else",
                reason="BLOB_NOT_IN_SCOPE",
            )


def _model_scope(ctx: RequestContext) -> set[str] | None:
    """The models the caller's grants name, or None when a grant holds on every model."""
    if not ctx.grants or any(not g.scoped for g in ctx.grants):
        return None
    return {m for g in ctx.grants for m in g.models}
