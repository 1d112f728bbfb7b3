"""``modelplane.v1.SidecarAdminService``: the sidecar's own RPCs, next to the OIP service.

``GetDriftReport`` scores the open drift window, or returns the last closed one. With several
worker processes a call reaches one worker, and the report covers that worker's traffic
(``worker_pid`` names it; ``gauges_pid`` names the process whose pid labels that worker's
``modelplane_drift_*`` gauges: its observer process under ``--observer-mode process``).
``IngestLabels`` needs a managed sidecar (``--control-plane``), which joins labels with its
recent predictions (see :mod:`sidecar.managed.labels`).
"""

from __future__ import annotations

import os
from concurrent import futures
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from modelplane.errors import (
    FailedPrecondition,
    InvalidArgument,
    ModelplaneError,
    NotFound,
    Unavailable,
    abort,
)
from modelplane.v1 import sidecar_pb2 as pb
from modelplane.v1 import sidecar_pb2_grpc as pb_grpc
from sidecar.drift import DriftReport
from sidecar.model import ModelSlot
from sidecar.servicer import parsing

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SidecarAdminService"].full_name

_KINDS = {"numeric": pb.FEATURE_KIND_NUMERIC, "categorical": pb.FEATURE_KIND_CATEGORICAL}
_OPTIONAL = (
    "missing_share",
    "out_of_range_share",
    "psi",
    "ks_statistic",
    "ks_pvalue",
    "chi2_statistic",
    "chi2_pvalue",
    "unseen_share",
)


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(round(seconds * 1e9))
    return stamp


def report_message(
    report: DriftReport, model: str, version: str, window: int, gauges_pid: int | None = None
) -> pb.DriftReport:
    """The wire form of ``report``; ``gauges_pid`` is the process that sets the drift gauges
    (this one when None)."""
    message = pb.DriftReport(
        model_name=model,
        model_version=version,
        window=window,  # type: ignore[arg-type]
        baseline_digest=report.baseline,
        start_time=_timestamp(report.start),
        row_count=report.rows,
        worker_pid=os.getpid(),
        gauges_pid=os.getpid() if gauges_pid is None else gauges_pid,
    )
    if report.end is not None:
        message.end_time.CopyFrom(_timestamp(report.end))
    if report.drifted_share is not None:
        message.drifted_share = report.drifted_share
    for feat in report.features:
        out = message.features.add(
            name=feat.name,
            kind=_KINDS.get(feat.kind, pb.FEATURE_KIND_UNSPECIFIED),
            count=feat.count,
            drifted=feat.drifted,
        )
        for name in _OPTIONAL:
            value = getattr(feat, name)
            if value is not None:
                setattr(out, name, value)
        if feat.js is not None:
            out.js_distance = feat.js
    return message


class AdminServicer(pb_grpc.SidecarAdminServiceServicer):
    """Answers from the drift feed of the model held by ``slot``; ``labels`` (a managed
    sidecar's label ingestor) takes ``IngestLabels``."""

    def __init__(self, slot: ModelSlot, labels: Any = None) -> None:
        self.slot = slot
        self.labels = labels

    def IngestLabels(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Join labels with recent predictions and append them to the label log."""
        try:
            if self.labels is None:
                raise FailedPrecondition(
                    "this sidecar does not join labels: labels are taken by managed sidecars "
                    "(started with --control-plane and --deployment)",
                    reason="LABELS_NOT_CONFIGURED",
                )
            accepted, matched = self.labels.ingest(request.labels)
        except ModelplaneError as err:
            self._abort(context, err)
        return pb.IngestLabelsResponse(accepted=accepted, matched=matched)

    _abort = staticmethod(abort)

    def GetDriftReport(self, request: Any, context: grpc.ServicerContext) -> Any:
        """The drift report of the requested window."""
        try:
            return self._report(request.window)
        except ModelplaneError as err:
            self._abort(context, err)

    def _report(self, window: int) -> pb.DriftReport:
        if window not in (
            pb.DRIFT_WINDOW_UNSPECIFIED,
            pb.DRIFT_WINDOW_CURRENT,
            pb.DRIFT_WINDOW_LAST,
        ):
            raise InvalidArgument(
                f"window {window} is not one of DRIFT_WINDOW_CURRENT, DRIFT_WINDOW_LAST",
                reason="INVALID_WINDOW",
            )
        model = self.slot.current
        if model is None:
            raise Unavailable("the model is still loading; retry shortly", reason="NOT_READY")
        feed = model.drift
        if feed is None:
            raise FailedPrecondition(
                "this sidecar does not monitor drift: start it with --baseline FILE",
                reason="DRIFT_NOT_CONFIGURED",
            )
        if window == pb.DRIFT_WINDOW_LAST:
            last = feed.last()
            if last is None:
                raise NotFound(
                    "no drift window has closed yet; ask for the current window, or wait for "
                    "the window size or duration to pass",
                    reason="NO_CLOSED_WINDOW",
                )
            report = last[1]
        else:
            window = pb.DRIFT_WINDOW_CURRENT
            report = feed.current()[1]
        # A feed in the observer process (RemoteDrift) names that process; one counted here
        # (DriftFeed) names this one.
        gauges_pid = getattr(feed, "gauges_pid", None)
        return report_message(report, model.name, model.version, window, gauges_pid)


def add_admin_to_server(
    servicer: AdminServicer, server: grpc.Server, threads: futures.Executor | None = None
) -> None:
    """Register the admin service on ``server`` (its calls on ``threads`` when given, so that
    label uploads never hold the threads health checks answer on); request bytes that do not
    parse get INVALID_ARGUMENT, as on the inference service."""
    handlers = {
        method.name: grpc.unary_unary_rpc_method_handler(
            parsing(getattr(servicer, method.name), getattr(pb, method.input_type.name)),
            response_serializer=getattr(pb, method.output_type.name).SerializeToString,
        )
        for method in pb.DESCRIPTOR.services_by_name["SidecarAdminService"].methods
    }
    if threads is not None:
        for handler in handlers.values():
            handler.unary_unary.experimental_thread_pool = threads  # type: ignore[union-attr]
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
