"""ONNX Runtime sessions: provider choice, warm-up, and the call that runs a batch.

``--device cuda`` insists on the CUDA execution provider (and runs it with I/O binding);
``--device auto`` takes CUDA only when a GPU is present and warm-up measures the model faster
there; ``cpu`` never touches CUDA. The provider a session actually got is what gets reported.
A model that warm-up cannot run on its sample input is served unmeasured (see :func:`warm_up`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort
import structlog

from modelplane.errors import FailedPrecondition
from modelplane.server.cpus import available_cores
from sidecar import cuda
from sidecar.batch_check import stacking_changes_answers
from sidecar.cuda import CUDA
from sidecar.signature import Signature, TensorSpec, signature_of, with_declared_ranks

if TYPE_CHECKING:
    from sidecar.settings import SidecarSettings

log = structlog.get_logger("modelplane.sidecar.runtime")

CPU = "CPUExecutionProvider"


def _options(intra_op_threads: int, spinning: bool) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if intra_op_threads:
        opts.intra_op_num_threads = intra_op_threads
    if not spinning:
        # Idle intra-op threads spin for work by default, burning the cores that the gRPC
        # threads need: a small model pays several times its compute in spinning.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


@dataclass
class Runtime:
    """One inference session and how to call it; shared by every request thread.

    A CUDA session is only ever called from one thread of its own. ONNX Runtime's CUDA provider
    keeps its cuBLAS/cuDNN handles and scratch state per calling thread, created on a thread's
    first call; with the batch leader being whichever gRPC thread came first, every thread of
    the pool would pay that (and hold GPU memory for it). One thread also means one I/O binding
    per session.

    A batchable CUDA model gets one session per batch size in ``buckets``: the CUDA provider's
    convolutions keep the cuDNN plan of the last input shape they ran only, so one session fed
    alternating batch sizes rebuilds its plans on every change (ResNet-50 on an H200: about
    160 ms per call instead of 8 ms; bench/README.md). Each of those sessions holds its own
    copy of the weights on the GPU, within :data:`SESSION_COPIES_BUDGET`.
    """

    session: Any
    signature: Signature
    provider: str
    path: Path
    #: Batch sizes a GPU session runs at: a batch is padded up to the next one (see
    #: :func:`gpu_buckets`); empty on the CPU and for models that cannot batch.
    buckets: tuple[int, ...] = ()
    #: The fastest one-row call warm-up measured, in seconds.
    single_call_s: float = float("inf")
    #: Why warm-up could not run the model on its sample input (None: it ran). Nothing was
    #: then measured: the device is the one asked for (``auto``: the CPU) and batching stays
    #: off unless ``--max-batch-size`` turns it on.
    unmeasured: str | None = None
    #: The session that runs each batch size of ``buckets`` (GPU); other sizes run ``session``.
    sessions_by_rows: dict[int, Any] = field(default_factory=dict, repr=False)
    _direct: Any = field(default=None, repr=False)
    _gpu_thread: ThreadPoolExecutor | None = field(default=None, repr=False)
    _bindings: dict[int, Any] = field(default_factory=dict, repr=False)
    _staging: cuda.StagingBuffers | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # On CPU, call the session's native ``run`` directly: the Python wrapper re-validates
        # the feeds (the codec already did) and costs more than the MLP it runs.
        native_run = getattr(getattr(self.session, "_sess", None), "run", None)
        if self.provider != CUDA and callable(native_run):
            self._direct = native_run
        if self.provider == CUDA:
            self._gpu_thread = ThreadPoolExecutor(1, thread_name_prefix="cuda-session")

    def close(self) -> None:
        """Let the session's own thread (GPU) end once its last call is done, then unlock
        its staging buffers."""
        if self._gpu_thread is not None:
            if self._staging is not None:
                self._gpu_thread.submit(self._staging.release)
            self._gpu_thread.shutdown(wait=False)

    @property
    def on_gpu(self) -> bool:
        return self.provider == CUDA

    def run(
        self, outputs: Sequence[str], feeds: dict[str, np.ndarray[Any, Any]]
    ) -> list[np.ndarray[Any, Any]]:
        """Run the session on ``feeds`` and return ``outputs`` in order."""
        direct = self._direct
        if direct is not None:
            return direct(outputs, feeds, None)  # type: ignore[no-any-return]
        if self._gpu_thread is not None:
            parts = {name: (array,) for name, array in feeds.items()}
            return self._gpu_thread.submit(self._run_staged, outputs, parts).result()
        return self.session.run(outputs, feeds)  # type: ignore[no-any-return]

    def run_rows(
        self,
        outputs: Sequence[str],
        parts: Mapping[str, Sequence[np.ndarray[Any, Any]]],
        keep_inputs: bool = False,
    ) -> tuple[list[np.ndarray[Any, Any]], dict[str, np.ndarray[Any, Any]]]:
        """Run the session on the rows of ``parts`` (per input, arrays to stack along their
        first dimension); returns ``outputs`` in order and the stacked inputs. On the GPU the
        rows go straight into staging buffers that the next call reuses, so the stacked inputs
        are made (after the call) only with ``keep_inputs``, and are empty otherwise."""
        if self._gpu_thread is None:
            feeds = _stacked(parts)
            return self.run(outputs, feeds), feeds
        results = self._gpu_thread.submit(self._run_staged, outputs, parts).result()
        return results, _stacked(parts) if keep_inputs else {}

    def _padded_rows(self, rows: int) -> int:
        """The batch size a call with ``rows`` rows runs at (``rows`` itself off the GPU)."""
        if not self.buckets or self._gpu_thread is None:
            return rows
        return next((b for b in self.buckets if b >= rows), rows)

    def _run_staged(
        self, outputs: Sequence[str], parts: Mapping[str, Sequence[np.ndarray[Any, Any]]]
    ) -> list[np.ndarray[Any, Any]]:
        """On the session's thread: stack ``parts`` into the staging buffers (padded up to the
        batch size that runs them), run, and return each output's real rows."""
        counts = {sum(p.shape[0] for p in arrays) for arrays in parts.values()}
        if len(counts) > 1:
            # Inputs whose row counts differ are not rows of one batch: run them as sent.
            return self._run_bound(self.session, outputs, _stacked(parts))
        rows = counts.pop()
        size = self._padded_rows(rows)
        session = self.sessions_by_rows.get(size, self.session)
        feeds = {name: self._stage(name, arrays, size) for name, arrays in parts.items()}
        results = self._run_bound(session, outputs, feeds)
        if size == rows:
            return results
        if any(out.ndim == 0 or out.shape[0] != size for out in results):
            # The outputs are not one per input row: padding would change them; run as sent.
            return self._run_bound(self.session, outputs, _stacked(parts))
        return [out[:rows] for out in results]

    def _stage(
        self, name: str, arrays: Sequence[np.ndarray[Any, Any]], size: int
    ) -> np.ndarray[Any, Any]:
        """``arrays`` stacked and padded to ``size`` rows like :func:`stack_rows`, in the
        input's staging buffer when it has one."""
        staging = self._staging
        spec = self.signature.input(name)
        buf = None
        if (
            staging is not None
            and size <= staging.rows
            and arrays[0].dtype != object
            and spec is not None
            and spec.tail is not None
        ):
            # Only inputs whose rows have a fixed size get a buffer: one sized by the first
            # request of a free-shaped input could hold gigabytes of page-locked memory.
            buf = staging.buffer(name, arrays[0])
        return stack_rows(arrays, size, None if buf is None else buf[:size])

    def _run_bound(
        self, session: Any, outputs: Sequence[str], feeds: dict[str, np.ndarray[Any, Any]]
    ) -> list[np.ndarray[Any, Any]]:
        # Only the sessions' own thread gets here: one binding per session, reset per call.
        binding = self._bindings.get(id(session))
        if binding is None:
            binding = self._bindings[id(session)] = session.io_binding()
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        for name, array in feeds.items():
            if array.dtype == object:
                binding.bind_cpu_input(name, array)
            else:
                value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), "cuda", 0)
                binding.bind_ortvalue_input(name, value)
        for name in outputs:
            spec = self.signature.output(name)
            if spec is not None and spec.datatype == "BYTES":
                binding.bind_output(name, "cpu")
            else:
                binding.bind_output(name, "cuda", 0)
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()  # type: ignore[no-any-return]


