"""The Python SDK: one object per control-plane connection. The CLI is built on it."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf import field_mask_pb2, timestamp_pb2

from modelplane._environment import capture_environment
from modelplane.errors import ModelplaneError, Unavailable, error_info, from_rpc_error
from modelplane.v1 import (
    blobs_pb2,
    blobs_pb2_grpc,
    operations_pb2,
    operations_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)

PRINCIPAL_METADATA_KEY = "x-modelplane-principal"
CHUNK_BYTES = 1 << 20
MAX_MESSAGE_BYTES = 2**31 - 1
T = TypeVar("T")

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


def version_name(model: str, version: int | str) -> str:
    """A version by number, or by alias when given as ``@alias``."""
    text = str(version)
    if text.startswith("@"):
        return f"{model_name(model)}{text}"
    return f"{model_name(model)}/versions/{text}"


M = TypeVar("M", registry_pb2.Model, registry_pb2.ModelVersion)


def _with_fields(message: M, fields: Mapping[str, Any]) -> M:
    """Set the fields an update names (labels replace the whole map)."""
    for key, value in fields.items():
        if key == "labels":
            message.labels.update(value)
        else:
            setattr(message, key, value)
    return message


class Client:
    """A connection to a Modelplane control plane.

    Every method raises a :class:`modelplane.ModelplaneError` subclass on failure;
    :class:`ServerUnreachable` when no server answered. Mutations carry a fresh request id,
    so a retried call never registers anything twice.
    """

    def __init__(
        self,
        address: str = "127.0.0.1:50051",
        *,
        principal: str | None = None,
        timeout: float = 60.0,
        channel: grpc.Channel | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self._metadata: tuple[tuple[str, str], ...] = (
            ((PRINCIPAL_METADATA_KEY, principal),) if principal else ()
        )
        self._channel = channel or grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self.registry = registry_pb2_grpc.RegistryServiceStub(self._channel)
        self.blobs = blobs_pb2_grpc.BlobServiceStub(self._channel)
        self.operations = operations_pb2_grpc.OperationsServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Callable[..., T], request: Any, **kw: Any) -> T:
        try:
            return method(request, timeout=self.timeout, metadata=self._metadata, **kw)
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def _error(self, exc: grpc.RpcError) -> ModelplaneError:
        code = exc.code()  # type: ignore[attr-defined]
        if code == grpc.StatusCode.UNAVAILABLE and error_info(exc) is None:
            return ServerUnreachable(
                f"cannot reach the control plane at {self.address}: {exc.details()}",  # type: ignore[attr-defined]
            )
        return from_rpc_error(exc)

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
        """Change ``description``, ``labels``, ``intended_use`` or ``limitations``."""
        message = _with_fields(registry_pb2.Model(name=model_name(model), etag=etag), fields)
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
        """Upload a file or bytes; the server checks the digest computed here."""
        if isinstance(source, bytes):
            sha, size = hashlib.sha256(source).hexdigest(), len(source)

            def chunks() -> Iterator[bytes]:
                for i in range(0, len(source), CHUNK_BYTES):
                    yield source[i : i + CHUNK_BYTES]
        else:
            path = Path(source)
            sha, size = _sha256_file(path)
            media_type = media_type or MEDIA_TYPES.get(
                path.suffix.lower(), "application/octet-stream"
            )

            def chunks() -> Iterator[bytes]:
                with path.open("rb") as f:
                    while chunk := f.read(CHUNK_BYTES):
                        yield chunk

        def requests() -> Iterator[blobs_pb2.UploadBlobRequest]:
            header = blobs_pb2.UploadBlobHeader(sha256=sha, size_bytes=size, media_type=media_type)
            yield blobs_pb2.UploadBlobRequest(header=header)
            for chunk in chunks():
                yield blobs_pb2.UploadBlobRequest(chunk=chunk)

        return self._call(self.blobs.UploadBlob, requests())

    def get_blob(self, sha256: str) -> blobs_pb2.Blob:
        return self._call(self.blobs.GetBlob, blobs_pb2.GetBlobRequest(name=f"blobs/{sha256}"))

    def download_blob(self, sha256: str, out: str | os.PathLike[str]) -> Path:
        """Write a blob to ``out`` (through a temporary name) after checking its digest."""
        target = Path(out)
        tmp = target.with_name(f".{target.name}.part")
        digest = hashlib.sha256()
        try:
            stream = self.blobs.DownloadBlob(
                blobs_pb2.DownloadBlobRequest(name=f"blobs/{sha256}"),
                timeout=self.timeout,
                metadata=self._metadata,
            )
            with tmp.open("wb") as f:
                for message in stream:
                    digest.update(message.chunk)
                    f.write(message.chunk)
        except grpc.RpcError as exc:
            tmp.unlink(missing_ok=True)
            raise self._error(exc) from None
        if digest.hexdigest() != sha256:
            tmp.unlink(missing_ok=True)
            raise ModelplaneError(
                f"downloaded bytes do not hash to {sha256}", reason="DIGEST_MISMATCH"
            )
        tmp.replace(target)
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
        """Upload the ONNX file and datasets, then register a version with full lineage."""
        artifact = self.upload_blob(onnx)
        inputs = []
        for role, path in (datasets or {}).items():
            blob = self.upload_blob(path)
            inputs.append(
                registry_pb2.DatasetInput(role=role, source=str(path), sha256=blob.sha256)
            )
        request = registry_pb2.CreateModelVersionRequest(
            parent=model_name(model),
            artifact_sha256=artifact.sha256,
            description=description,
            labels=dict(labels or {}),
            datasets=inputs,
            label_column=label,
            feature_names=list(feature_names),
            training_run_id=training_run_id,
            parameters={k: str(v) for k, v in (params or {}).items()},
            metrics={k: float(v) for k, v in (metrics or {}).items()},
            code=registry_pb2.CodeRef(repository=code_repo, commit=code_commit),
            request_id=request_id or self._rid(),
        )
        if capture_env:
            request.environment.CopyFrom(capture_environment())
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
        """Change ``description`` or ``labels``."""
        message = _with_fields(
            registry_pb2.ModelVersion(name=version_name(model, version), etag=etag), fields
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
        request_id: str | None = None,
    ) -> registry_pb2.Alias:
        return self._call(
            self.registry.SetAlias,
            registry_pb2.SetAliasRequest(
                name=f"{model_name(model)}/aliases/{alias}",
                version=version_name(model, version),
                reason=reason,
                request_id=request_id or self._rid(),
            ),
        )

    def get_alias(
        self, model: str, alias: str, *, as_of: datetime | None = None
    ) -> registry_pb2.Alias:
        request = registry_pb2.GetAliasRequest(name=f"{model_name(model)}/aliases/{alias}")
        if as_of is not None:
            stamp = timestamp_pb2.Timestamp()
            stamp.FromDatetime(as_of)
            request.as_of.CopyFrom(stamp)
        return self._call(self.registry.GetAlias, request)

    def list_aliases(self, model: str) -> list[registry_pb2.Alias]:
        return list(
            self._call(
                self.registry.ListAliases, registry_pb2.ListAliasesRequest(parent=model_name(model))
            ).aliases
        )

    def delete_alias(
        self, model: str, alias: str, *, reason: str = "", request_id: str | None = None
    ) -> None:
        self._call(
            self.registry.DeleteAlias,
            registry_pb2.DeleteAliasRequest(
                name=f"{model_name(model)}/aliases/{alias}",
                reason=reason,
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
