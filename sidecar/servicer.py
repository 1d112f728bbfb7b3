"""The ``inference.GRPCInferenceService`` servicer: thin conversions around ServingModel.

ModelInfer deliberately skips the shared request interceptor: on this path every microsecond
counts, so errors are mapped here directly and only failures are logged (with request id and
W3C trace id). A request sent without an ``id`` is given one when its prediction is recorded
under it - by the prediction log, or an observer that reads ids (not drift, which never
does): :func:`new_request_id`; it is answered under that id.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn, Protocol

import grpc
import structlog
from google.protobuf.message import DecodeError

import modelplane
from modelplane.errors import (
    Code,
    Internal,
    InvalidArgument,
    ModelplaneError,
    ResourceExhausted,
    Unavailable,
    Unimplemented,
    abort,
    to_grpc_status,
)
from modelplane.oip import grpc_service_pb2 as pb
from modelplane.oip import grpc_service_pb2_grpc as pb_grpc
from modelplane.server.context import trace_id_from
from sidecar.model import ModelExecutionFailed, ModelSlot, ServingModel
from sidecar.observers import RejectedRecord
from sidecar.recording import log_failed, rejected_inputs, tabular_column_names

log = structlog.get_logger("modelplane.sidecar.rpc")

SERVICE_NAME = "inference.GRPCInferenceService"
PLATFORM = "onnxruntime_onnx"
#: gRPC reports "no deadline" as an enormous time remaining.
_NO_DEADLINE = 10 * 365 * 86400.0


def _ids(context: grpc.ServicerContext) -> tuple[str, str]:
    request_id, trace = "", ""
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str):
            request_id = value[:128]
        elif key == "traceparent" and isinstance(value, str):
            trace = trace_id_from(value)
    return request_id, trace


def parsing(
    method: Callable[[Any, grpc.ServicerContext], Any],
    message: Any,
    refuse: Callable[[ModelplaneError, grpc.ServicerContext], None] | None = None,
) -> Callable[[bytes, grpc.ServicerContext], Any]:
    """Wrap ``method`` to parse its request itself, so that bytes that are not a valid
    ``message`` get INVALID_ARGUMENT rather than the transport's INTERNAL (through
    ``refuse`` when given, which answers it like the method's other refusals)."""
    parse = message.FromString

    def handler(data: bytes, context: grpc.ServicerContext) -> Any:
        try:
            request = parse(data)
        except DecodeError:
            err = InvalidArgument(
                f"the request is not a valid {message.DESCRIPTOR.full_name} message",
                reason="MALFORMED_REQUEST",
            )
            if refuse is not None:
                refuse(err, context)
            context.abort_with_status(to_grpc_status(err))
        return method(request, context)

    return handler


def queue_deadline(request: Any, context: grpc.ServicerContext) -> float | None:
    """When a batched request must have started to run (``time.monotonic()``; None: never
    expires): the call's gRPC deadline, or sooner the request's ``timeout`` parameter, in
    microseconds from when a request thread takes the call up (what ``tritonclient``'s
    ``infer(timeout=...)`` sends; 0, unset or ten years and more: none). A request still queued
    then is answered DEADLINE_EXCEEDED, unrun."""
    now = time.monotonic()
    deadline = None
    remaining = context.time_remaining()
    if remaining is not None and remaining < _NO_DEADLINE:
        deadline = now + remaining
    if "timeout" in request.parameters:
        param = request.parameters["timeout"]
        seconds = (param.int64_param or param.uint64_param) / 1e6
        # Huge values (INT64_MAX and the like) mean "none", as a far gRPC deadline does.
        if 0 < seconds < _NO_DEADLINE:
            own = now + seconds
            deadline = own if deadline is None else min(deadline, own)
    return deadline


#: Random bits for request ids, seeded from the OS once per process. ``uuid.uuid4()`` reads
#: ``os.urandom`` on every call, and that system call lets go of the GIL: with many request
#: threads each one then waits to get it back, which cost a logged sidecar about a fifth of
#: its throughput. Request ids need to be unique, not secret.
_ID_BITS = random.Random()
_ID_CLEAR = ~((0xF << 76) | (0x3 << 62))
_ID_SET = (0x4 << 76) | (0x2 << 62)  # version 4, RFC 4122 variant


