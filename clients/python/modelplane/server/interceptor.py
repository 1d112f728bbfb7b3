"""One server interceptor for every RPC: request context, logging, metrics and the mapping of
errors to gRPC statuses.

Domain code raises :class:`modelplane.errors.ModelplaneError`; the interceptor aborts the call
with the mapped status code and an ErrorInfo. Anything else becomes INTERNAL with a generic
message (the details stay in the server's log, under the request id).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import grpc
import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram

from modelplane.errors import Internal, InvalidArgument, ModelplaneError, to_grpc_status
from modelplane.ids import PRINCIPAL_RULE
from modelplane.server.context import (
    PRINCIPAL_METADATA_KEY,
    REQUEST_ID_METADATA_KEY,
    TRACEPARENT_METADATA_KEY,
    RequestContext,
    clean_principal,
    current_context,
    reset_context,
    set_context,
    trace_id_from,
)

log = structlog.get_logger("modelplane.rpc")

#: Resolves the principal of a call from its metadata; raises Unauthenticated to refuse it.
Authenticator = Callable[[dict[str, str], grpc.ServicerContext], RequestContext]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class RpcMetrics:
    """A request counter ``{method, code}`` and a latency histogram ``{method}``."""

    def __init__(self, prefix: str, registry: CollectorRegistry | None = None) -> None:
        kwargs: dict[str, Any] = {"registry": registry} if registry is not None else {}
        self.requests = Counter(
            f"{prefix}_requests",
            "RPCs served, by method and status code",
            ["method", "code"],
            **kwargs,
        )
        self.latency = Histogram(
            f"{prefix}_request_duration_seconds",
            "RPC handling time in seconds, by method",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            **kwargs,
        )
        # The labelled children, looked up once per (method, code) rather than on every RPC.
        self._children: dict[tuple[str, grpc.StatusCode], tuple[Any, Any]] = {}

    def observe(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        """Count one RPC and record how long it took."""
        children = self._children.get((method, code))
        if children is None:
            children = (
                self.requests.labels(method=method, code=code.name),
                self.latency.labels(method=method),
            )
            self._children[(method, code)] = children
        children[0].inc()
        children[1].observe(seconds)


def anonymous_loopback(metadata: dict[str, str], context: grpc.ServicerContext) -> RequestContext:
    """The principal the client names in ``x-modelplane-principal`` (access control off), or
    ``anonymous`` when it names none (no such metadata, or an empty value).

    A name that is not a principal name (:data:`PRINCIPAL_RULE`) is refused with
    InvalidArgument (reason INVALID_METADATA, ``metadata["field"]`` = ``principal``, as the SDK
    refuses a name gRPC metadata cannot carry), not recorded as ``anonymous``: the caller
    would otherwise find its models and approvals under a name it did not give.
    """
    name = metadata.get(PRINCIPAL_METADATA_KEY, "")
    if not name:
        return RequestContext(principal="anonymous")
    principal = clean_principal(name)
    if principal is None:
        shown = repr(name) if len(name) <= 128 else f"of {len(name)} characters"
        raise InvalidArgument(
            f"principal {shown} (metadata {PRINCIPAL_METADATA_KEY}) is not a principal name: "
            f"give {PRINCIPAL_RULE}",
            reason="INVALID_METADATA",
            metadata={"field": "principal"},
        )
    return RequestContext(principal=principal)


@dataclass(frozen=True)
class Authorization:
    """An authorizer's answer for a permitted call.

    ``context`` replaces the request context (typically with the roles that count for this
    request); ``response_filter``, when set, is applied to every response message before it is
    sent, and may drop entries the caller may not see or raise to refuse the call.
    """

    context: RequestContext
    response_filter: Callable[[Any], Any] | None = None


#: Decides whether an authenticated call may proceed: ``(context, full method name, request)``,
#: the request being None for client-streaming methods. Raises PermissionDenied to refuse.
Authorizer = Callable[[RequestContext, str, Any], Authorization]


class RequestInterceptor(grpc.ServerInterceptor):
    """Binds the request context, maps errors to statuses, logs and counts every RPC.

    Methods of the services named in ``open_services`` (health, reflection) skip
    authentication and authorization. Every other call is authenticated, then, when an
    ``authorizer`` is given, authorized with its deserialised request.
    """

    def __init__(
        self,
        metrics: RpcMetrics | None = None,
        authenticator: Authenticator = anonymous_loopback,
        open_services: tuple[str, ...] = ("grpc.health.v1.Health", "grpc.reflection."),
        authorizer: Authorizer | None = None,
    ) -> None:
        self._metrics = metrics
        self._authenticate = authenticator
        self._authorize = authorizer
        self._open = open_services

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        short = method.rsplit("/", 1)[-1]
        is_open = any(method.lstrip("/").startswith(s) for s in self._open)

        def enter(context: grpc.ServicerContext) -> tuple[Any, float, dict[str, str]]:
            md = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
            remaining = context.time_remaining()
            ctx = RequestContext(
                principal="anonymous",
                request_id=md.get(REQUEST_ID_METADATA_KEY, "")[:128] or uuid.uuid4().hex,
                trace_id=trace_id_from(md.get(TRACEPARENT_METADATA_KEY)),
                method=short,
                deadline=time.monotonic() + remaining if remaining is not None else None,
            )
            # "anonymous" until the caller is authenticated: a refused call (a bad token) is
            # logged with it, never with what the caller sent.
            structlog.contextvars.bind_contextvars(
                request_id=ctx.request_id,
                trace_id=ctx.trace_id,
                method=short,
                principal=ctx.principal,
            )
            return set_context(ctx), time.perf_counter(), md

        def admit(
            md: dict[str, str], request: Any, context: grpc.ServicerContext
        ) -> Callable[[Any], Any] | None:
            """Authenticate and authorize; make the caller's context current."""
            if is_open:
                return None
            base = current_context()
            who = self._authenticate(md, context)
            ctx = replace(
                who,
                request_id=base.request_id,
                trace_id=base.trace_id,
                method=short,
                deadline=base.deadline,
            )
            structlog.contextvars.bind_contextvars(principal=ctx.principal)
            response_filter = None
            if self._authorize is not None:
                decision = self._authorize(ctx, method, request)
                ctx, response_filter = decision.context, decision.response_filter
            set_context(ctx)
            return response_filter

        def leave(token: Any, start: float, code: grpc.StatusCode) -> None:
            elapsed = time.perf_counter() - start
            if self._metrics is not None:
                self._metrics.observe(short, code, elapsed)
            if not is_open:
                log.info("rpc", code=code.name, duration_ms=round(elapsed * 1000, 3))
            structlog.contextvars.clear_contextvars()
            reset_context(token)

        def fail(exc: BaseException, context: grpc.ServicerContext) -> grpc.StatusCode:
            if isinstance(exc, ModelplaneError):
                err = exc
            else:
                log.error("unhandled error", exc_info=exc)
                err = Internal(
                    "internal error; the server log has the details under the request id"
                )
            status = to_grpc_status(err)
            context.abort_with_status(status)
            return status.code  # pragma: no cover - abort raises

        def status_of(context: grpc.ServicerContext) -> grpc.StatusCode:
            code = context.code() if hasattr(context, "code") else None
            return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.OK

        def unary_out(behavior: Callable[..., Any], streaming_in: bool) -> Callable[..., Any]:
            def wrapper(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
                token, start = None, time.perf_counter()
                code = grpc.StatusCode.OK
                try:
                    token, start, md = enter(context)
                    response_filter = admit(
                        md, None if streaming_in else request_or_iterator, context
                    )
                    result = behavior(request_or_iterator, context)
                    if response_filter is not None and result is not None:
                        result = response_filter(result)
                    code = status_of(context)
                    return result
                except BaseException as exc:
                    code = _code_of(exc, context)
                    if _is_abort(exc, context):
                        raise
                    fail(exc, context)
                finally:
                    if token is not None:
                        leave(token, start, code)
                    else:
                        structlog.contextvars.clear_contextvars()

            return wrapper

        def stream_out(
            behavior: Callable[..., Iterator[Any]], streaming_in: bool
        ) -> Callable[..., Iterator[Any]]:
            def wrapper(request_or_iterator: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                token, start = None, time.perf_counter()
                code = grpc.StatusCode.OK
                try:
                    token, start, md = enter(context)
                    response_filter = admit(
                        md, None if streaming_in else request_or_iterator, context
                    )
                    if response_filter is None:
                        yield from behavior(request_or_iterator, context)
                    else:
                        for message in behavior(request_or_iterator, context):
                            yield response_filter(message)
                    code = status_of(context)
                except GeneratorExit:
                    code = grpc.StatusCode.CANCELLED
                    raise
                except BaseException as exc:
                    code = _code_of(exc, context)
                    if _is_abort(exc, context):
                        raise
                    fail(exc, context)
                finally:
                    if token is not None:
                        leave(token, start, code)
                    else:
                        structlog.contextvars.clear_contextvars()

            return wrapper

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                unary_out(handler.unary_unary, False),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                unary_out(handler.stream_unary, True),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                stream_out(handler.unary_stream, False),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            stream_out(handler.stream_stream, True),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _is_abort(exc: BaseException, context: grpc.ServicerContext) -> bool:
    """True when ``exc`` is gRPC's own abort (the status is already set)."""
    code = getattr(context, "code", lambda: None)()
    return (
        not isinstance(exc, ModelplaneError)
        and isinstance(code, grpc.StatusCode)
        and (code is not grpc.StatusCode.OK)
    )


def _code_of(exc: BaseException, context: grpc.ServicerContext) -> grpc.StatusCode:
    if isinstance(exc, ModelplaneError):
        from modelplane.errors import GRPC_CODES

        return GRPC_CODES[exc.code]
    code = getattr(context, "code", lambda: None)()
    if isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK:
        return code
    return grpc.StatusCode.INTERNAL
