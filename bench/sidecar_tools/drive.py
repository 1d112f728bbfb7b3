"""Drive a server with one or several load-generator processes and merge their lines."""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from sidecar_tools import servers
from sidecar_tools.loadgen import SLOT_SLACK

#: Seconds the generator processes get to start (imports, channels) before the first point.
START_DELAY = 4.0


def drive(
    target: str,
    request: Path,
    out_bytes: int,
    points: Sequence[int],
    *,
    duration: float,
    warmup: float,
    channels: int,
    server_pgid: int,
    procs: int = 1,
    prefix: Sequence[str] = (),
    timeout: float = 30.0,
) -> list[dict]:
    """Run the load generator against ``target``; one merged line per concurrency point.

    With ``procs`` > 1 that many generator processes each keep ``point`` calls in flight over
    the same synchronised windows (one Python client process carries about 1,000 large or
    3,000 small calls per second): their rates add up, ``concurrency`` is the total, ``p50_ms``
    is the median of their medians and ``p99_ms`` the largest of their 99th percentiles.
    ``prefix`` goes before the command (``taskset -c 0`` to pin the generator); ``timeout`` is
    each call's gRPC deadline (a call past it counts in ``errors``).
    """
    argv = [*prefix, servers.python(), "-m", "sidecar_tools.loadgen", "--target", target]
    argv += ["--request", str(request), "--expect-bytes", str(out_bytes)]
    argv += ["--concurrency", ",".join(map(str, points))]
    argv += ["--duration", str(duration), "--warmup", str(warmup)]
    argv += ["--channels", str(channels), "--server-pgid", str(server_pgid)]
    argv += ["--timeout", str(timeout)]
    limit = len(points) * (duration + warmup + SLOT_SLACK + 10) + 60
    if procs > 1:
        argv += ["--start-at", f"{time.time() + START_DELAY:.3f}"]
        limit += START_DELAY
    running = [
        subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=servers.bench_env(),
        )
        for _ in range(procs)
    ]
    outputs = []
    for proc in running:
        try:
            out, err = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            for other in running:
                other.kill()
            raise RuntimeError("load generator timed out") from None
        if proc.returncode != 0:
            raise RuntimeError(f"load generator failed: {err.strip()[-1500:]}")
        outputs.append([json.loads(ln) for ln in out.splitlines() if ln.startswith("{")])
    if procs == 1:
        return outputs[0]
    return [merge(list(lines)) for lines in zip(*outputs, strict=True)]


def merge(lines: list[dict]) -> dict:
    """One line for the same point measured by several generator processes."""
    merged = dict(lines[0])
    merged["concurrency"] = sum(ln["concurrency"] for ln in lines)
    merged["client_procs"] = len(lines)
    for key in ("requests", "rps", "errors", "bad_responses", "client_cpu"):
        merged[key] = round(sum(ln.get(key) or 0 for ln in lines), 2)
    p50s = [ln["p50_ms"] for ln in lines if ln.get("p50_ms") is not None]
    p99s = [ln["p99_ms"] for ln in lines if ln.get("p99_ms") is not None]
    merged["p50_ms"] = round(statistics.median(p50s), 3) if p50s else None
    merged["p99_ms"] = max(p99s) if p99s else None
    merged.pop("mean_ms", None)
    # Every process read the server's CPU over (nearly) the same window: keep one reading.
    cpu = [ln["server_cpu"] for ln in lines if ln.get("server_cpu") is not None]
    if cpu and merged["requests"]:
        merged["server_cpu"] = max(cpu)
        merged["server_cpu_us_per_req"] = round(
            max(cpu) * merged["seconds"] / merged["requests"] * 1e6, 1
        )
    return merged