#: CUDA provider options. The default exhaustive cuDNN search benchmarks every convolution
#: again for each new input shape (ResNet-50 on an H100: about 0.7 s per new batch size, against
#: 0.1 s with the heuristic choice, whose calls then run as fast: bench/README.md).
CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC"}


def stack_rows(
    parts: Sequence[np.ndarray[Any, Any]],
    size: int,
    out: np.ndarray[Any, Any] | None = None,
) -> np.ndarray[Any, Any]:
    """``parts`` concatenated along the rows, then grown to ``size`` rows by repeating the last
    row, into ``out`` (``size`` rows) when given.

    The repeated row is input the model already accepted, so padding can neither fail a batch
    nor change the real rows' answers (rows are independent in a batchable model, and the extra
    answers are dropped).
    """
    rows = sum(p.shape[0] for p in parts)
    if out is None:
        if size == rows:
            return parts[0] if len(parts) == 1 else np.concatenate(parts)
        out = np.empty((size, *parts[0].shape[1:]), dtype=parts[0].dtype)
    if len(parts) == 1:
        out[:rows] = parts[0]
    else:
        np.concatenate(parts, out=out[:rows])
    out[rows:] = out[rows - 1]
    return out


def _stacked(
    parts: Mapping[str, Sequence[np.ndarray[Any, Any]]],
) -> dict[str, np.ndarray[Any, Any]]:
    """Each input's arrays concatenated along the rows (no copy for a single array)."""
    return {
        name: arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        for name, arrays in parts.items()
    }