def new_request_id() -> str:
    """The id given to a request sent without one when something records it under its id (the
    prediction log, an observer that reads ids, a managed sidecar's label index): the records,
    the label index and the answer's ``id`` all carry it, so that labels can name the
    prediction. A random (version 4) UUID in its canonical text."""
    h = f"{(_ID_BITS.getrandbits(128) & _ID_CLEAR) | _ID_SET:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Admission(Protocol):
    """Where ModelInfer calls run, and whether one more may wait there (see
    :func:`add_to_server`)."""

    def admit(self) -> bool:
        """Whether a ModelInfer call that just arrived may wait for a request thread; asked
        on gRPC's polling thread, which every call goes through, so it must be quick."""
        ...

    def route(self, behavior: Any, shed: bool) -> None:
        """Make gRPC run ``behavior`` on a thread pool of its own (``experimental_thread_pool``):
        ModelInfer's on the request threads, or (``shed``) the one that refuses calls."""
        ...


class _Methods(grpc.GenericRpcHandler):
    """The OIP methods by name; ModelInfer only while ``admit`` lets it in, else ``shed``."""

    def __init__(
        self,
        handlers: dict[str, grpc.RpcMethodHandler],
        admit: Callable[[], bool],
        shed: grpc.RpcMethodHandler,
    ) -> None:
        self._handlers = handlers
        self._infer = handlers[f"/{SERVICE_NAME}/ModelInfer"]
        self._admit = admit
        self._shed = shed

    def service(self, handler_call_details: Any) -> grpc.RpcMethodHandler | None:
        handler = self._handlers.get(handler_call_details.method)
        if handler is self._infer and not self._admit():
            return self._shed
        return handler


#: The methods of ``inference.GRPCInferenceService`` this sidecar serves.
OFFERED = (
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
)

#: What to use instead of the Triton methods of the service that the sidecar does not offer.
INSTEAD = {
    "ModelStreamInfer": "send each request as a ModelInfer call (calls may run concurrently)",
    "ModelConfig": "use ModelMetadata for the model's inputs and outputs",
    "ModelStatistics": "read the sidecar's Prometheus metrics (--metrics-listen)",
    "RepositoryIndex": "a sidecar serves one model: ModelMetadata names it and its versions",
    "RepositoryModelLoad": "a sidecar serves the model it was started with (--model), or the "
    "versions its deployment names (--control-plane)",
    "RepositoryModelUnload": "a sidecar serves the model it was started with (--model), or the "
    "versions its deployment names (--control-plane)",
    "TraceSetting": "send a W3C traceparent header with each ModelInfer call",
    "LogSettings": "set --log-level when starting the sidecar",
}
_NO_SHARED_MEMORY = "send the tensors in the ModelInfer request (raw_input_contents)"


def not_offered(method: str) -> Unimplemented:
    """The refusal of ``method`` (a full path such as ``/inference.GRPCInferenceService/X``),
    a method of the service that the sidecar does not offer: what to use instead."""
    name = method.rpartition("/")[2]
    hint = INSTEAD.get(name) or (_NO_SHARED_MEMORY if "SharedMemory" in name else "")
    return Unimplemented(
        f"{name} is not offered by the modelplane sidecar, which serves the Open Inference "
        f"Protocol's {', '.join(OFFERED)}{': ' + hint if hint else ''}",
        reason="METHOD_NOT_OFFERED",
        metadata={"method": name},
    )


class _NotOffered(grpc.GenericRpcHandler):
    """Every other method of the service, answered UNIMPLEMENTED (reason ``METHOD_NOT_OFFERED``)
    with what to use instead, rather than gRPC's bare "Method not found!".

    Registered after the handler of the offered methods, so gRPC asks it only about calls that
    handler did not take: ModelInfer is dispatched as before."""

    _PREFIX = f"/{SERVICE_NAME}/"

    def service(self, handler_call_details: Any) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if not method.startswith(self._PREFIX):
            return None
        refusal = to_grpc_status(not_offered(method))

        # Streaming both ways, so that a call of any kind is refused without reading a message.
        def refuse(requests: Any, context: grpc.ServicerContext) -> NoReturn:
            context.abort_with_status(refusal)
            raise AssertionError("abort_with_status returned")

        return grpc.stream_stream_rpc_method_handler(refuse)


