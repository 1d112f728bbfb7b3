"""Feeding the Arrow prediction log from the server.

``async`` durability: :class:`LogFeed` is an observer on the hub's thread (or in the observer
process). It makes one :class:`PredictionBatch` append of each run the hub gathered
(:func:`sidecar.observers.gather`: an append costs about as much for one row as for a
hundred), so the response path pays only the hub's enqueue.

``sync`` durability: :class:`SyncLog` appends each session batch from the request thread that
ran it and gives every request the append's ticket; the request is answered only once the
ticket completes, i.e. once its records are written and fsynced (the writer commits every
append of a round with one fsync).

A refused request is recorded with its inputs as far as they decode against the model's
signature (:func:`rejected_inputs`: those whose shape fits the version's columns).

Records the log cannot take at all (their columns clash: :class:`sidecar.predlog.layout.
ColumnClash`, which the sidecar refuses at start-up already) are left out and counted in
``modelplane_prediction_log_errors_total`` with a log line: in ``async`` durability the feed
goes on with the next run, in ``sync`` durability the requests of that batch fail.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np
import structlog

from modelplane.errors import (
    FailedPrecondition,
    InvalidArgument,
    ModelplaneError,
    Unavailable,
)
from sidecar.codec import Limits, decode
from sidecar.observers import BatchRecord, RecordRun, RejectedRecord, gather, run_of
from sidecar.predlog import (
    PredictionBatch,
    PredictionLogError,
    PredictionLogWriter,
    RejectedRequest,
)
from sidecar.predlog.layout import ColumnClash, TensorSpec, excludable_names, plan_layout
from sidecar.predlog.records import FeatureNames
from sidecar.signature import Signature

log = structlog.get_logger("modelplane.sidecar.recording")

#: Distinct errors a log path reports with a log line (later ones are only counted).
_REPORTED_ERRORS = 32


def check_log_columns(
    signature: Signature, feature_names: FeatureNames, exclude: Iterable[str]
) -> None:
    """Refuse, at start-up, a prediction log that cannot serve this model: an
    ``--log-exclude-features`` name that is no input or feature column of it
    (``InvalidArgument``, reason ``UNKNOWN_EXCLUDED_FEATURE``: a misspelt name would leave the
    feature it meant in the log), or columns that would clash (``FailedPrecondition``, reason
    ``LOG_COLUMN_CLASH``, naming the column)."""

    def specs(tensors: Sequence[Any], per_row: bool) -> list[TensorSpec]:
        # Column names do not depend on dims that vary; outputs that are not one row per
        # input row are logged whole on each row (sidecar.predlog.layout).
        out = []
        for t in tensors:
            shape = t.shape[1:] if per_row or t.batch_dynamic else t.shape
            out.append((t.name, tuple(max(d, 1) for d in shape), t.dtype.str))
        return out

    excluded = frozenset(exclude)
    # Records carry the inputs that are one row per request row (sidecar.model), and name
    # their columns among those alone; any input may be named to exclude, logged or not.
    inputs = specs([t for t in signature.inputs if t.per_row], True)
    known = [t.name for t in signature.inputs if not t.per_row]
    _check_excluded(signature, excluded, excludable_names(inputs, feature_names) + known)
    try:
        plan_layout(inputs, specs(signature.outputs, False), feature_names, excluded)
    except ColumnClash as exc:
        raise FailedPrecondition(
            f"the prediction log cannot name its columns for this model: {exc}",
            reason="LOG_COLUMN_CLASH",
        ) from None


#: Names listed in the error about an unknown excluded name, at most.
_LISTED_NAMES = 20


def _check_excluded(signature: Signature, excluded: frozenset[str], known: list[str]) -> None:
    """Raise ``InvalidArgument`` naming every excluded name that is no input or feature column
    (``known``), with the names it could be."""
    # A [-1, -1] input has as many x_j (or <input>_j) columns as a request's rows are wide.
    tabular = [t for t in signature.inputs if t.per_row and t.rank == 2]
    open_widths = ["x_" if len(tabular) == 1 else f"{t.name}_" for t in tabular if t.shape[1] < 0]
    unknown = [
        name
        for name in sorted(excluded)
        if name not in known
        and not any(
            name.startswith(p) and name[len(p) :].isascii() and name[len(p) :].isdigit()
            for p in open_widths
        )
    ]
    if not unknown:
        return
    guesses = {g for name in unknown for g in difflib.get_close_matches(name, known, n=3)}
    listed = ", ".join(known[:_LISTED_NAMES])
    if len(known) > _LISTED_NAMES:
        listed += f", ... ({len(known) - _LISTED_NAMES} more)"
    meant = f" (did you mean {', '.join(map(repr, sorted(guesses)))}?)" if guesses else ""
    raise InvalidArgument(
        f"--log-exclude-features: this model has no input or feature column named "
        f"{' or '.join(map(repr, unknown))}{meant}; it has: {listed}",
        reason="UNKNOWN_EXCLUDED_FEATURE",
    )


def log_failed(error: BaseException) -> Unavailable:
    """The refusal of a request once the prediction log cannot take records (its disk
    failed, or the observer process that writes it ended): UNAVAILABLE with reason
    ``PREDICTION_LOG_FAILED``, as ``sync`` durability answers a request whose record failed
    to write. Answering would leave the prediction out of the log, silently."""
    return Unavailable(
        "the prediction log failed, so predictions are refused rather than answered "
        f"without a record: {error}; this sidecar stopped serving (see its log)",
        reason="PREDICTION_LOG_FAILED",
    )


class LogErrors:
    """Counts records a log path could not take and reports the first of each kind."""

    def __init__(self, writer: PredictionLogWriter) -> None:
        self._writer = writer
        self._seen: set[str] = set()

    def report(self, exc: Exception, requests: int) -> None:
        """Count one log error (the records of ``requests`` requests, left out because of
        ``exc``) and log the first error of each kind."""
        self._writer.metrics.errors.inc()
        what = f"{type(exc).__name__}: {exc}"
        if what in self._seen or len(self._seen) >= _REPORTED_ERRORS:
            return
        self._seen.add(what)
        log.error(
            "the prediction log cannot take these records; they are left out",
            requests=requests,
            error=what,
            hint="later records failing the same way are only counted "
            "(modelplane_prediction_log_errors_total)",
        )


def output_shapes(signature: Signature) -> dict[str, tuple[int, ...]]:
    """Each output's declared shape as a log row holds it (-1 where a dim varies): after the
    row dim, or whole for an output that is not one row per input row (the sidecar repeats
    it on each row). The log types each output's column by it (``PredictionBatch.
    output_shapes``), so that a width that varies never turns a list column into a plain one."""
    return {t.name: t.shape[1:] if t.batch_dynamic else t.shape for t in signature.outputs}


def run_to_prediction_batch(
    run: RecordRun,
    feature_names: FeatureNames,
    arm: str = "champion",
    shapes: dict[str, tuple[int, ...]] | None = None,
) -> PredictionBatch:
    """One append for a gathered run of session batches (``shapes``: the model's
    :func:`output_shapes`)."""
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
        output_shapes=shapes,
    )


def rejected_inputs(
    request: Any, name: str, version: str, signature: Signature, limits: Limits
) -> dict[str, np.ndarray[Any, Any]]:
    """The inputs of a refused ``request`` as far as they could be decoded, for its log
    record (features the log excludes are left out by the log, as for any record).

    "As far as they could be decoded" means: each input that decodes on its own against the
    model's signature, within the request limits, as an accepted request's would. So an
    input is logged only when its shape fits the columns the model's records have (every
    fixed dim as declared: a ``[2, 5]`` tensor for a ``[-1, 4]`` input is not split into
    five columns that the version's feature names, and so ``--log-exclude-features``, do not
    fit), its datatype is the model's, and its contents are whole; others are left null.
    Non-finite values are kept (``--reject-non-finite`` refusals log what was refused).
    Nothing is decoded for a request addressed to another model or version, and inputs
    that are not one row per request row are left out, as they are of every record. When
    the decoded inputs disagree on the rows, the log keeps one record with null features.
    """
    if (
        not request.inputs
        or request.model_name != name
        or (request.model_version and request.model_version != version)
    ):
        return {}
    lenient = dataclasses.replace(limits, reject_non_finite=False)
    try:
        try:
            arrays = decode(request, signature, lenient).arrays
        except ModelplaneError:
            arrays = _each_input(request, signature, lenient)
    except Exception:  # the refusal is answered and recorded all the same
        log.debug("inputs of a refused request not decoded", exc_info=True)
        return {}
    return {n: a for n, a in arrays.items() if _per_row(signature, n)}


def tabular_column_names(
    signature: Signature, arrays: Mapping[str, np.ndarray[Any, Any]]
) -> dict[str, list[str]] | None:
    """For a model whose records carry several ``[-1, F]`` inputs: the columns of each of
    those among ``arrays`` (a refused request's decoded inputs), ``<input>_0..`` as its
    records name them, as wide as it decoded (an open width too). A refused request's record
    may carry only some of those inputs, which alone would be named ``x_j``, where the
    version's ``<input>_j`` exclusions would not find them; with these names they are named as
    in every other record. None for other models (their names do not depend on which inputs
    a record carries)."""
    tabular = {t.name for t in signature.inputs if t.per_row and t.rank == 2}
    if len(tabular) < 2:
        return None
    return {
        name: [f"{name}_{j}" for j in range(array.shape[1])]
        for name, array in arrays.items()
        if name in tabular and array.ndim == 2
    }


def _per_row(signature: Signature, name: str) -> bool:
    spec = signature.input(name)
    return spec is not None and spec.per_row


def _each_input(
    request: Any, signature: Signature, limits: Limits
) -> dict[str, np.ndarray[Any, Any]]:
    """The inputs of ``request`` that decode one by one (the request as a whole did not)."""
    raws = request.raw_input_contents
    if raws and len(raws) != len(request.inputs):
        return {}  # which bytes belong to which input is unknown
    names = [t.name for t in request.inputs]
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    # The request's BYTES elements stay within the limit over all the inputs decoded here,
    # as over a request's: an input past what is left is not decoded.
    strings_left = limits.max_bytes_elements
    for i, tensor in enumerate(request.inputs):
        spec = signature.input(tensor.name)
        if spec is None or not spec.per_row or names.count(tensor.name) > 1:
            continue
        alone = type(request)(id=request.id, model_name=request.model_name)
        copy = alone.inputs.add()
        copy.CopyFrom(tensor)
        copy.ClearField("parameters")
        if raws:
            alone.raw_input_contents.append(raws[i])
        budget = dataclasses.replace(limits, max_bytes_elements=strings_left)
        try:
            decoded = decode(alone, Signature((spec,), signature.outputs), budget).arrays
        except ModelplaneError:
            continue
        if spec.datatype == "BYTES":
            strings_left -= decoded[tensor.name].size
        arrays.update(decoded)
    return arrays


def to_rejected_request(
    record: RejectedRecord, feature_names: FeatureNames, arm: str = "champion"
) -> RejectedRequest:
    """The log entry of one rejected request, with its inputs as far as decoded."""
    return RejectedRequest(
        request_id=record.request_id,
        status_code=record.code,
        reason=record.reason,
        message=record.message,
        model_name=record.model,
        model_version=record.version,
        arm=arm,
        trace_id=record.trace_id or None,
        inputs=record.inputs,
        latency_s=record.latency_s,
        timestamp=record.at if record.latency_s is None else record.at - record.latency_s,
        feature_names=feature_names if record.column_names is None else record.column_names,
    )


class LogFeed:
    """Hub observer writing every record to the prediction log (``async`` durability)."""

    #: Every record is logged under its request id (labels join on it).
    needs_ids = True

    def __init__(
        self,
        writer: PredictionLogWriter,
        feature_names: FeatureNames,
        arm: str = "champion",
        shapes: dict[str, tuple[int, ...]] | None = None,
    ) -> None:
        self.writer = writer
        self.feature_names = feature_names
        self.arm = arm
        #: The model's :func:`output_shapes`.
        self.shapes = shapes
        #: Requests whose records the writer refused after it failed (it logged why, once;
        #: their rows are in modelplane_prediction_log_dropped_records_total), or that it
        #: could not take at all (counted as log errors).
        self.refused = 0
        self._errors = LogErrors(writer)

    def on_records(self, records: Sequence[BatchRecord | RejectedRecord]) -> None:
        """Append a list of records, gathered into runs first."""
        self.on_runs(gather(records))

    def on_runs(self, runs: Sequence[RecordRun | RejectedRecord]) -> None:
        """Append what the hub gathered: one append per run."""
        for part in runs:
            try:
                if isinstance(part, RecordRun):
                    self.writer.append(
                        run_to_prediction_batch(part, self.feature_names, self.arm, self.shapes)
                    )
                else:
                    self.writer.append_rejected(
                        to_rejected_request(part, self.feature_names, self.arm)
                    )
            except PredictionLogError:
                self.refused += len(part.request_ids) if isinstance(part, RecordRun) else 1
            except Exception as exc:
                # One run the log cannot take must not cost the runs after it.
                requests = len(part.request_ids) if isinstance(part, RecordRun) else 1
                self.refused += requests
                self._errors.report(exc, requests)

    def on_batch(self, record: BatchRecord) -> None:
        """Append one session batch."""
        self.on_records([record])

    def on_rejected(self, record: RejectedRecord) -> None:
        """Append one rejected request."""
        self.on_records([record])


class SyncLog:
    """Appends from the request path and hands out the tickets to wait on (``sync``)."""

    def __init__(
        self,
        writer: PredictionLogWriter,
        feature_names: FeatureNames,
        arm: str = "champion",
        shapes: dict[str, tuple[int, ...]] | None = None,
    ) -> None:
        self.writer = writer
        self.feature_names = feature_names
        self.arm = arm
        #: The model's :func:`output_shapes`.
        self.shapes = shapes
        self._errors = LogErrors(writer)

    def append(self, record: BatchRecord) -> Future[None]:
        """Queue the records of one session batch; the returned ticket fails when the log
        cannot take them (with :class:`PredictionLogError` when the log has failed, else
        with the error that kept these records out)."""
        try:
            return self.writer.append(
                run_to_prediction_batch(run_of(record), self.feature_names, self.arm, self.shapes)
            )
        except PredictionLogError as exc:
            failed: Future[None] = Future()
            failed.set_exception(exc)
            return failed
        except Exception as exc:
            self._errors.report(exc, len(record.request_ids))
            refused: Future[None] = Future()
            refused.set_exception(exc)
            return refused

    def append_rejected(self, record: RejectedRecord, *, wait: bool = True) -> Future[None]:
        """Queue the record of one rejected request (without ``wait``, not when the queue
        is full: the future then fails, the record counted as dropped)."""
        try:
            return self.writer.append_rejected(
                to_rejected_request(record, self.feature_names, self.arm), wait=wait
            )
        except PredictionLogError as exc:
            failed: Future[None] = Future()
            failed.set_exception(exc)
            return failed
        except Exception as exc:
            self._errors.report(exc, 1)
            refused: Future[None] = Future()
            refused.set_exception(exc)
            return refused