def gpu_buckets(batch_rows: int) -> tuple[int, ...]:
    """The batch sizes a GPU session runs at: powers of two below ``batch_rows``, then it.

    A CUDA session prepares each new input shape (convolution plans, memory plans: about
    0.1-0.16 s for ResNet-50 even with the heuristic cuDNN search), so a dynamic batcher that
    hands it every size from 1 to the maximum keeps paying that while serving. Padding each
    batch up to one of these few sizes, each run by a session of its own prepared during
    warm-up, costs at most twice the rows of GPU compute and keeps that preparation off the
    request path.
    """
    sizes = []
    size = 1
    while size < batch_rows:
        sizes.append(size)
        size *= 2
    return (*sizes, batch_rows)


def _session(path: Path, providers: list[str], intra_op_threads: int, spinning: bool) -> Any:
    chosen: list[Any] = [(p, CUDA_OPTIONS) if p == CUDA else p for p in providers]
    opts = _options(intra_op_threads, spinning)
    if CUDA in providers and cuda.shared_arena():
        opts.add_session_config_entry("session.use_env_allocators", "1")
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=chosen)
    except Exception as exc:
        raise FailedPrecondition(
            f"ONNX Runtime could not load {path} with {providers[0]}: {exc}",
            reason="MODEL_LOAD_FAILED",
        ) from exc


def _sample(spec: TensorSpec, rows: int) -> np.ndarray[Any, Any]:
    shape = [rows if i == 0 and d < 0 else (d if d >= 0 else 1) for i, d in enumerate(spec.shape)]
    if spec.datatype == "BYTES":
        return np.full(shape, "", dtype=object)
    return np.zeros(shape, dtype=spec.dtype)


