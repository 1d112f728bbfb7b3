"""Feeding the Arrow prediction log from the server.

``async`` durability: :class:`LogFeed` is an observer on the hub's thread. It merges the
session batches the hub hands over in one go into as few :class:`PredictionBatch` appends as
their layouts allow (an append costs about as much for one row as for a hundred), so the
response path pays only the hub's enqueue.

``sync`` durability: :class:`SyncLog` appends each session batch from the request thread that
ran it and gives every request the append's ticket; the request is answered only once the
ticket completes, i.e. once its records are written and fsynced (the writer commits every
append of a round with one fsync).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np
import structlog

from sidecar.observers import BatchRecord, RecordRun, RejectedRecord, codes_of
from sidecar.predlog import (
    PredictionBatch,
    PredictionLogError,
    PredictionLogWriter,
    RejectedRequest,
)
from sidecar.predlog.records import FeatureNames

log = structlog.get_logger("modelplane.sidecar.recording")


def _layout_key(record: BatchRecord) -> tuple[Any, ...]:
    def tensors(arrays: dict[str, np.ndarray[Any, Any]]) -> tuple[Any, ...]:
        return tuple((n, a.dtype.str, a.shape[1:]) for n, a in arrays.items())

    return (
        record.model,
        record.version,
        sum(record.row_counts),
        tensors(record.inputs),
        tensors(record.outputs),
    )


def to_prediction_batch(
    records: Sequence[BatchRecord], feature_names: FeatureNames, arm: str = "champion"
) -> PredictionBatch:
    """One append for ``records``, which must share :func:`_layout_key` (one record is fine)."""
    first = records[0]
    if len(records) == 1:
        inputs, outputs = first.inputs, first.outputs
    else:
        inputs = {n: np.concatenate([r.inputs[n] for r in records]) for n in first.inputs}
        outputs = {n: np.concatenate([r.outputs[n] for r in records]) for n in first.outputs}
    request_ids: list[str] = []
    trace_ids: list[str | None] = []
    row_counts: list[int] = []
    latencies: list[float] = []
    arrived: list[float] = []
    codes: list[str] = []
    reasons: list[str | None] = []
    for r in records:
        request_ids += r.request_ids
        trace_ids += [t or None for t in r.trace_ids]
        row_counts += r.row_counts
        latencies += r.latencies_s
        arrived += [r.finished_at - lat for lat in r.latencies_s]
        codes += codes_of(r)
        reasons += [None if s == "OK" else s for s in r.status]
    all_ok = all(c == "OK" for c in codes)
    return PredictionBatch(
        model_name=first.model,
        model_version=first.version,
        request_ids=request_ids,
        row_counts=row_counts,
        inputs=inputs,
        outputs=outputs,
        latencies_s=np.asarray(latencies, np.float64),
        trace_ids=trace_ids,
        arm=arm,
        timestamps=np.asarray(arrived, np.float64),
        batch_size=sum(first.row_counts),
        status_codes="OK" if all_ok else codes,
        status_reasons=None if all_ok else reasons,
        feature_names=feature_names,
    )


def run_to_prediction_batch(
    run: RecordRun, feature_names: FeatureNames, arm: str = "champion"
) -> PredictionBatch:
    """One append for a gathered run of session batches."""
    calls = run.call_rows
    return PredictionBatch(
        model_name=run.model,
        model_version=run.version,
        request_ids=run.request_ids,
        row_counts=run.row_counts,
        inputs=run.inputs,
        outputs=run.outputs,
        latencies_s=np.asarray(run.latencies_s, np.float64),
        trace_ids=[t or None for t in run.trace_ids],
        arm=arm,
        timestamps=run.arrived(),
        batch_size=calls[0] if calls.count(calls[0]) == len(calls) else calls,
        status_codes="OK" if not run.failed else run.codes,
        status_reasons=None if not run.failed else [None if s == "OK" else s for s in run.status],
        feature_names=feature_names,
    )


def to_rejected_request(
    record: RejectedRecord, feature_names: FeatureNames, arm: str = "champion"
) -> RejectedRequest:
    """The log entry of one rejected request."""
    return RejectedRequest(
        request_id=record.request_id,
        status_code=record.code,
        reason=record.reason,
        message=record.message,
        model_name=record.model,
        model_version=record.version,
        arm=arm,
        trace_id=record.trace_id or None,
        latency_s=record.latency_s,
        timestamp=record.at if record.latency_s is None else record.at - record.latency_s,
        feature_names=feature_names,
    )


def group_records(records: Sequence[BatchRecord]) -> list[list[BatchRecord]]:
    """``records`` split into runs that can be merged into one append, in order."""
    groups: list[list[BatchRecord]] = []
    last: tuple[Any, ...] | None = None
    for record in records:
        key = _layout_key(record)
        if groups and key == last:
            groups[-1].append(record)
        else:
            groups.append([record])
            last = key
    return groups


class LogFeed:
    """Hub observer writing every record to the prediction log (``async`` durability)."""

    def __init__(
        self, writer: PredictionLogWriter, feature_names: FeatureNames, arm: str = "champion"
    ) -> None:
        self.writer = writer
        self.feature_names = feature_names
        self.arm = arm
        #: Records the writer refused after it failed (it logged why, once).
        self.refused = 0

    def on_records(self, records: Sequence[BatchRecord | RejectedRecord]) -> None:
        """Append everything the hub handed over, merged where layouts agree."""
        batches = [r for r in records if isinstance(r, BatchRecord)]
        for group in group_records(batches):
            try:
                self.writer.append(to_prediction_batch(group, self.feature_names, self.arm))
            except PredictionLogError:
                self.refused += sum(len(r.request_ids) for r in group)
        for record in records:
            if isinstance(record, RejectedRecord):
                try:
                    self.writer.append_rejected(
                        to_rejected_request(record, self.feature_names, self.arm)
                    )
                except PredictionLogError:
                    self.refused += 1

    def on_runs(self, runs: Sequence[RecordRun | RejectedRecord]) -> None:
        """Append what the hub gathered: one append per run."""
        for part in runs:
            try:
                if isinstance(part, RecordRun):
                    self.writer.append(run_to_prediction_batch(part, self.feature_names, self.arm))
                else:
                    self.writer.append_rejected(
                        to_rejected_request(part, self.feature_names, self.arm)
                    )
            except PredictionLogError:
                self.refused += len(part.request_ids) if isinstance(part, RecordRun) else 1

    def on_batch(self, record: BatchRecord) -> None:
        """Append one session batch."""
        self.on_records([record])

    def on_rejected(self, record: RejectedRecord) -> None:
        """Append one rejected request."""
        self.on_records([record])


class SyncLog:
    """Appends from the request path and hands out the tickets to wait on (``sync``)."""

    def __init__(
        self, writer: PredictionLogWriter, feature_names: FeatureNames, arm: str = "champion"
    ) -> None:
        self.writer = writer
        self.feature_names = feature_names
        self.arm = arm

    def append(self, record: BatchRecord) -> Future[None]:
        """Queue the records of one session batch; the returned ticket fails when the log
        cannot take them."""
        try:
            return self.writer.append(to_prediction_batch([record], self.feature_names, self.arm))
        except PredictionLogError as exc:
            failed: Future[None] = Future()
            failed.set_exception(exc)
            return failed

    def append_rejected(self, record: RejectedRecord) -> Future[None]:
        """Queue the record of one rejected request."""
        try:
            return self.writer.append_rejected(
                to_rejected_request(record, self.feature_names, self.arm)
            )
        except PredictionLogError as exc:
            failed: Future[None] = Future()
            failed.set_exception(exc)
            return failed
