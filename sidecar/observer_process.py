"""The prediction log and the drift monitor in a process of their own.

Turning served requests into Arrow rows and drift counts is Python work. Done on a thread of
the serving process it holds the GIL, and gRPC's polling thread, which hands every call to
the handlers, waits for it: the cost in throughput is several times that work's own CPU
(``bench/README.md``: 0.74-0.85x of the plain sidecar on a thread against 0.75-0.94x in a
child process, and 1.13-1.14x in alternating A/B runs). With ``--observer-mode process`` (the
default) that work runs in a child process instead:

- the hub's thread gathers what it collected into runs (one array per tensor, flat lists
  of the per-request fields: :func:`sidecar.observers.gather`) and writes them to a pipe.
  That is all the serving process does per record;
- the child hands the runs to the observers :func:`sidecar.observing.observe` builds, the
  same ones a sidecar with ``--observer-mode thread`` runs in process, so the log's rows and
  the drift windows are the same;
- ``GetDriftReport`` and metric scrapes ask the child and wait for its answer. A log that
  fails in the child (disk full, file size limit) and a child that dies both turn the
  sidecar NOT_SERVING, as a failing log does in process;
- with several workers (prometheus_client's multiprocess mode) the child writes metric files
  of its own, under its own pid: the worker writes counters too, and two processes must never
  write one file. So the drift gauges the child sets carry the child's pid as their ``pid``
  label, which ``GetDriftReport`` names (``gauges_pid``, next to the worker's ``worker_pid``).
  When the child ends, the worker marks its pid dead (``mark_process_dead``), so that the
  supervisor's endpoint stops exporting its drift series. The prediction log's file names
  carry the worker's pid, as an in-process log's do (:func:`sidecar.predlog.files.name_files_for`):
  the worker writes no log files itself;
- a full pipe makes the hub's thread wait, and a full hub makes publishers wait: records are
  never dropped. The child ends when the pipe closes, after closing its log files, so it
  never outlives the sidecar, which can be killed without warning.

``sync`` log durability keeps the observers in the serving process: there a response waits
for its own record's fsync, and another hop would only lengthen that wait.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing as mp
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import structlog

from modelplane.errors import Unavailable
from sidecar.drift import DriftReport
from sidecar.metrics import multiprocess
from sidecar.observers import RecordRun, RejectedRecord
from sidecar.predlog import PredictionLogSettings
from sidecar.predlog.writer import PredictionLogFailed
from sidecar.settings import SidecarSettings
from sidecar.signature import Signature

log = structlog.get_logger("modelplane.sidecar.observer_process")

#: Seconds the child waits for records before it lets time-based drift windows close.
TICK = 0.25
#: Seconds a query (a drift report, a metrics scrape) waits for the child's answer.
QUERY_TIMEOUT = 10.0
#: Seconds the child may leave the pipe full (alive, but not reading: stopped, or stuck on a
#: disk) before the sidecar turns NOT_SERVING; ``MODELPLANE_OBSERVER_STALL_SECONDS``.
STALL_SECONDS = float(os.environ.get("MODELPLANE_OBSERVER_STALL_SECONDS", "30"))


class ObserverProcessError(RuntimeError):
    """The observer process ended without being asked to."""


@dataclass(frozen=True)
class _Job:
    settings: SidecarSettings
    log_settings: PredictionLogSettings | None
    signature: Signature
    #: None: no metrics; "forward": answer scrapes; "files": prometheus multiprocess files.
    metrics: str | None
    #: The serving process (the worker), whose pid the log's file names carry.
    worker_pid: int


class ObserverProcess:
    """The serving process's side: a hub observer that forwards records to the child, and
    the drift and metrics queries the child answers."""

    def __init__(
        self,
        process: Any,
        commands: Connection,
        answers: Connection,
        on_failure: Callable[[BaseException], Any],
        *,
        drift: bool,
        log_dir: Path | None,
        metrics: str | None = None,
    ) -> None:
        self._process = process
        self._metrics = metrics
        self._forgotten = False
        self._commands = commands
        self._answers = answers
        self._on_failure = on_failure
        self._send_lock = threading.Lock()
        self._pending: dict[int, Future[Any]] = {}
        self._pending_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._closing = False
        #: Set once a send waited past STALL_SECONDS (the child stopped reading).
        self._stalled = False
        #: Set once the child has ended, asked to or not.
        self._closed = threading.Event()
        #: Requests that could not be handed over because the child had ended.
        self.lost = 0
        self.log_dir = log_dir
        self.drift = RemoteDrift(self) if drift else None
        self._receiver = threading.Thread(
            target=self._receive, name="observer-answers", daemon=True
        )
        #: When the send in progress began (None when none is): a send that does not end
        #: means the child stopped reading.
        self._sending_since: float | None = None
        self._watchdog = threading.Thread(target=self._watch, name="observer-watchdog", daemon=True)

    @property
    def needs_ids(self) -> bool:
        """Whether the child records request ids: only its prediction log does (drift never
        reads them)."""
        return self.log_dir is not None

    @classmethod
    def start(
        cls,
        settings: SidecarSettings,
        log_settings: PredictionLogSettings | None,
        signature: Signature,
        registry: Any,
        on_failure: Callable[[BaseException], Any],
        timeout: float = 120.0,
    ) -> ObserverProcess:
        """Start the child and wait until its log is open and its baseline loaded; raises
        what opening them raised there (a bad baseline, a log directory it cannot use)."""
        metrics = None if registry is None else "files" if multiprocess() else "forward"
        job = _Job(settings, log_settings, signature, metrics, os.getpid())
        ctx = mp.get_context("spawn")
        child_commands, commands = ctx.Pipe(duplex=False)
        answers, child_answers = ctx.Pipe(duplex=False)
        process = ctx.Process(
            target=_child_main,
            args=(job, child_commands, child_answers),
            name="modelplane-observers",
            daemon=True,
        )
        process.start()
        child_commands.close()
        child_answers.close()
        try:
            if not answers.poll(timeout):
                raise ObserverProcessError(f"the observer process did not start in {timeout:g}s")
            kind, value = answers.recv()
        except (EOFError, OSError):
            kind, value = "error", ObserverProcessError("the observer process exited at start")
        if kind != "ready":
            process.join(5)
            if process.is_alive():
                process.kill()
            commands.close()
            answers.close()
            raise value
        log_dir = None if log_settings is None or log_settings.dir is None else log_settings.dir
        self = cls(
            process,
            commands,
            answers,
            on_failure,
            drift=settings.baseline is not None,
            log_dir=log_dir,
            metrics=metrics,
        )
        self._receiver.start()
        self._watchdog.start()
        if metrics == "forward":
            registry.register(_ForwardedMetrics(self))
        log.info("observers run in their own process", observer_pid=process.pid)
        return self

    @property
    def pid(self) -> int:
        """The child's process id."""
        return int(self._process.pid)

    def _forget_metrics(self) -> None:
        """Once the child has ended: remove its live gauge files (its drift series, which carry
        its pid), so that the supervisor's merged endpoint stops exporting them. A child that
        closed did so itself; this covers one that died or was killed."""
        if self._metrics != "files" or self._forgotten or self._process.exitcode is None:
            return
        self._forgotten = True
        from prometheus_client import multiprocess as prom_multiprocess

        try:
            prom_multiprocess.mark_process_dead(self.pid)
        except OSError as exc:
            log.warning("could not remove the observer process's metric files", error=str(exc))

    @property
    def stalled(self) -> bool:
        """Whether a send has waited past ``STALL_SECONDS`` (the child stopped reading)."""
        return self._stalled

    @property
    def alive(self) -> bool:
        """Whether the child is running."""
        return bool(self._process.is_alive())

    def _send(self, message: Any, timeout: float | None = None) -> None:
        """Write ``message`` to the pipe; with ``timeout``, TimeoutError when another send
        holds the pipe that long (the child is not reading)."""
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        if not self._send_lock.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError("the observer process's pipe stays full")
        try:
            self._sending_since = time.monotonic()
            self._commands.send_bytes(data)
        finally:
            self._sending_since = None
            self._send_lock.release()

    def _watch(self) -> None:
        """Turn the sidecar NOT_SERVING once a send has waited ``STALL_SECONDS``: requests
        would soon wait on the full hub, and the log would not be written."""
        while not self._closed.wait(1.0):
            since = self._sending_since
            if since is not None and time.monotonic() - since > STALL_SECONDS:
                self._stalled = True
                log.error(
                    "the observer process stopped reading",
                    observer_pid=self._process.pid,
                    seconds=round(time.monotonic() - since, 1),
                )
                self._on_failure(
                    ObserverProcessError(
                        f"the observer process (pid {self._process.pid}) has read nothing for "
                        f"{STALL_SECONDS:g}s; predictions are not being logged or monitored"
                    )
                )
                return

    def on_runs(self, runs: Sequence[RecordRun | RejectedRecord]) -> None:
        """Hand what the hub gathered to the child (waits while its pipe is full)."""
        if not self._closed.is_set():
            try:
                self._send(("runs", runs))
                return
            except (OSError, ValueError):
                pass
        self.lost += sum(len(r.request_ids) if isinstance(r, RecordRun) else 1 for r in runs)

    def query(self, what: str, timeout: float = QUERY_TIMEOUT) -> Any:
        """Ask the child (``drift_current``, ``drift_last``, ``metrics``)."""
        if self._closed.is_set():
            raise Unavailable(
                "the sidecar's observer process is not running (see the sidecar's log)",
                reason="OBSERVERS_UNAVAILABLE",
            )
        if self._stalled:
            raise Unavailable(
                "the sidecar's observer process stopped reading (see the sidecar's log)",
                reason="OBSERVERS_UNAVAILABLE",
            )
        ticket: Future[Any] = Future()
        ident = next(self._ids)
        with self._pending_lock:
            self._pending[ident] = ticket
        try:
            self._send(("query", ident, what), timeout)
            return ticket.result(timeout)
        except TimeoutError:
            raise Unavailable(
                f"the sidecar's observer process did not answer within {timeout:g}s",
                reason="OBSERVERS_UNAVAILABLE",
            ) from None
        except (OSError, ValueError):
            raise Unavailable(
                "the sidecar's observer process is not running (see the sidecar's log)",
                reason="OBSERVERS_UNAVAILABLE",
            ) from None
        finally:
            with self._pending_lock:
                self._pending.pop(ident, None)

    def _receive(self) -> None:
        while True:
            try:
                message = self._answers.recv()
            except (EOFError, OSError):
                break
            kind = message[0]
            if kind == "answer":
                _, ident, ok, value = message
                with self._pending_lock:
                    ticket = self._pending.get(ident)
                if ticket is not None:
                    if ok:
                        ticket.set_result(value)
                    else:
                        ticket.set_exception(value)
            elif kind == "failed":
                # The log refuses what comes next (counted in the child); drift goes on.
                self._on_failure(PredictionLogFailed(message[1]))
            elif kind == "closed":
                break
        self._closed.set()
        with self._pending_lock:
            waiting = list(self._pending.values())
        for ticket in waiting:
            if not ticket.done():
                ticket.set_exception(OSError("the observer process ended"))
        if not self._closing:
            self._process.join(1)
            code = self._process.exitcode
            self._forget_metrics()
            log.error("the observer process ended", observer_pid=self._process.pid, exitcode=code)
            self._on_failure(
                ObserverProcessError(
                    f"the observer process (pid {self._process.pid}) ended with exit code "
                    f"{code}; predictions are no longer logged or monitored"
                )
            )

    def close(self, timeout: float = 30.0) -> None:
        """Let the child write what it has and stop; kill it when it does not in time."""
        self._closing = True
        killed = False
        try:
            self._send(("close",), min(timeout, STALL_SECONDS, 10.0))
        except (OSError, ValueError):
            pass
        except TimeoutError:
            # The child is not reading: it cannot be asked to stop, only killed (which also
            # ends the send waiting on the full pipe).
            log.warning(
                "the observer process is not reading; killing it", observer_pid=self._process.pid
            )
            self._process.kill()
            killed = True
        # A child found not reading earlier gets a short while to write what it has: waiting
        # the whole timeout for one that may never read again would hold up the shutdown.
        closed = self._closed.wait(5.0 if killed or self._stalled else timeout)
        # One that has not said it closed by then is not about to: no second wait for it.
        self._process.join(5 if closed else 0.1)
        if self._process.is_alive():
            log.warning(
                "the observer process did not stop; killing it", observer_pid=self._process.pid
            )
            self._process.kill()
            self._process.join(5)
        self._forget_metrics()
        self._commands.close()
        self._answers.close()
        if self.lost:
            log.warning(
                "requests not logged or monitored: the observer process had ended",
                requests=self.lost,
            )