#: Failures of a warm-up call that are not the sample input's fault (the machine's: memory,
#: the GPU), found in ONNX Runtime's message: they stay fatal (``WARMUP_FAILED``).
_RESOURCE_FAILURES = (
    "failed to allocate",
    "out of memory",
    "cuda failure",
    "cuda error",
    "cudnn failure",
    "cublas failure",
)


def warm_up(runtime: Runtime, runs: int, batch_rows: int) -> float:
    """Run the session ``runs`` times at one row and at ``batch_rows``; returns the fastest
    call at the largest size (what ``auto`` compares across providers).

    The sample input is zeros with 1 for each dim that varies, which some models refuse (a
    Reshape to a shape given as an input). Such a model is served all the same, unmeasured
    (``runtime.unmeasured`` says why; infinity returned): requests it cannot run are answered
    MODEL_EXECUTION_FAILED one by one. A failure that is not the input's fault (memory, the
    GPU: :data:`_RESOURCE_FAILURES`) is FAILED_PRECONDITION, reason ``WARMUP_FAILED``."""
    sig = runtime.signature
    names = sig.output_names
    best = float("inf")
    sizes = [1] if batch_rows <= 1 or not sig.batchable else [1, batch_rows]
    if runtime.buckets:
        sizes = list(runtime.buckets)
    for rows in sizes:
        feeds = {t.name: _sample(t, rows) for t in sig.inputs}
        for _ in range(runs):
            start = time.perf_counter()
            try:
                runtime.run(names, feeds)
            except Exception as exc:
                return _unmeasured(runtime, exc)
            took = time.perf_counter() - start
            if rows == 1:
                runtime.single_call_s = min(runtime.single_call_s, took)
            if rows == sizes[-1]:
                best = min(best, took)
    return best


def _unmeasured(runtime: Runtime, exc: Exception) -> float:
    """Serve ``runtime`` unmeasured after warm-up failed with ``exc`` (see :func:`warm_up`)."""
    text = str(exc).strip()
    if isinstance(exc, MemoryError) or any(f in text.lower() for f in _RESOURCE_FAILURES):
        raise FailedPrecondition(
            f"warm-up of {runtime.path} on {runtime.provider} failed: {exc}",
            reason="WARMUP_FAILED",
        ) from exc
    runtime.unmeasured = text.splitlines()[0][:300] if text else type(exc).__name__
    # Padding batches to the sizes warm-up prepares would only add rows: batches run as sent.
    runtime.buckets = ()
    runtime.sessions_by_rows = {}
    runtime._bindings.clear()
    log.warning(
        "warm-up could not run the model on its sample input (zeros, 1 for each dim that "
        "varies); serving it without the measurements warm-up makes",
        model=str(runtime.path),
        provider=runtime.provider,
        error=runtime.unmeasured,
        hint="--device auto serves on the CPU and batching stays off unless --max-batch-size "
        "is given; requests the model cannot run are answered MODEL_EXECUTION_FAILED",
    )
    return float("inf")


def load_for(settings: SidecarSettings, path: Path) -> Runtime:
    """Open ``path`` with the device, intra-op threads, warm-up and batch size of ``settings``."""
    return load(
        path,
        settings.device,
        intra_op_threads=settings.intra_op_threads,
        spinning=settings.intra_op_spinning,
        warmup_runs=settings.warmup_runs,
        batch_rows=settings.warmup_batch_rows,
    )


#: A CPU session call must take at least this long for coalescing requests to pay: a batched
#: request waits in a thread of its own (a batch needs many) and is handed its rows by the
#: leader, which costs about 200 µs of CPU per request on a 2-core machine (bench/README.md:
#: the 32-feature MLP, 10 µs per call, carries 0.6-0.7x the load batched that it carries
#: unbatched; the heavy MLP, 1.3 ms per call, 2.3x).
BATCHING_MIN_CALL_S = 250e-6


