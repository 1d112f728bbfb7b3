"""RegistryService over gRPC: convert, call the domain service, convert back."""

from __future__ import annotations

import grpc
from google.protobuf import empty_pb2

from controlplane.api import converters as cv
from controlplane.services import ModelService, VersionService
from controlplane.services.models import MODEL_UPDATE_PATHS
from controlplane.services.versions import VERSION_UPDATE_PATHS
from modelplane.server import current_context
from modelplane.v1 import registry_pb2, registry_pb2_grpc


def _mask(paths: list[str], allowed: tuple[str, ...]) -> list[str]:
    return list(allowed) if paths == ["*"] else paths


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    """Thin adapter from RegistryService RPCs to the model and version services."""

    def __init__(self, models: ModelService, versions: VersionService) -> None:
        self.models = models
        self.versions = versions

    def CreateModel(
        self, request: registry_pb2.CreateModelRequest, context: grpc.ServicerContext
    ) -> registry_pb2.Model:
        m = request.model
        model = self.models.create(
            current_context(),
            request.model_id,
            description=m.description,
            labels=dict(m.labels),
            intended_use=m.intended_use,
            limitations=m.limitations,
            request_id=request.request_id,
        )
        return cv.model_to_proto(model)

    def GetModel(
        self, request: registry_pb2.GetModelRequest, context: grpc.ServicerContext
    ) -> registry_pb2.Model:
        return cv.model_to_proto(self.models.get(request.name))

    def ListModels(
        self, request: registry_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> registry_pb2.ListModelsResponse:
        models, token = self.models.list_models(
            filter=request.filter,
            order_by=request.order_by,
            page_size_=request.page_size,
            page_token=request.page_token,
        )
        return registry_pb2.ListModelsResponse(
            models=[cv.model_to_proto(m) for m in models], next_page_token=token
        )

    def UpdateModel(
        self, request: registry_pb2.UpdateModelRequest, context: grpc.ServicerContext
    ) -> registry_pb2.Model:
        m = request.model
        values = {
            "description": m.description,
            "labels": dict(m.labels),
            "intended_use": m.intended_use,
            "limitations": m.limitations,
        }
        paths = _mask(list(request.update_mask.paths), MODEL_UPDATE_PATHS)
        model = self.models.update(
            current_context(), m.name, m.etag, paths, values, request.request_id
        )
        return cv.model_to_proto(model)

    def DeleteModel(
        self, request: registry_pb2.DeleteModelRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        self.models.delete(
            current_context(),
            request.name,
            etag=request.etag,
            force=request.force,
            request_id=request.request_id,
        )
        return empty_pb2.Empty()

    def CreateModelVersion(
        self, request: registry_pb2.CreateModelVersionRequest, context: grpc.ServicerContext
    ) -> registry_pb2.ModelVersion:
        version = self.versions.create(
            current_context(),
            request.parent,
            cv.new_version_from_proto(request),
            request.request_id,
        )
        return cv.version_to_proto(version)

    def GetModelVersion(
        self, request: registry_pb2.GetModelVersionRequest, context: grpc.ServicerContext
    ) -> registry_pb2.ModelVersion:
        return cv.version_to_proto(self.versions.get(request.name))

    def ListModelVersions(
        self, request: registry_pb2.ListModelVersionsRequest, context: grpc.ServicerContext
    ) -> registry_pb2.ListModelVersionsResponse:
        versions, token = self.versions.list_versions(
            request.parent,
            filter=request.filter,
            order_by=request.order_by,
            page_size_=request.page_size,
            page_token=request.page_token,
        )
        return registry_pb2.ListModelVersionsResponse(
            versions=[cv.version_to_proto(v) for v in versions], next_page_token=token
        )

    def UpdateModelVersion(
        self, request: registry_pb2.UpdateModelVersionRequest, context: grpc.ServicerContext
    ) -> registry_pb2.ModelVersion:
        v = request.version
        values = {"description": v.description, "labels": dict(v.labels)}
        paths = _mask(list(request.update_mask.paths), VERSION_UPDATE_PATHS)
        version = self.versions.update(
            current_context(), v.name, v.etag, paths, values, request.request_id
        )
        return cv.version_to_proto(version)

    def ArchiveModelVersion(
        self, request: registry_pb2.ArchiveModelVersionRequest, context: grpc.ServicerContext
    ) -> registry_pb2.ModelVersion:
        version = self.versions.archive(
            current_context(), request.name, request.etag, request.request_id
        )
        return cv.version_to_proto(version)

    def SetAlias(
        self, request: registry_pb2.SetAliasRequest, context: grpc.ServicerContext
    ) -> registry_pb2.Alias:
        alias = self.models.set_alias(
            current_context(),
            request.name,
            request.version,
            request.reason,
            request.request_id,
            etag=request.etag,
        )
        return cv.alias_to_proto(alias)

    def GetAlias(
        self, request: registry_pb2.GetAliasRequest, context: grpc.ServicerContext
    ) -> registry_pb2.Alias:
        as_of = cv.time_from_proto(request.as_of, "as_of") if request.HasField("as_of") else None
        return cv.alias_to_proto(self.models.get_alias(request.name, as_of))

    def ListAliases(
        self, request: registry_pb2.ListAliasesRequest, context: grpc.ServicerContext
    ) -> registry_pb2.ListAliasesResponse:
        return registry_pb2.ListAliasesResponse(
            aliases=[cv.alias_to_proto(a) for a in self.models.list_aliases(request.parent)]
        )

    def DeleteAlias(
        self, request: registry_pb2.DeleteAliasRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        self.models.delete_alias(
            current_context(), request.name, request.reason, request.request_id, etag=request.etag
        )
        return empty_pb2.Empty()

    def ListAliasHistory(
        self, request: registry_pb2.ListAliasHistoryRequest, context: grpc.ServicerContext
    ) -> registry_pb2.ListAliasHistoryResponse:
        events, token = self.models.alias_history(
            request.name, request.page_size, request.page_token
        )
        return registry_pb2.ListAliasHistoryResponse(
            events=[cv.alias_event_to_proto(e) for e in events], next_page_token=token
        )
