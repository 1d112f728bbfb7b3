"""Plumbing shared by the Modelplane servers: request context, logging, the error
interceptor, health and reflection, graceful shutdown.

Needs the server extras (structlog, prometheus-client, grpcio-health-checking,
grpcio-reflection).
"""

from modelplane.server.context import PRINCIPAL_METADATA_KEY, RequestContext, current_context
from modelplane.server.interceptor import RequestInterceptor, RpcMetrics
from modelplane.server.lifecycle import GrpcServerHandle, add_health_and_reflection, serve_metrics
from modelplane.server.logging import configure_logging

__all__ = [
    "PRINCIPAL_METADATA_KEY",
    "GrpcServerHandle",
    "RequestContext",
    "RequestInterceptor",
    "RpcMetrics",
    "add_health_and_reflection",
    "configure_logging",
    "current_context",
    "serve_metrics",
]