def serving_batch_rows(settings: SidecarSettings, runtime: Runtime) -> tuple[int, str | None]:
    """The batch size to serve ``runtime`` with, and why warm-up left batching off (None
    when it did not): ``--max-batch-size`` when given; unset, the default size on a GPU or
    when warm-up measured a one-row call of at least :data:`BATCHING_MIN_CALL_S`, else 1 (no
    batching, as when warm-up measured nothing)."""
    if settings.max_batch_size is not None:
        return settings.max_batch_size, None
    if runtime.unmeasured is not None:
        log.info("batching off: warm-up could not measure the model", max_batch_size=1)
        return 1, "warm-up could not measure the model; give --max-batch-size to batch it"
    rows = settings.warmup_batch_rows
    why_off = None
    call_us = round(runtime.single_call_s * 1e6, 1)
    threshold_us = round(BATCHING_MIN_CALL_S * 1e6, 1)
    if not runtime.on_gpu and runtime.single_call_s < BATCHING_MIN_CALL_S:
        rows = 1
        why_off = (
            f"a one-row call took {call_us} µs at warm-up, under {threshold_us} µs: handing "
            "requests to a batch would cost more than the call; give --max-batch-size to batch"
        )
    log.info(
        "batch size chosen by warm-up",
        max_batch_size=rows,
        one_row_call_us=call_us,
        threshold_us=threshold_us,
    )
    return rows, why_off


def load(
    path: Path,
    device: str,
    *,
    intra_op_threads: int,
    warmup_runs: int,
    batch_rows: int,
    spinning: bool = False,
) -> Runtime:
    """Open ``path`` on the chosen device and warm it up (``spinning``: let idle intra-op
    threads spin for work)."""
    threads = (intra_op_threads, spinning)
    if not path.is_file():
        raise FailedPrecondition(f"model file {path} does not exist", reason="MODEL_NOT_FOUND")
    if device == "cpu":
        return _open_cpu(path, threads, warmup_runs, batch_rows)[0]
    if device == "cuda":
        cuda.preload()
        if CUDA not in ort.get_available_providers():
            raise FailedPrecondition(
                "--device cuda: this ONNX Runtime build has no CUDA execution provider",
                reason="CUDA_UNAVAILABLE",
            )
        runtime, _ = _open(path, [CUDA, CPU], threads, warmup_runs, batch_rows)
        if not runtime.on_gpu:
            raise FailedPrecondition(
                "--device cuda: the CUDA execution provider could not start (no GPU, or CUDA "
                f"libraries missing); the session got {runtime.provider}",
                reason="CUDA_UNAVAILABLE",
            )
        return runtime
    cpu, cpu_time = _open_cpu(path, threads, warmup_runs, batch_rows)
    if cpu.unmeasured is not None or not cuda.gpu_present():
        # Warm-up could not run the model: nothing to compare, so the CPU.
        return cpu
    cuda.preload()
    try:
        gpu, gpu_time = _open(path, [CUDA, CPU], threads, warmup_runs, batch_rows)
    except FailedPrecondition as exc:
        log.warning("CUDA session failed; serving on CPU", error=exc.message)
        return cpu
    log.info("warm-up timings", cpu_s=cpu_time, gpu_s=gpu_time, gpu_provider=gpu.provider)
    if gpu.on_gpu and gpu_time < cpu_time:
        return gpu
    gpu.close()
    return cpu


#: With ``--intra-op-threads 0`` a multi-threaded CPU session must be this much faster than a
#: single-threaded one at warm-up to be chosen: under concurrent load, single-threaded sessions
#: let request threads run side by side without handing work to ORT's pool and back.
MULTI_THREAD_GAIN = 0.7


