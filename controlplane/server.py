"""Building, starting and stopping the control-plane gRPC server."""

from __future__ import annotations

from concurrent import futures

import grpc
import structlog
from prometheus_client import CollectorRegistry

from controlplane import audit
from controlplane.api.blobs_servicer import BlobServicer
from controlplane.api.operations_servicer import OperationsServicer
from controlplane.api.registry_servicer import RegistryServicer
from controlplane.blobstore import BlobStore
from controlplane.services import BlobService, ModelService, OperationService, VersionService
from controlplane.settings import ControlPlaneSettings
from controlplane.store import Store
from modelplane.server import (
    GrpcServerHandle,
    RequestInterceptor,
    RpcMetrics,
    add_health_and_reflection,
    serve_metrics,
)
from modelplane.server.lifecycle import GRPC_OPTIONS
from modelplane.v1 import (
    blobs_pb2,
    blobs_pb2_grpc,
    operations_pb2,
    operations_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)

log = structlog.get_logger("modelplane.controlplane")

SERVICE_NAMES = [
    registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name,
    blobs_pb2.DESCRIPTOR.services_by_name["BlobService"].full_name,
    operations_pb2.DESCRIPTOR.services_by_name["OperationsService"].full_name,
]


def start(settings: ControlPlaneSettings) -> GrpcServerHandle:
    """Open the store (migrating it), start serving, and report SERVING once ready."""
    store = Store.open(settings.db_url)
    audit.install(store)
    blobs = BlobStore.open(settings.artifact_root, settings.max_upload_bytes)
    registry = CollectorRegistry()
    interceptor = RequestInterceptor(RpcMetrics("modelplane_controlplane", registry))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix="rpc"),
        interceptors=[interceptor],
        options=GRPC_OPTIONS,
    )
    models = ModelService(store)
    versions = VersionService(store, blobs, baseline_sample_size=settings.baseline_sample_size)
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(
        RegistryServicer(models, versions), server
    )
    blobs_pb2_grpc.add_BlobServiceServicer_to_server(
        BlobServicer(BlobService(store, blobs)), server
    )
    operations_pb2_grpc.add_OperationsServiceServicer_to_server(
        OperationsServicer(OperationService(store)), server
    )
    health = add_health_and_reflection(server, SERVICE_NAMES)
    port = server.add_insecure_port(settings.listen)
    if port == 0:
        store.close()
        raise OSError(f"cannot listen on {settings.listen}")
    handle = GrpcServerHandle(server, port, health, SERVICE_NAMES, settings.grace_seconds)
    handle.closers.append(store.close)
    if settings.metrics_listen:
        httpd, metrics_port = serve_metrics(settings.metrics_listen, registry)
        handle.closers.append(httpd.shutdown)
        log.info("metrics listening", metrics_port=metrics_port)
    server.start()
    handle.mark_serving()
    host = settings.listen.rpartition(":")[0]
    log.info(
        "control plane serving", listen=f"{host}:{port}", port=port, db=_redacted(settings.db_url)
    )
    return handle


def _redacted(url: str) -> str:
    """The database URL without a password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url
    return url
