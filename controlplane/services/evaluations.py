"""Server-side evaluations: start one as an operation, run it on a worker thread, store the
report as an Evaluation of the version, with deltas against the version an alias points to.

Each replica holds at most ``queue_size`` evaluations (running or waiting for a worker; one
cancelled while it waits leaves the queue at once); an evaluation runs for at most
``timeout_seconds`` and then fails with DEADLINE_EXCEEDED (EVALUATION_TIMEOUT), whatever it is
doing then (a model run, or the metrics of its slices and protected groups). A cancelled
operation, or one another replica failed, stops its work as promptly and stores nothing: the
Evaluation is stored in the transaction that finishes the operation, only while this replica
still holds it.

A database unavailable or busy past its wait limit does not end an evaluation: a progress
write that fails is skipped (progress is advisory), storing the result is tried again while this
replica holds the operation, up to the time limit (then ABORTED, RESULT_NOT_STORED: the work is
lost), and a failure that cannot be recorded is recorded by the lease timer once the database
answers, the operation held and its lease renewed until then.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import structlog

from controlplane.audit import object_digest
from controlplane.blobstore import Blobs
from controlplane.domain import ModelVersion, Operation, VersionState
from controlplane.domain.governance import Evaluation
from controlplane.names import check_id, check_sha256, check_text
from controlplane.services.blobs import require_readable
from controlplane.services.governance_names import new_id, parse_child, parse_version_number
from controlplane.services.leases import Leases
from controlplane.services.models import lock_model, require_model
from controlplane.services.operations import OperationLost, OperationService
from controlplane.services.versions import require_version, resolve_version
from controlplane.store import Store, Tx, WriteTx
from controlplane.store.governance_repos import Governance
from controlplane.store.pagination import decode, encode, page_size
from controlplane.store.tables import EvaluationRow, OperationRow
from modelplane.errors import (
    Aborted,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    ModelplaneError,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from modelplane.server.context import RequestContext

if TYPE_CHECKING:
    from controlplane.evaluation import RunControl

log = structlog.get_logger("modelplane.evaluations")

OPERATION_KIND = "evaluation"
DEFAULT_COMPARE_TO = "champion"
NO_COMPARISON = ("-", "none")
TASKS = ("classification", "regression")
MAX_COLUMNS = 10_000
#: Progress is written when it enters a new step of this fraction of the work (and at the end).
PROGRESS_STEP = 0.1
#: Seconds between tries to store a result while the database is unavailable or busy (each try
#: also waits up to the database's own wait limit).
STORE_RETRY_SECONDS = 1.0

ResultEncoder = Callable[[Evaluation], tuple[str, bytes]]


@dataclass(frozen=True)
class EvaluationRequest:
    """What to evaluate: a version on an uploaded dataset; ``task`` and ``positive_class``
    (empty: detected from the model, and its second class) are passed to the evaluation of the
    version and of the version it is compared with."""

    name: str
    dataset_sha256: str
    label: str
    dataset_role: str = "holdout"
    features: tuple[str, ...] = ()
    slices: tuple[str, ...] = ()
    protected: tuple[str, ...] = ()
    compare_to: str = DEFAULT_COMPARE_TO
    task: str = ""
    positive_class: str = ""


def _check_columns(names: tuple[str, ...], what: str) -> None:
    if len(names) > MAX_COLUMNS:
        raise InvalidArgument(
            f"at most {MAX_COLUMNS} {what} are allowed", reason="TOO_MANY_COLUMNS"
        )
    for n in names:
        if not n:
            raise InvalidArgument(f"{what} must not contain empty names", reason="INVALID_COLUMN")
        check_text(n, what, 256, single_line=True)


def evaluation_not_found(name: str) -> NotFound:
    return NotFound(f"evaluation {name} does not exist", reason="EVALUATION_NOT_FOUND")


class EvaluationService:
    """Starts, runs and answers for evaluations. Call :meth:`stop` when the server starts to
    stop and :meth:`close` once it stopped."""

    def __init__(
        self,
        store: Store,
        blobs: Blobs,
        operations: OperationService,
        encode_result: ResultEncoder,
        *,
        workers: int = 2,
        lease_seconds: float = 60.0,
        timeout_seconds: float = 3600.0,
        queue_size: int = 32,
        max_rows: int = 10_000_000,
        max_cells: int = 50_000_000,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.operations = operations
        self.encode_result = encode_result
        self.lease_seconds = lease_seconds
        self.timeout_seconds = timeout_seconds
        self.queue_size = max(queue_size, 1)
        self.max_rows = max_rows
        self.max_cells = max_cells
        self._pool = ThreadPoolExecutor(max_workers=max(workers, 1), thread_name_prefix="eval")
        self._stopping = threading.Event()
        self._jobs: dict[str, RunControl] = {}
        self._started: set[str] = set()
        self._reserved = 0
        self._jobs_lock = threading.Lock()
        self.leases = Leases(
            store, lease_seconds, replica_id=operations.replica_id, on_lost=self._abandon
        )
        operations.on_cancel(self._abandon)

    # Starting ---------------------------------------------------------------------------------

    def _validate(self, r: EvaluationRequest) -> tuple[str, int | None, str]:
        model_id, version, alias = parse_version_number(r.name, allow_alias=True)
        check_sha256(r.dataset_sha256, "dataset_sha256")
        if not r.label:
            raise InvalidArgument(
                "label is required: name the dataset's label column", reason="MISSING_LABEL"
            )
        check_text(r.label, "label", 256, single_line=True)
        check_id(r.dataset_role, "dataset_role")
        if r.compare_to not in NO_COMPARISON:
            check_id(r.compare_to, "compare_to")
        if r.task not in ("", *TASKS):
            raise InvalidArgument(
                f"task must be one of {', '.join(TASKS)} or empty (detected), not {r.task!r}",
                reason="INVALID_TASK",
                metadata={"task": r.task[:200]},
            )
        if r.positive_class:
            check_text(r.positive_class, "positive_class", 256, single_line=True)
            if r.task == "regression":
                raise InvalidArgument(
                    "positive_class is only for binary classification, not task regression",
                    reason="POSITIVE_CLASS_NEEDS_BINARY",
                )
        _check_columns(r.features, "features")
        _check_columns(r.slices, "slice columns")
        _check_columns(r.protected, "protected columns")
        return model_id, version, alias

    def _reserve(self) -> None:
        with self._jobs_lock:
            if len(self._jobs) + self._reserved >= self.queue_size:
                raise ResourceExhausted(
                    f"this server already holds {self.queue_size} evaluations (running or "
                    "waiting for a worker; MODELPLANE_EVALUATION_QUEUE_SIZE of the server); retry "
                    "later",
                    reason="EVALUATION_QUEUE_FULL",
                )
            self._reserved += 1

    def _unreserve(self, op_id: str = "", control: RunControl | None = None) -> None:
        with self._jobs_lock:
            self._reserved -= 1
            if control is not None:
                self._jobs[op_id] = control

    def start(self, ctx: RequestContext, r: EvaluationRequest, request_id: str = "") -> Operation:
        """Record the operation and queue the work; returns the operation at once.

        RESOURCE_EXHAUSTED (EVALUATION_QUEUE_FULL) when this replica already holds
        ``queue_size`` evaluations; INVALID_ARGUMENT (DATASET_ROLE_CONFLICT) when the version's
        lineage records the dataset under another role (its training data evaluated as a
        holdout, say)."""
        model_id, number, alias = self._validate(r)
        reserved = False
        try:
            with self.store.write(ctx, "Evaluate", request_id, request=r) as tx:
                if tx.replay is not None:
                    op = tx.operations.get(tx.replay.removeprefix("operations/"))
                    assert op is not None
                    return op
                version = self._check_start(tx, ctx, r, model_id, number, alias)
                self._reserve()
                reserved = True
                op = self._add_operation(tx, ctx, version, r)
            from controlplane.evaluation import RunControl

            control = RunControl()
            self.leases.hold(op.id)
            self._unreserve(op.id, control)
            reserved = False
        finally:
            if reserved:
                self._unreserve()
        job_ctx = RequestContext(principal=ctx.principal, request_id=ctx.request_id)
        self._pool.submit(self._run, job_ctx, op.id, version, r, control)
        return op

    def _check_start(
        self,
        tx: Tx,
        ctx: RequestContext,
        r: EvaluationRequest,
        model_id: str,
        number: int | None,
        alias: str,
    ) -> ModelVersion:
        require_model(tx, model_id)
        require_readable(tx, ctx, [r.dataset_sha256])
        version = resolve_version(tx, model_id, number, alias)
        if version.state is VersionState.ARCHIVED:
            raise FailedPrecondition(
                f"version {version.name} is archived", reason="VERSION_ARCHIVED"
            )
        if tx.blobs.get(r.dataset_sha256) is None or not self.blobs.exists(r.dataset_sha256):
            raise FailedPrecondition(
                f"dataset blobs/{r.dataset_sha256} has not been uploaded; upload it first "
                "with UploadBlob",
                reason="BLOB_NOT_FOUND",
            )
        digest = r.dataset_sha256.lower()
        roles = sorted(
            {
                d.role
                for d in version.lineage.datasets
                if d.sha256.lower().removeprefix("sha256:") == digest
            }
        )
        if roles and r.dataset_role not in roles:
            raise InvalidArgument(
                f"dataset blobs/{r.dataset_sha256} is recorded in the lineage of version "
                f"{version.name} as its {' and '.join(roles)} data; it cannot be evaluated as "
                f"{r.dataset_role!r}. Evaluate it with dataset_role {roles[0]!r}, or evaluate "
                "other data",
                reason="DATASET_ROLE_CONFLICT",
                metadata={"lineage_roles": ",".join(roles), "dataset_role": r.dataset_role},
            )
        return version

    def _add_operation(
        self, tx: WriteTx, ctx: RequestContext, version: ModelVersion, r: EvaluationRequest
    ) -> Operation:
        op = tx.operations.add(
            OperationRow(
                id=new_id("op"),
                kind=OPERATION_KIND,
                target=version.name,
                op_metadata={
                    "dataset_sha256": r.dataset_sha256,
                    "dataset_role": r.dataset_role,
                    "label": r.label,
                    "compare_to": r.compare_to,
                    **({"task": r.task} if r.task else {}),
                    **({"positive_class": r.positive_class} if r.positive_class else {}),
                },
                created_by=ctx.principal,
                create_time=tx.now,
                update_time=tx.now,
                owner=self.operations.replica_id,
                lease_expire_time=tx.now + timedelta(seconds=self.lease_seconds),
            )
        )
        tx.record("StartOperation", op.name, None, op)
        return op

    # Running ----------------------------------------------------------------------------------

    def _run(
        self,
        ctx: RequestContext,
        op_id: str,
        version: ModelVersion,
        r: EvaluationRequest,
        control: RunControl,
    ) -> None:
        with self._jobs_lock:
            if op_id not in self._jobs:  # cancelled or lost while it waited for a worker
                return
            self._started.add(op_id)
        timeout = DeadlineExceeded(
            f"the evaluation ran longer than {self.timeout_seconds:g}s and was stopped; the limit "
            "is controlplane serve --evaluation-timeout (MODELPLANE_EVALUATION_TIMEOUT_SECONDS)",
            reason="EVALUATION_TIMEOUT",
        )
        timer = threading.Timer(self.timeout_seconds, control.stop, (timeout,))
        timer.daemon = True
        timer.start()
        # Whether the lease timer records the operation's end (the database away now); the
        # operation stays held until it does.
        handed_over = False
        try:
            control.check()
            self._evaluate(ctx, op_id, version, r, control)
        except _Stopped:
            log.info("evaluation interrupted by shutdown", operation=op_id)
        except OperationLost:
            log.info("evaluation abandoned: its operation was cancelled or failed", operation=op_id)
        except ModelplaneError as exc:
            handed_over = self._fail(ctx, op_id, exc)
        except Exception as exc:  # the operation must end even on a bug
            log.error("evaluation failed", operation=op_id, exc_info=exc)
            handed_over = self._fail(
                ctx, op_id, Internal("the evaluation failed; the server log has details")
            )
        finally:
            timer.cancel()
            if not handed_over:
                self.leases.release(op_id)
            with self._jobs_lock:
                self._jobs.pop(op_id, None)
                self._started.discard(op_id)

    def _abandon(self, op_id: str) -> None:
        """Stop the work on an operation that was cancelled or failed elsewhere; one still
        waiting for a worker gives up its place in the queue and its lease now, and is skipped
        when a worker reaches it."""
        with self._jobs_lock:
            control = self._jobs.get(op_id)
            queued = control is not None and op_id not in self._started
            if queued:
                del self._jobs[op_id]
        if queued:
            self.leases.release(op_id)
        if control is not None:
            control.stop(OperationLost(op_id))

    def _fail(self, ctx: RequestContext, op_id: str, err: ModelplaneError) -> bool:
        """End the operation with ``err``; True when the database is unavailable now and
        the lease timer records it later (:meth:`Leases.end_later`), the operation held and
        renewed meanwhile."""
        if self._stopping.is_set():
            return False

        def end() -> None:
            self.operations.finish(ctx, op_id, error=err)

        try:
            end()
        except OperationLost:
            log.info("evaluation failed after its operation ended", operation=op_id)
        except Unavailable as exc:
            log.warning(
                "cannot record the failure of an operation now; it is recorded once the "
                "database answers, the operation held meanwhile",
                operation=op_id,
                failure=err.reason,
                error=str(exc),
            )
            self.leases.end_later(op_id, end)
            return True
        except Exception as exc:
            log.error("cannot record the failure of an operation", operation=op_id, exc_info=exc)
        return False

    def _progress(
        self, ctx: RequestContext, op_id: str, lo: float, hi: float, control: RunControl
    ) -> Callable[[float], None]:
        last = [-1.0]
        warned = [False]

        def report(fraction: float) -> None:
            if self._stopping.is_set():
                raise _Stopped
            control.check()
            done = lo + (hi - lo) * fraction
            if _progress_step(done) > _progress_step(last[0]) or (
                fraction >= 1.0 and done > last[0]
            ):
                last[0] = done
                try:
                    self.operations.progress(ctx, op_id, done, "evaluating")
                except Unavailable as exc:
                    # Progress is advisory: the work goes on, and later steps try again.
                    if not warned[0]:
                        warned[0] = True
                        log.warning(
                            "cannot record an evaluation's progress; it goes on without",
                            operation=op_id,
                            error=str(exc),
                        )

        return report

    def _evaluate(
        self,
        ctx: RequestContext,
        op_id: str,
        version: ModelVersion,
        r: EvaluationRequest,
        control: RunControl,
    ) -> Evaluation:
        from controlplane.evaluation import check_dataset_size, compare, evaluate
        from modelplane.profiles import BaselineProfile

        data = self.blobs.read_bytes(r.dataset_sha256)
        check_dataset_size(
            data,
            max_rows=self.max_rows,
            max_cells=self.max_cells,
            settings=("evaluation_max_rows", "evaluation_max_cells"),
        )
        onnx = self.blobs.read_bytes(version.artifact.sha256)
        baseline = None
        if version.baseline is not None and self.blobs.exists(version.baseline.sha256):
            baseline = BaselineProfile.from_bytes(self.blobs.read_bytes(version.baseline.sha256))
        with self.store.read() as tx:
            reference = self._reference(tx, version, r)
            unknown_alias = self._unknown_alias(tx, version, r)
        # The candidate's share of the progress: a stored reference evaluation framed unlike
        # this one is run again after it, so the candidate never reports 1.0 while one may.
        split = {ModelVersion: 0.7, Evaluation: 0.9}.get(type(reference), 1.0)
        report = evaluate(
            onnx,
            version.signature,
            data,
            label=r.label,
            feature_names=version.feature_names,
            features=list(r.features) or None,
            slices=list(r.slices),
            protected=list(r.protected),
            task=r.task or None,
            positive_class=r.positive_class or None,
            baseline=baseline,
            progress=self._progress(ctx, op_id, 0.0, split, control),
            control=control,
        ).to_dict()
        if unknown_alias:
            report.setdefault("warnings", []).append(
                _compare_warning(
                    "COMPARE_ALIAS_NOT_FOUND",
                    f"model {version.model_id} has no alias {r.compare_to!r} to compare with; "
                    "no deltas were computed",
                )
            )
        if isinstance(reference, Evaluation) and not same_framing(reference.report, report):
            with self.store.read() as tx:
                reference = tx.versions.get(reference.model_id, reference.version)
        compared, deltas = "", {}
        if reference is not None:
            warnings = report.setdefault("warnings", [])
            ref_report: dict[str, Any] | None
            if isinstance(reference, ModelVersion):
                ref_report = self._reference_report(
                    ctx, op_id, reference, data, r, split, control, warnings, report
                )
                compared = reference.name if ref_report is not None else ""
            else:
                ref_report, compared = reference.report, reference.version_name
            if ref_report is not None:
                try:
                    deltas = compare(report, ref_report)
                except InvalidArgument as exc:
                    warnings.append(_compare_warning(exc.reason, exc.message))
                    compared = ""
        return self._store_retrying(ctx, op_id, version, r, report, compared, deltas, control)

    def _reference_report(
        self,
        ctx: RequestContext,
        op_id: str,
        reference: ModelVersion,
        data: bytes,
        r: EvaluationRequest,
        split: float,
        control: RunControl,
        warnings: list[dict[str, str]],
        report: dict[str, Any],
    ) -> dict[str, Any] | None:
        """The reference version evaluated on the same data, fed by its own feature names (never
        the caller's ``features``, chosen for the version under evaluation), with the task and
        positive class of ``report`` (the evaluation it is compared with); None, with a
        warning, when it cannot be: its features are unknown or absent, or it fails."""
        from controlplane.evaluation import evaluate

        try:
            return evaluate(
                self.blobs.read_bytes(reference.artifact.sha256),
                reference.signature,
                data,
                label=r.label,
                feature_names=reference.feature_names,
                require_feature_names=True,
                task=r.task or None,
                positive_class=report.get("positive_class"),
                progress=self._progress(ctx, op_id, split, 1.0, control),
                control=control,
            ).to_dict()
        except InvalidArgument as exc:
            warnings.append(
                _compare_warning(
                    "REFERENCE_EVALUATION_FAILED",
                    f"the reference version {reference.name} could not be evaluated on this "
                    f"dataset ({exc.reason}: {exc.message}); no deltas were computed",
                )
            )
            return None

    def _reference(
        self, tx: Tx, version: ModelVersion, r: EvaluationRequest
    ) -> ModelVersion | Evaluation | None:
        """What to compare with: the alias's latest evaluation on the same data, else its version
        (to evaluate here); None without an alias or when it points at this version."""
        if r.compare_to in NO_COMPARISON:
            return None
        alias = tx.aliases.get(version.model_id, r.compare_to)
        if alias is None or alias.version == version.version:
            return None
        previous = Governance(tx.session).latest_evaluation(
            version.model_id, alias.version, r.dataset_sha256, r.label
        )
        if previous is not None:
            return previous
        return tx.versions.get(version.model_id, alias.version)

    @staticmethod
    def _unknown_alias(tx: Tx, version: ModelVersion, r: EvaluationRequest) -> bool:
        """Whether ``compare_to`` names an alias the model does not have. The default alias
        (``champion``, what an empty ``compare_to`` means) is not missed: a model has none
        before its first release."""
        if r.compare_to in NO_COMPARISON or r.compare_to == DEFAULT_COMPARE_TO:
            return False
        return tx.aliases.get(version.model_id, r.compare_to) is None

    def _store_retrying(
        self,
        ctx: RequestContext,
        op_id: str,
        version: ModelVersion,
        r: EvaluationRequest,
        report: dict[str, Any],
        compared: str,
        deltas: dict[str, float | None],
        control: RunControl,
    ) -> Evaluation:
        """:meth:`_store`, tried again every :data:`STORE_RETRY_SECONDS` while the database is
        unavailable or busy, each try a transaction of its own (none is held open between
        them), for as long as this replica holds the operation (the lease timer renews it
        meanwhile; a cancel, a loss or a server stop ends the tries) and the time limit
        allows: past it the result is lost, ABORTED (RESULT_NOT_STORED)."""
        since = time.monotonic()
        tries = 0
        while True:
            try:
                evaluation = self._store(ctx, op_id, version, r, report, compared, deltas)
            except Unavailable as exc:
                tries += 1
                if tries == 1:
                    log.warning(
                        "cannot store an evaluation's result now; trying again while the "
                        "operation is held",
                        operation=op_id,
                        error=str(exc),
                    )
            else:
                if tries:
                    log.info("evaluation's result stored", operation=op_id, failed_tries=tries)
                return evaluation
            self._pause(control, since)

    def _pause(self, control: RunControl, since: float) -> None:
        """Wait :data:`STORE_RETRY_SECONDS` before the next try to store, in short steps,
        raising as soon as the work is stopped: :class:`_Stopped` for a server stop, the
        stop's reason otherwise (:class:`OperationLost` for a cancel or a loss), and for the
        time limit the loss of the result."""
        end = time.monotonic() + STORE_RETRY_SECONDS
        while True:
            if self._stopping.is_set():
                raise _Stopped
            if isinstance(control.stopped, DeadlineExceeded):
                raise Aborted(
                    "the evaluation's result could not be stored: the database was unavailable "
                    f"or busy for {time.monotonic() - since:.0f}s, until the evaluation's time "
                    f"limit ({self.timeout_seconds:g}s) passed, and the work is lost; start it "
                    "again with a new request id (this request id answers this failure again)",
                    reason="RESULT_NOT_STORED",
                )
            control.check()
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.1))

    def _store(
        self,
        ctx: RequestContext,
        op_id: str,
        version: ModelVersion,
        r: EvaluationRequest,
        report: dict[str, Any],
        compared: str,
        deltas: dict[str, float | None],
    ) -> Evaluation:
        """Store the Evaluation and finish the operation with it, in one transaction, while
        this replica still holds the operation (:class:`OperationLost` otherwise)."""
        with self.store.write(ctx, "CreateEvaluation") as tx:
            if self.operations.held(tx, op_id) is None:
                raise OperationLost(op_id)
            # The model's lock, as a forced DeleteModel takes it: the version read here is the
            # one the evaluation is stored on. A model deleted and created again under its id
            # reuses version numbers, so the number alone may name another artifact.
            lock_model(tx, version.model_id)
            current = require_version(tx, version.model_id, version.version)
            if (
                current.artifact.sha256 != version.artifact.sha256
                or current.create_time != version.create_time
            ):
                raise FailedPrecondition(
                    f"version {version.name} was deleted and registered again while it was "
                    f"being evaluated (artifact sha256 {version.artifact.sha256[:12]}, now "
                    f"{current.artifact.sha256[:12]}); the report is not stored. Evaluate the "
                    "new version again",
                    reason="VERSION_CHANGED",
                )
            if current.state is VersionState.ARCHIVED:
                # Archiving closes a version to new evaluations, as Evaluate refuses them:
                # one that was running then is not stored on it either.
                raise FailedPrecondition(
                    f"version {version.name} was archived while it was being evaluated; the "
                    "report is not stored (an archived version takes no evaluations)",
                    reason="VERSION_ARCHIVED",
                )
            evaluation = Governance(tx.session).add_evaluation(
                EvaluationRow(
                    id=new_id("ev"),
                    model_id=version.model_id,
                    version=version.version,
                    dataset_sha256=r.dataset_sha256,
                    dataset_role=r.dataset_role,
                    label=r.label,
                    report=report,
                    report_sha256=object_digest(report),
                    compare_to="" if r.compare_to in NO_COMPARISON else r.compare_to,
                    compared_version=compared,
                    deltas=deltas,
                    operation=f"operations/{op_id}",
                    created_by=ctx.principal,
                    create_time=tx.now,
                )
            )
            tx.record("CreateEvaluation", evaluation.name, None, evaluation)
            result_type, result = self.encode_result(evaluation)
            self.operations.finish_in(tx, op_id, result_type=result_type, result=result)
            return evaluation

    def watch_leases(self, interval: float) -> None:
        """Fail expired operations now and keep this replica's leases renewed (see
        :class:`~controlplane.services.leases.Leases`) until :meth:`close`."""
        self.leases.watch(interval)

    def stop(self) -> None:
        """Stop taking work and end the operations of the evaluations this replica holds
        (running or waiting for a worker) with ABORTED (REPLICA_LOST, the replica was stopped)
        in one transaction, so that their callers learn at once, and stop their work (a model
        run in progress, or metrics, included). Ends the lease timer has yet to record (see
        :meth:`Leases.end_later`) are recorded first, as they are. Operations it cannot end
        (the database away) are left to lease expiry. Called as the server starts to stop,
        before its grace period, and again by :meth:`close`."""
        self._stopping.set()
        self.leases.stop()
        for end in (self.leases.end_pending, lambda: self.leases.end_held("was stopped")):
            try:
                end()
            except Exception as exc:
                log.warning(
                    "cannot end the operations of a stopping replica; they end when their "
                    "leases expire",
                    operations=self.leases.held(),
                    error=str(exc),
                )
        with self._jobs_lock:
            running = list(self._jobs.values())
        for control in running:
            control.stop(_Stopped())

    def close(self) -> None:
        """:meth:`stop` (again: an evaluation started during the grace period is ended too),
        then wait for the workers to return."""
        self.stop()
        self._pool.shutdown(wait=True, cancel_futures=True)

    # Reads ------------------------------------------------------------------------------------

    def get(self, name: str) -> Evaluation:
        model_id, version, eval_id = parse_child(name, "evaluations")
        with self.store.read() as tx:
            require_model(tx, model_id)
            require_version(tx, model_id, version)
            got = Governance(tx.session).get_evaluation(model_id, version, eval_id)
        if got is None:
            raise evaluation_not_found(name)
        return got

    def list_evaluations(
        self, parent: str, page_size_: int = 0, page_token: str = ""
    ) -> tuple[list[Evaluation], str]:
        model_id, version, _ = parse_version_number(parent)
        assert version is not None
        query = {"list": "evaluations", "parent": parent}
        after = decode(page_token, query)
        with self.store.read() as tx:
            require_model(tx, model_id)
            require_version(tx, model_id, version)
            items, next_key = Governance(tx.session).evaluations_page(
                model_id, version, after, page_size(page_size_)
            )
        return items, encode(query, next_key) if next_key else ""


class _Stopped(Exception):
    """Raised from a progress report when the server is stopping."""


def _progress_step(done: float) -> int:
    """Which step of :data:`PROGRESS_STEP` ``done`` is in (0.3 is in step 3, not 2.999...)."""
    return math.floor(done / PROGRESS_STEP + 1e-9)


def same_framing(stored: dict[str, Any], report: dict[str, Any]) -> bool:
    """Whether a stored report read the problem as ``report`` does (same task, same positive
    class), so that deltas against it compare like with like."""
    return stored.get("task") == report.get("task") and str(stored.get("positive_class")) == str(
        report.get("positive_class")
    )


def _compare_warning(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message, "scope": "compare", "metric": ""}
