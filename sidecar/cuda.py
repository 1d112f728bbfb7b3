"""The CUDA side of a sidecar process: whether a GPU is there, CUDA's libraries loaded once
with the wait mode set, the CUDA runtime through ctypes, batches staged in page-locked memory,
and one memory arena for every CUDA session of the process.

Each of these is a process-wide setting made once, before or beside ONNX Runtime's own CUDA
use; ``sidecar.runtime`` decides when a session needs them.
"""

from __future__ import annotations

import ctypes
import functools
import os
from typing import Any

import numpy as np
import onnxruntime as ort
import structlog

log = structlog.get_logger("modelplane.sidecar.cuda")

CUDA = "CUDAExecutionProvider"


def gpu_present() -> bool:
    """Whether this machine exposes an NVIDIA GPU to the process."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return os.path.exists("/dev/nvidiactl") and CUDA in ort.get_available_providers()


#: How a process waits for the GPU (``MODELPLANE_CUDA_SYNC``): ``block`` sleeps until the work
#: is done, ``spin`` polls (CUDA's choice when a machine has more cores than GPU processes),
#: ``yield`` polls and yields. With several workers per GPU, spinning burns a core per worker
#: on waiting while the gRPC threads need them.
_CUDA_SYNC_FLAGS = {"spin": 1, "yield": 2, "block": 4}


@functools.cache
def preload() -> None:
    """Load the CUDA libraries and set the wait mode: once per process, before the first CUDA
    session (managed mode loads a session per version)."""
    load_dlls = getattr(ort, "preload_dlls", None)
    if load_dlls is not None:
        try:
            load_dlls()
        except Exception as exc:
            log.warning("could not preload the CUDA libraries", error=str(exc))
    _set_sync(os.environ.get("MODELPLANE_CUDA_SYNC", "block"))


@functools.cache
def cudart() -> Any:
    """The CUDA runtime library ONNX Runtime loaded (``None`` without one)."""
    for soname in ("libcudart.so.13", "libcudart.so.12"):
        try:
            lib = ctypes.CDLL(soname)
        except OSError:
            continue
        lib.cudaHostRegister.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint]
        lib.cudaHostUnregister.argtypes = [ctypes.c_void_p]
        lib.cudaSetDeviceFlags.argtypes = [ctypes.c_uint]
        return lib
    return None


def _set_sync(mode: str) -> None:
    """Set this process's CUDA scheduling flag before any session creates the GPU context."""
    flag = _CUDA_SYNC_FLAGS.get(mode)
    if flag is None:
        log.warning("MODELPLANE_CUDA_SYNC must be spin, yield or block", value=mode)
        return
    lib = cudart()
    if lib is not None:
        code = lib.cudaSetDeviceFlags(flag)
        log.info("CUDA wait mode", mode=mode, library=lib._name, cuda_error=code)


#: ``cudaHostRegisterPortable``: the pages count as pinned for every CUDA context.
_HOST_REGISTER_PORTABLE = 1
_PAGE = 4096


#: What the staging buffers of one model may hold in all (bytes).
MAX_STAGING_BYTES = 1 << 30