def add_to_server(
    servicer: InferenceServicer, server: grpc.Server, admission: Admission | None = None
) -> None:
    """Register ``servicer``'s six RPCs on ``server``; the service's other methods answer
    UNIMPLEMENTED (reason ``METHOD_NOT_OFFERED``) saying what to use instead.

    With ``admission``, ModelInfer calls run on its threads rather than the server's, so that
    health checks and metadata never wait behind them, and a call it does not admit is
    refused at once (RESOURCE_EXHAUSTED, reason ``QUEUE_FULL``) without being read: an
    overloaded sidecar sheds load instead of queueing calls without bound.
    """
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            parsing(
                getattr(servicer, name),
                getattr(pb, f"{name}Request"),
                servicer.Malformed if name == "ModelInfer" else None,
            ),
            # ModelInfer returns its response already serialized.
            response_serializer=(
                None if name == "ModelInfer" else getattr(pb, f"{name}Response").SerializeToString
            ),
        )
        for name in OFFERED
    }
    if admission is None:
        generic = grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)
        server.add_generic_rpc_handlers((generic, _NotOffered()))
        return

    # Streaming on the server's side, so that a shed call is answered without reading its
    # request; a unary call is one message on the wire either way.
    def refuse(requests: Any, context: grpc.ServicerContext) -> NoReturn:
        servicer.Shed(requests, context)

    shed = grpc.stream_unary_rpc_method_handler(refuse)
    admission.route(handlers["ModelInfer"].unary_unary, shed=False)
    admission.route(shed.stream_unary, shed=True)
    by_path = {f"/{SERVICE_NAME}/{name}": handler for name, handler in handlers.items()}
    server.add_generic_rpc_handlers((_Methods(by_path, admission.admit, shed), _NotOffered()))


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Serves the model held by ``slot``; ``ready`` is flipped by the server lifecycle."""

    def __init__(self, slot: ModelSlot) -> None:
        self.slot = slot
        self.ready = False
        #: Why predictions can no longer be logged (set by the server once the prediction log
        #: or the observer process writing it failed): every ModelInfer is then refused
        #: (:func:`sidecar.recording.log_failed`) rather than answered without a record.
        self.log_failure: BaseException | None = None
        #: Whether a call shed at admission is recorded (in the prediction log): not by a
        #: managed sidecar, where it was routed to no version and would pass for traffic of
        #: the champion's arm in the window reports.
        self.records_sheds = True
        self._shed_lock = threading.Lock()
        self._shed = 0
        self._shed_reported = 0.0

    def _model(self) -> ServingModel:
        model = self.slot.current
        if model is None:
            raise Unavailable("the model is still loading; retry shortly", reason="NOT_READY")
        return model

    _abort = staticmethod(abort)

    def ServerLive(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self.ready and self.slot.current is not None)

    def ModelReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Whether the model (the version, when named) is ready. A model or version not served
        here is not ready, as Triton answers (ModelMetadata and ModelInfer answer NOT_FOUND):
        tritonclient's ``is_model_ready`` then returns False, and a client polling for a
        version yet to come keeps polling."""
        model = self.slot.current
        if (
            model is None
            or request.name != model.name
            or (request.version and request.version != model.version)
        ):
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.ready)

    def ServerMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ServerMetadataResponse(
            name="modelplane-sidecar", version=modelplane.__version__, extensions=[]
        )

    def ModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            model = self._model()
            model.check_target(request.name, request.version)
        except ModelplaneError as err:
            self._abort(context, err)
        sig = model.signature
        meta = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=model.name,
            versions=[model.version],
            platform=PLATFORM,
            inputs=[meta(name=t.name, datatype=t.datatype, shape=t.advertised) for t in sig.inputs],
            outputs=[
                meta(name=t.name, datatype=t.datatype, shape=t.advertised) for t in sig.outputs
            ],
        )

    def ModelInfer(self, request: Any, context: grpc.ServicerContext) -> bytes:
        """Answers with the serialized response (the handler has no serializer)."""
        model = self.slot.current
        if model is None:
            self._reject(
                None,
                request,
                context,
                Unavailable("the model is still loading; retry shortly", reason="NOT_READY"),
                0.0,
                "",
            )
        start = time.perf_counter()
        metrics = model.metrics
        timed = metrics.enabled
        if timed:
            metrics.in_flight(1)
        trace = ""
        try:
            if self.log_failure is not None:
                raise log_failed(self.log_failure)
            if not request.id and model.needs_ids:
                request.id = new_request_id()
            if request.model_name != model.name or (
                request.model_version and request.model_version != model.version
            ):
                model.check_target(request.model_name, request.model_version)
            if model.observed:
                trace = _ids(context)[1]
            deadline = queue_deadline(request, context) if model.batcher is not None else None
            names, arrays = model.infer(request, deadline, context, trace)
            response = model.encoder.encode(request.id, names, arrays)
        except ModelplaneError as err:
            self._reject(model, request, context, err, start, trace)
        except Exception as exc:
            self._unhandled(model, request, context, exc, start)
        finally:
            if timed:
                metrics.in_flight(-1)
        if timed:
            metrics.request("OK", time.perf_counter() - start)
        return response

    def Malformed(self, err: ModelplaneError, context: grpc.ServicerContext) -> NoReturn:
        """Refuse a ModelInfer call whose bytes are not a request: counted in the request
        metrics, logged and recorded in the prediction log like any other refusal, under the
        call's ``x-request-id`` when it has one."""
        unread = pb.ModelInferRequest(id=_ids(context)[0])
        self._reject(self.slot.current, unread, context, err, time.perf_counter(), "")

    def Shed(self, requests: Any, context: grpc.ServicerContext) -> NoReturn:
        """Refuse a ModelInfer call that the admission turned away, unread: counted in the
        request metrics as RESOURCE_EXHAUSTED, recorded in the prediction log as one record
        without features (under the call's ``x-request-id`` when it has one), logged at most
        once a second."""
        start = time.perf_counter()
        err = ResourceExhausted(
            "too many requests are waiting to be served; retry with backoff", reason="QUEUE_FULL"
        )
        model = self.slot.current
        if model is not None:
            model.metrics.request(err.code.value, 0.0)
            if self.records_sheds and model.observed and self.log_failure is None:
                try:
                    request_id, trace = _ids(context)
                    self._record_rejection(
                        model, pb.ModelInferRequest(id=request_id), trace, err, start, wait=False
                    )
                except Exception:
                    # The refusal is answered all the same.
                    log.exception("could not record a shed call")
        now = time.monotonic()
        with self._shed_lock:
            self._shed += 1
            report = now - self._shed_reported >= 1.0
            if report:
                count, self._shed, self._shed_reported = self._shed, 0, now
        if report:
            log.warning(
                "ModelInfer calls shed: too many wait for a request thread",
                calls=count,
                hint="add replicas or workers, or raise --max-queue-rows",
            )
        self._abort(context, err)

    def _unhandled(
        self,
        model: ServingModel | None,
        request: Any,
        context: grpc.ServicerContext,
        exc: Exception,
        start: float,
    ) -> NoReturn:
        """Log an unexpected failure with the request id; answer INTERNAL without details."""
        request_id, trace = _ids(context)
        log.error(
            "unhandled error in ModelInfer",
            request_id=request_id or request.id,
            trace_id=trace,
            exc_info=exc,
        )
        internal = Internal("internal error; the server log has the details under the request id")
        self._reject(model, request, context, internal, start, trace)

    def _reject(
        self,
        model: ServingModel | None,
        request: Any,
        context: grpc.ServicerContext,
        err: ModelplaneError,
        start: float,
        trace: str,
        *,
        record: bool = True,
    ) -> NoReturn:
        """Count, log and (``record``, when the model is observed) record a refusal, then
        abort the call with it."""
        if model is not None:
            model.metrics.request(err.code.value, time.perf_counter() - start)
            request_id, trace = _ids(context)
            log.info(
                "request refused",
                code=err.code.value,
                reason=err.reason,
                request_id=request_id or request.id,
                trace_id=trace,
                message=err.message,
            )
            recorded = isinstance(err, ModelExecutionFailed) and err.published
            if record and model.observed and not recorded:
                self._record_rejection(model, request, trace, err, start)
        self._abort(context, err)

    def _record_rejection(
        self,
        model: ServingModel,
        request: Any,
        trace: str,
        err: ModelplaneError,
        start: float,
        *,
        wait: bool = True,
    ) -> None:
        """Record a refusal; with ``sync`` durability, once it is on disk. Unless to ``wait``
        (a shed call, answered at once: the sidecar is overloaded), nothing waits: a record
        that finds the log's queue or the observers' buffer full is dropped and counted."""
        # Its inputs as far as they decode, when something records requests (the log) and
        # still can, for a request refused for what it holds (INVALID_ARGUMENT): one shed for
        # load (a full queue, a deadline, the caller gone) is one record without features, so
        # that an overloaded sidecar does not also write every row it could not serve.
        inputs = (
            rejected_inputs(request, model.name, model.version, model.signature, model.limits)
            if model.needs_ids and self.log_failure is None and err.code is Code.INVALID_ARGUMENT
            else {}
        )
        record = RejectedRecord(
            model=model.name,
            version=model.version,
            request_id=request.id,
            trace_id=trace,
            code=err.code.value,
            reason=err.reason,
            message=err.message,
            latency_s=time.perf_counter() - start,
            inputs=inputs,
            column_names=tabular_column_names(model.signature, inputs) if inputs else None,
        )
        if model.sync_log is not None:
            # sync durability covers refusals too: answered once the record is on disk.
            with contextlib.suppress(Exception):
                written = model.sync_log.append_rejected(record, wait=wait)
                if wait:
                    written.result()
        model.observers.publish(record, wait=wait)
