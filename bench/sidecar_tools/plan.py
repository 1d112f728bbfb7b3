"""What the sidecar benchmark runs: models, server configurations, the targets' ratios."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import onnx

from modelplane.testing import onnx_models


@dataclass(frozen=True)
class ModelCase:
    """One model under test and the input shape of one request."""

    name: str
    build: Callable[[], onnx.ModelProto]
    request_shape: tuple[int, ...]
    raw_batches: tuple[int, ...]
    transport_bound: bool = False


MODELS = (
    ModelCase("mlp", onnx_models.mlp, (1, 32), (1, 1024), transport_bound=True),
    ModelCase("heavy", onnx_models.heavy_mlp, (1, 256), (1, 64, 256)),
)

BATCH_ON = ("--max-batch-size", "64", "--max-queue-delay", "500us")
BATCH_OFF = ("--max-batch-size", "1")


@dataclass(frozen=True)
class ServerConfig:
    """One server configuration: ``kind`` is echo-threads, echo-aio, sidecar or mlserver.

    ``flags`` are extra sidecar arguments (``{workdir}`` is replaced); ``requires`` names
    sidecar flags that must appear in ``--help`` for the line to run; ``settings`` go into
    MLServer's ``settings.json``; ``concurrency`` limits the points (empty: all).
    """

    name: str
    kind: str
    flags: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)
    concurrency: tuple[int, ...] = ()
    note: str = ""


SERVERS = (
    ServerConfig("echo-threads", "echo-threads", note="grpc.server, thread pool, generic handler"),
    ServerConfig("echo-aio", "echo-aio", note="grpc.aio server, generic handler"),
    ServerConfig("sidecar", "sidecar", BATCH_OFF, note="batching off"),
    ServerConfig("sidecar-batch", "sidecar", BATCH_ON, note="batching on"),
    ServerConfig(
        "sidecar-default",
        "sidecar",
        note="the sidecar's defaults: whatever is queued runs as one batch (up to 32 rows), "
        "no queue delay",
    ),
    ServerConfig(
        "sidecar-intra1",
        "sidecar",
        (*BATCH_OFF, "--intra-op-threads", "1"),
        requires=("--intra-op-threads",),
        note="batching off, one ONNX Runtime intra-op thread",
    ),
    # Prediction logging and drift on the hot path: runs once the sidecar has these flags.
    ServerConfig(
        "sidecar-logged",
        "sidecar",
        (*BATCH_OFF, "--log-dir", "{workdir}/prediction-logs", "--baseline", "{baseline}"),
        requires=("--log-dir", "--baseline"),
        concurrency=(32,),
        note="batching off, Arrow prediction log and drift on (in their own process)",
    ),
    ServerConfig(
        "sidecar-logged-thread",
        "sidecar",
        (
            *BATCH_OFF,
            *("--log-dir", "{workdir}/prediction-logs-thread", "--baseline", "{baseline}"),
            *("--observer-mode", "thread"),
        ),
        requires=("--log-dir", "--baseline", "--observer-mode"),
        concurrency=(32,),
        note="as sidecar-logged, with the log and drift on a thread of the serving process",
    ),
    ServerConfig("mlserver", "mlserver", note="MLServer 1.7.1 defaults"),
    ServerConfig(
        "mlserver-tuned",
        "mlserver",
        settings={"parallel_workers": 0, "metrics_endpoint": None, "debug": False},
        note="parallel workers (inference pool) off, metrics off, debug logging off",
    ),
)

CONCURRENCY = (1, 8, 32, 64)


def medians(results: dict[Any, list[dict]]) -> dict[Any, dict]:
    """One line per key: the median of rps and latencies over the rounds."""
    out = {}
    for key, lines in results.items():
        merged = dict(lines[0])
        for field_name in ("rps", "p50_ms", "p99_ms", "server_cpu_us_per_req"):
            values = [ln[field_name] for ln in lines if ln.get(field_name) is not None]
            merged[field_name] = statistics.median(values) if values else None
        out[key] = merged
    return out


def _get(results: dict, model: str, server: str, conc: int, key: str) -> float | None:
    line = results.get((model, server, conc))
    return None if line is None else line.get(key)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else round(a / b, 3)


def _floor(results: dict, model: str, conc: int, key: str, pick: Callable) -> float | None:
    values = [_get(results, model, s, conc, key) for s in ("echo-threads", "echo-aio")]
    present = [v for v in values if v is not None]
    return pick(present) if present else None


def _row(model: str, server: str, target: str, value: float | None, goal: float | None) -> dict:
    higher = not target.startswith("p50")
    met = None if value is None or goal is None else (value >= goal if higher else value <= goal)
    return {
        "model": model,
        "server": server,
        "target": target,
        "value": value,
        "goal": goal,
        "met": met,
    }


def summary(results: dict) -> list[dict]:
    """The ratios the targets are about (``goal`` None: for information; value None: missing).

    The transport-floor targets apply to the models whose compute is negligible next to the
    transport (the 32-feature MLP); the batching target applies to the compute-heavy ones.
    """
    out = []
    cases = {m.name: m for m in MODELS}
    for model in sorted({m for m, _, _ in results}):
        case = cases[model]
        floor_rps = _floor(results, model, 32, "rps", max)
        floor_p50 = _floor(results, model, 1, "p50_ms", min)
        threads_rps = _get(results, model, "echo-threads", 32, "rps")
        mls = _get(results, model, "mlserver", 32, "rps")
        goal = 0.9 if case.transport_bound else None
        for server in ("sidecar", "sidecar-batch", "sidecar-intra1"):
            rps = _get(results, model, server, 32, "rps")
            p50 = _get(results, model, server, 1, "p50_ms")
            out.append(
                _row(model, server, "rps@32 / transport floor", _ratio(rps, floor_rps), goal)
            )
            out.append(
                _row(model, server, "rps@32 / echo-threads (info)", _ratio(rps, threads_rps), None)
            )
            out.append(_row(model, server, "rps@32 / MLServer defaults", _ratio(rps, mls), 2.0))
            cpu = _get(results, model, server, 32, "server_cpu_us_per_req")
            cpu_echo = _get(results, model, "echo-threads", 32, "server_cpu_us_per_req")
            out.append(
                _row(
                    model,
                    server,
                    "server CPU/req@32 / echo-threads (info)",
                    _ratio(cpu, cpu_echo),
                    None,
                )
            )
            out.append(
                _row(
                    model,
                    server,
                    "p50@1 / transport floor",
                    _ratio(p50, floor_p50),
                    1.3 if case.transport_bound else None,
                )
            )
        on = _get(results, model, "sidecar-batch", 64, "rps")
        off = _get(results, model, "sidecar", 64, "rps")
        out.append(
            _row(
                model,
                "sidecar-batch",
                "rps@64 batching on / off",
                _ratio(on, off),
                None if case.transport_bound else 2.0,
            )
        )
        plain = _get(results, model, "sidecar", 32, "rps")
        for server in ("sidecar-logged", "sidecar-logged-thread"):
            logged = _get(results, model, server, 32, "rps")
            out.append(
                _row(model, server, "rps@32 / transport floor", _ratio(logged, floor_rps), goal)
            )
            out.append(
                _row(
                    model,
                    server,
                    "rps@32 logging+drift on / off (info)",
                    _ratio(logged, plain),
                    None,
                )
            )
    return out