class StagingBuffers:
    """One host buffer per input of a batchable CUDA model, page-locked for the GPU.

    A batch is copied once, from the requests' arrays into the buffer of its input, and a
    page-locked buffer goes to the GPU by DMA; from ordinary (pageable) memory the CUDA driver
    copies it once more through a pinned bounce buffer of its own, on the CPU. Each buffer holds
    the largest batch size; a smaller batch uses its first rows. Only the session's own thread
    uses them, one call at a time, so a buffer is free again once a call's input is on the GPU.
    ``MODELPLANE_CUDA_PINNED=0`` keeps them pageable. All buffers together hold at most
    ``max_bytes`` (page-locked memory is taken from the host for good); an input whose buffer
    would pass that goes without one.
    """

    def __init__(self, rows: int, pin: bool, max_bytes: int = MAX_STAGING_BYTES) -> None:
        self.rows = rows
        self.pin = pin and cudart() is not None
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._buffers: dict[str, np.ndarray[Any, Any]] = {}
        self._refused: set[str] = set()
        self._pinned: list[int] = []

    def buffer(self, name: str, like: np.ndarray[Any, Any]) -> np.ndarray[Any, Any] | None:
        """The buffer for input ``name`` shaped ``[rows, *like.shape[1:]]``; ``None`` when
        ``like``'s layout differs from the one the buffer was made for."""
        buf = self._buffers.get(name)
        if buf is None:
            if name in self._refused:
                return None
            shape = (self.rows, *like.shape[1:])
            nbytes = int(np.prod(shape, dtype=np.int64)) * like.dtype.itemsize
            if self.nbytes + nbytes > self.max_bytes:
                self._refused.add(name)
                log.warning(
                    "an input's batch buffer would pass the staging budget; its batches are "
                    "stacked in ordinary memory",
                    input=name,
                    nbytes=nbytes,
                    budget_bytes=self.max_bytes,
                )
                return None
            buf = self._buffers[name] = self._allocate(shape, like.dtype)
            self.nbytes += nbytes
        if buf.dtype != like.dtype or buf.shape[1:] != like.shape[1:]:
            return None
        return buf

    def _allocate(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray[Any, Any]:
        nbytes = int(np.prod(shape)) * dtype.itemsize
        raw = np.empty(nbytes + _PAGE, dtype=np.uint8)
        start = -raw.ctypes.data % _PAGE
        buf = raw[start : start + nbytes].view(dtype).reshape(shape)
        if self.pin and nbytes:
            code = cudart().cudaHostRegister(buf.ctypes.data, nbytes, _HOST_REGISTER_PORTABLE)
            if code == 0:
                self._pinned.append(buf.ctypes.data)
            else:
                log.warning(
                    "could not page-lock a batch buffer; batches reach the GPU from pageable "
                    "memory",
                    cuda_error=code,
                    nbytes=nbytes,
                )
                self.pin = False
        return buf

    def release(self) -> None:
        """Unlock the pages (before the buffers are freed)."""
        lib = cudart()
        for address in self._pinned:
            lib.cudaHostUnregister(address)
        self._pinned.clear()
        self._buffers.clear()
        self._refused.clear()
        self.nbytes = 0


@functools.cache
def shared_arena() -> bool:
    """Register one CUDA memory arena for every CUDA session of this process; whether that
    worked (``MODELPLANE_CUDA_SHARED_ARENA=0``: each session keeps an arena of its own).

    A batchable model runs a session per batch size (see :class:`sidecar.runtime.Runtime`),
    one call at a time on one thread. With an arena each, a process keeps the activation memory
    of every size at once; sharing one keeps about what the largest size needs. ResNet-50 with
    sessions for 1 to 64 rows took 5.5 GB with an arena each and 4.0 GB with one shared; 8
    workers of it peaked at 58 GB with an arena each and 42 GB with one, at the same
    throughput; 12 workers failed warm-up on an 80 GB H100 with an arena each but fit with one
    (bench/README.md). The arena grows by what is asked for, not by powers of two, since
    warm-up asks for every size once and serving then reuses those blocks.
    """
    if os.environ.get("MODELPLANE_CUDA_SHARED_ARENA", "1") == "0":
        return False
    try:
        memory = ort.OrtMemoryInfo(
            "Cuda", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
        )
        same_as_requested = ort.OrtArenaCfg({"arena_extend_strategy": 1})
        ort.create_and_register_allocator_v2(CUDA, memory, {"device_id": "0"}, same_as_requested)
    except Exception as exc:
        log.warning(
            "could not share one CUDA memory arena between sessions; each keeps its own",
            error=str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else repr(exc),
        )
        return False
    log.info("CUDA sessions share one memory arena")
    return True