class RemoteDrift:
    """The drift feed's queries, answered by the observer process (see
    :class:`sidecar.driftfeed.DriftFeed`: the window states stay in the child)."""

    def __init__(self, process: ObserverProcess) -> None:
        self._process = process

    @property
    def gauges_pid(self) -> int:
        """The process that sets the drift gauges (their ``pid`` label with several
        workers): the observer process."""
        return self._process.pid

    def current(self) -> tuple[None, DriftReport]:
        """The open window's report so far."""
        return None, self._process.query("drift_current")

    def last(self) -> tuple[None, DriftReport] | None:
        """The last closed window's report, if a window has closed."""
        report = self._process.query("drift_last")
        return None if report is None else (None, report)


class _ForwardedMetrics:
    """A Prometheus collector serving the child's metrics, fetched at each scrape."""

    def __init__(self, process: ObserverProcess) -> None:
        self._process = process
        self._last: list[Any] = []

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> list[Any]:
        with contextlib.suppress(Unavailable):
            self._last = self._process.query("metrics", timeout=5.0)
        return self._last


def _child_main(job: _Job, commands: Connection, answers: Connection) -> None:
    """The observer process: build the observers, then handle messages until told to stop
    or until the serving process goes away."""
    # Ctrl-C or a SIGTERM to the whole process group must not cut the log short: the child
    # stops when the serving process tells it to, or when the pipe closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from modelplane.server.logging import configure_logging

    configure_logging(job.settings.log_level)
    from prometheus_client import CollectorRegistry

    from sidecar.observing import observe

    answer_lock = threading.Lock()

    def answer(message: Any) -> None:
        with answer_lock, contextlib.suppress(OSError, ValueError):
            answers.send(message)

    from sidecar.predlog.files import name_files_for

    # The log's files are named after the worker, which writes none itself (see the module).
    name_files_for(job.worker_pid)
    registry = None if job.metrics is None else CollectorRegistry()
    try:
        wiring = observe(
            job.settings,
            job.log_settings,
            job.signature,
            registry,
            lambda exc: answer(("failed", str(exc))),
        )
    except BaseException as exc:
        answer(("error", exc))
        return
    answer(("ready", os.getpid()))
    observers = wiring.observers
    stop = False
    while not stop:
        try:
            ready = commands.poll(TICK)
            message = pickle.loads(commands.recv_bytes()) if ready else None
        except (EOFError, OSError):
            # The serving process is gone (killed): write what was received and stop.
            break
        if message is not None:
            kind = message[0]
            if kind == "runs":
                _deliver(observers, message[1])
            elif kind == "query":
                _, ident, what = message
                try:
                    answer(("answer", ident, True, _answer(what, wiring, registry)))
                except Exception as exc:
                    answer(("answer", ident, False, exc))
            elif kind == "close":
                stop = True
        for obs in observers:
            tick = getattr(obs, "on_tick", None)
            if tick is not None:
                try:
                    tick()
                except Exception:
                    log.exception("observer failed", observer=type(obs).__name__)
    if wiring.writer is not None:
        wiring.writer.close()
    if job.metrics == "files":
        from prometheus_client import multiprocess as prom_multiprocess

        prom_multiprocess.mark_process_dead(os.getpid())
    answer(("closed",))


def _deliver(observers: list[Any], runs: list[RecordRun | RejectedRecord]) -> None:
    for obs in observers:
        try:
            obs.on_runs(runs)
        except Exception:
            log.exception("observer failed", observer=type(obs).__name__)


def _answer(what: str, wiring: Any, registry: Any) -> Any:
    if what == "drift_current":
        return wiring.drift.current()[1]
    if what == "drift_last":
        last = wiring.drift.last()
        return None if last is None else last[1]
    if what == "metrics":
        return [] if registry is None else list(registry.collect())
    raise ValueError(f"unknown query {what!r}")


def offloaded(settings: SidecarSettings, log_settings: PredictionLogSettings | None) -> bool:
    """Whether the observers ``settings`` ask for run in their own process: with
    ``--observer-mode process`` when there is drift to monitor or an ``async`` log to write,
    and never for a ``sync`` log."""
    logging = log_settings is not None and log_settings.dir is not None
    if settings.observer_mode != "process" or not (logging or settings.baseline is not None):
        return False
    return not (logging and log_settings is not None and log_settings.durability == "sync")