def _open_cpu(
    path: Path, threads: tuple[int, bool], warmup_runs: int, batch_rows: int
) -> tuple[Runtime, float]:
    """A CPU session; with 0 intra-op threads, one thread or ORT's default, whichever the
    warm-up shows to be worth it."""
    if threads[0] != 0:
        return _open(path, [CPU], threads, warmup_runs, batch_rows)
    single, single_time = _open(path, [CPU], (1, threads[1]), warmup_runs, batch_rows)
    if single.unmeasured is not None:
        log.info("intra-op threads: 1, as warm-up could not measure the model")
        return single, single_time
    pool = _multi_thread_count()
    if pool == 1:
        log.info("intra-op threads: 1, the one core this process may use")
        return single, single_time
    multi, multi_time = _open(path, [CPU], (pool, threads[1]), warmup_runs, batch_rows)
    chosen = multi if multi_time < MULTI_THREAD_GAIN * single_time else single
    log.info(
        "intra-op threads chosen by warm-up",
        threads=(pool or "default") if chosen is multi else 1,
        single_thread_s=single_time,
        multi_thread_s=multi_time,
    )
    return (multi, multi_time) if chosen is multi else (single, single_time)


def _multi_thread_count() -> int:
    """The intra-op threads of the multi-threaded warm-up candidate: 0 (ONNX Runtime's
    default, one per physical core of the machine) when this process may use every core, else
    the cores it may use (affinity, cgroup CPU quota), so that a container limited to two
    cores of a large node does not run a pool sized for the node; 1 means no candidate."""
    cores = available_cores()
    return 0 if cores >= (os.cpu_count() or cores) else cores


def _open(
    path: Path,
    providers: list[str],
    threads: tuple[int, bool],
    warmup_runs: int,
    batch_rows: int,
) -> tuple[Runtime, float]:
    session = _session(path, providers, *threads)
    signature = with_declared_ranks(signature_of(session), path)
    runtime = Runtime(session, signature, session.get_providers()[0], path)
    if runtime.signature.batchable and batch_rows > 1:
        refused = stacking_changes_answers(runtime.signature, runtime.run)
        if refused is not None:
            runtime.signature = runtime.signature.without_batching(refused)
    if runtime.on_gpu and runtime.signature.batchable and batch_rows > 1:
        runtime.buckets = gpu_buckets(batch_rows)
        pin = os.environ.get("MODELPLANE_CUDA_PINNED", "1") != "0"
        runtime._staging = cuda.StagingBuffers(batch_rows, pin)
        model_bytes = path.stat().st_size
        if separate_sessions(model_bytes, runtime.buckets):
            runtime.sessions_by_rows = _bucket_sessions(
                session, path, providers, threads, runtime.buckets
            )
        else:
            log.warning(
                "one CUDA session serves every batch size: copies of the weights per size would "
                "pass the memory budget, so a change of batch size may re-plan convolutions",
                model_bytes=model_bytes,
                batch_sizes=list(runtime.buckets),
                budget_bytes=SESSION_COPIES_BUDGET,
            )
    return runtime, warm_up(runtime, warmup_runs, batch_rows)


#: GPU memory that the extra per-batch-size sessions' copies of the weights may take.
SESSION_COPIES_BUDGET = 4 << 30


def separate_sessions(model_bytes: int, buckets: Sequence[int]) -> bool:
    """Whether each batch size of ``buckets`` gets a session of its own (see :class:`Runtime`):
    yes while the extra copies of a model of ``model_bytes`` fit :data:`SESSION_COPIES_BUDGET`
    (ResNet-50 in FP32, 100 MB, takes 0.6 GB for the 7 sizes of a 64-row batch)."""
    return model_bytes * (len(buckets) - 1) <= SESSION_COPIES_BUDGET


def _bucket_sessions(
    largest: Any,
    path: Path,
    providers: list[str],
    threads: tuple[int, bool],
    buckets: tuple[int, ...],
) -> dict[int, Any]:
    """A session per batch size of ``buckets`` (the largest size runs ``largest``): see
    :class:`Runtime`. A size whose session did not get the GPU runs on ``largest``."""
    log.info("a CUDA session per batch size", batch_sizes=list(buckets))
    sessions = {buckets[-1]: largest}
    for rows in buckets[:-1]:
        extra = _session(path, providers, *threads)
        if extra.get_providers()[0] == CUDA:
            sessions[rows] = extra
    return sessions
