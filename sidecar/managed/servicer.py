"""The OIP servicer of a managed sidecar: one model name, several versions, routed.

The deployment's name is the model name. ``ModelInfer`` without ``model_version`` is routed
by the routing key (see :mod:`sidecar.managed.router`); with one, it goes to that version if
loaded (a pin bypasses routing and shadowing). The routing table is read once per request,
so a switch never splits a request between versions; the response's ``model_version`` names
the version that answered. A request without an ``id`` is given one, and answered under it,
when its prediction is recorded under its id: in the label index (``--label-index-rows``
above 0) or the prediction log; otherwise nothing would read it. Champion answers picked for
shadowing are copied to the shadow queue after the answer is encoded, with every output of
the champion (a request that names a subset of outputs is run for all of them and answered
with its subset), so the comparison never depends on what the client asked for.
"""

from __future__ import annotations

import time
from typing import Any, NoReturn

import grpc
import structlog

from modelplane.errors import ModelplaneError, NotFound, Unavailable
from modelplane.oip import grpc_service_pb2 as pb
from sidecar.codec import requested_outputs
from sidecar.managed.router import routing_key
from sidecar.managed.shadow import ShadowJob, ShadowRunner
from sidecar.managed.versions import LoadedVersion, RoutingTable
from sidecar.model import ModelSlot
from sidecar.recording import log_failed
from sidecar.servicer import PLATFORM, InferenceServicer, _ids, new_request_id, queue_deadline

log = structlog.get_logger("modelplane.sidecar.rpc")

_NOT_READY = "the deployment's first desired state is still loading; retry shortly"


class ManagedServicer(InferenceServicer):
    """Serves the versions of the routing table that ``tables()`` returns."""

    def __init__(
        self, slot: ModelSlot, manager: Any, shadow: ShadowRunner, *, logged: bool = False
    ) -> None:
        super().__init__(slot)
        # A shed call was routed to no version: counted in the request metrics and logged,
        # but in no arm's window and not in the prediction log, like a malformed one.
        self.records_sheds = False
        self.manager = manager
        self.shadow = shadow
        loader = manager.loader
        #: Whether predictions are recorded under their request ids: the label index keeps
        #: rows, or the prediction log (``logged``) writes them.
        self.needs_ids = loader.settings.label_index_rows > 0 or logged

    def _table(self) -> RoutingTable:
        table = self.manager.table
        if table is None:
            raise Unavailable(_NOT_READY, reason="NOT_READY")
        return table

    def _version(self, table: RoutingTable, name: str, version: str) -> LoadedVersion:
        if name != table.name:
            raise NotFound(
                f"model {name!r} is not served here; this sidecar serves deployment {table.name!r}",
                reason="MODEL_NOT_FOUND",
            )
        if not version:
            return table.champion
        found = table.by_label.get(version)
        if found is None:
            raise NotFound(
                f"version {version!r} of {name!r} is not loaded here; loaded: "
                f"{', '.join(sorted(table.by_label))}",
                reason="MODEL_VERSION_NOT_FOUND",
            )
        return found

    @staticmethod
    def _leave(version: LoadedVersion) -> None:
        version.leave()
        metrics = version.model.metrics
        if metrics.enabled:
            metrics.in_flight(-1)

    def ServerReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self.ready and self.manager.table is not None)

    def ModelReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Whether the deployment (the version, when named) is ready; a model or version not
        loaded here is not ready (ModelMetadata and ModelInfer answer NOT_FOUND), as in
        the standalone sidecar."""
        table = self.manager.table
        if (
            table is None
            or request.name != table.name
            or (request.version and request.version not in table.by_label)
        ):
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.ready)

    def ModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            table = self._table()
            version = self._version(table, request.name, request.version)
        except ModelplaneError as err:
            self._abort(context, err)
        sig = version.model.signature
        meta = pb.ModelMetadataResponse.TensorMetadata
        labels = (
            [version.label]
            if request.version
            else [
                table.champion.label,
                *sorted(v for v in table.by_label if v != table.champion.label),
            ]
        )
        return pb.ModelMetadataResponse(
            name=table.name,
            versions=labels,
            platform=PLATFORM,
            inputs=[meta(name=t.name, datatype=t.datatype, shape=t.advertised) for t in sig.inputs],
            outputs=[
                meta(name=t.name, datatype=t.datatype, shape=t.advertised) for t in sig.outputs
            ],
        )

    def Malformed(self, err: ModelplaneError, context: grpc.ServicerContext) -> NoReturn:
        """Refuse a ModelInfer call whose bytes are not a request. It was routed to no
        version, so it is counted in the request metrics and logged, but in no arm's window
        (where it would pass for the champion's traffic) and not in the prediction log,
        whose records belong to a version and an arm."""
        unread = pb.ModelInferRequest(id=_ids(context)[0])
        self._reject(self.slot.current, unread, context, err, time.perf_counter(), "", record=False)

    def ModelInfer(self, request: Any, context: grpc.ServicerContext) -> bytes:
        """Answers with the serialized response (the handler has no serializer)."""
        table = self.manager.table
        if table is None:
            self._reject(None, request, context, Unavailable(_NOT_READY, reason="NOT_READY"), 0, "")
        start = time.perf_counter()
        version = table.champion
        model = version.model
        trace = ""
        key: bytes | None = None
        entered = routed = False
        try:
            if self.log_failure is not None:
                raise log_failed(self.log_failure)
            if request.model_name != table.name or request.model_version:
                version = self._version(table, request.model_name, request.model_version)
            else:
                key = routing_key(request)
                version = table.pick(key)
            routed = True
            model = version.model
            if not request.id and self.needs_ids:
                # After routing, which an id-less request takes at random either way.
                request.id = new_request_id()
            version.enter()
            entered = True
            if model.metrics.enabled:
                model.metrics.in_flight(1)
            trace = _ids(context)[1]
            deadline = queue_deadline(request, context) if model.batcher is not None else None
            shadowed = (
                table.shadow is not None
                and version is table.champion
                and not request.model_version
                and table.splitter.shadowed(key)
            )
            asked = None
            if shadowed and request.outputs:
                # The comparison needs every output of the champion, not the client's subset.
                asked = requested_outputs(request, model.signature)
                del request.outputs[:]
            names, arrays = model.infer(request, deadline, context, trace)
            if asked is not None:
                every = dict(zip(names, arrays, strict=True))
                answered = model.encoder.encode(request.id, asked, [every[n] for n in asked])
            else:
                answered = model.encoder.encode(request.id, names, arrays)
        except ModelplaneError as err:
            if entered:
                self._leave(version)
            # Refused before routing (the log failed, an unknown model or version, a bad
            # routing_key): no version answered it, so like a malformed call it is counted in
            # the request metrics (under the champion) and logged, but recorded in no arm's
            # window, where it would pass for the champion's traffic.
            self._reject(model, request, context, err, start, trace, record=routed)
        except Exception as exc:
            if entered:
                self._leave(version)
            self._unhandled(model, request, context, exc, start)
        self._leave(version)
        if model.metrics.enabled:
            model.metrics.request("OK", time.perf_counter() - start)
        if shadowed:
            self.shadow.submit(
                ShadowJob(
                    request,
                    version,
                    table.shadow,
                    dict(zip(names, arrays, strict=True)),
                    trace,
                    time.monotonic(),
                )
            )
        return answered
