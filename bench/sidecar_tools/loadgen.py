"""Closed-loop gRPC load generator, run as its own process by ``bench/sidecar.py``.

Each concurrency point keeps N calls in flight over a few ``grpc.aio`` channels for a warm-up
and then a measured window, and prints one JSON line: completed calls per second, latency
percentiles, and the CPU share the client and (``--server-pgid``) the server used. The
serialized OIP ``ModelInferRequest`` is sent as is; every answer is parsed with the OIP stubs
and its first output's size checked (echo servers answer a real serialized response, so the
client does the same work against every server).

    python -m sidecar_tools.loadgen --target 127.0.0.1:PORT --request FILE \
        --expect-bytes N --concurrency 1,8,32 --duration 3 --warmup 1 [--server-pgid PID]
        [--start-at EPOCH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from modelplane.testing.processes import proc_stats
from sidecar_tools.oip import INFER_METHOD

#: Seconds between the end of one point's window and the start of the next (``--start-at``).
SLOT_SLACK = 2.0

_OPTIONS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
]


def cpu_by_process(pgid: int) -> dict[int, float]:
    """CPU seconds (user + system) used so far by each live process of a process group."""
    if not pgid:
        return {}
    tick = os.sysconf("SC_CLK_TCK")
    return {
        pid: (int(fields[11]) + int(fields[12])) / tick
        for pid, fields in proc_stats()
        if int(fields[2]) == pgid
    }


def group_cpu_seconds(pgid: int) -> float | None:
    """CPU seconds used so far by the live processes of a process group (None: unknown)."""
    if not pgid or not os.path.isdir("/proc"):
        return None
    return sum(cpu_by_process(pgid).values())


def _make_checker(expect: int):
    from modelplane.oip import grpc_service_pb2 as pb

    def check_oip(resp: bytes) -> bool:
        msg = pb.ModelInferResponse.FromString(resp)
        if msg.raw_output_contents:
            return len(msg.raw_output_contents[0]) == expect
        return len(msg.outputs) > 0

    return check_oip


@dataclass
class _State:
    recording: bool = False
    stop: bool = False
    errors: int = 0
    bad: int = 0
    first_error: str = ""


async def _point(
    calls: list,
    payload: bytes,
    concurrency: int,
    duration: float,
    warmup: float,
    check,
    server_pgid: int,
    timeout: float = 30.0,
) -> dict:
    latencies: list[float] = []
    state = _State()

    async def worker(i: int) -> None:
        call = calls[i % len(calls)]
        perf = time.perf_counter
        while not state.stop:
            t0 = perf()
            try:
                resp = await call(payload, timeout=timeout)
            except grpc.aio.AioRpcError as err:
                if state.recording:
                    state.errors += 1
                if not state.first_error:
                    state.first_error = f"{err.code().name}: {err.details()}"
                await asyncio.sleep(0.01)
                continue
            t1 = perf()
            if state.recording:
                latencies.append(t1 - t0)
            if not check(resp):
                state.bad += 1

    tasks = [asyncio.create_task(worker(i)) for i in range(concurrency)]
    await asyncio.sleep(warmup)
    state.errors = 0
    state.recording = True
    start, client_cpu = time.perf_counter(), time.process_time()
    server_cpu = group_cpu_seconds(server_pgid)
    await asyncio.sleep(duration)
    state.recording = False
    elapsed = time.perf_counter() - start
    client_cpu = time.process_time() - client_cpu
    server_end = group_cpu_seconds(server_pgid)
    state.stop = True
    await asyncio.gather(*tasks)
    lat = np.asarray(latencies) * 1000.0
    result: dict[str, object] = {
        "concurrency": concurrency,
        "requests": len(lat),
        "seconds": round(elapsed, 3),
        "rps": round(len(lat) / elapsed, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 3) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 3) if len(lat) else None,
        "p999_ms": round(float(np.percentile(lat, 99.9)), 3) if len(lat) else None,
        "max_ms": round(float(lat.max()), 3) if len(lat) else None,
        "mean_ms": round(float(lat.mean()), 3) if len(lat) else None,
        "errors": state.errors,
        "bad_responses": state.bad,
        "client_cpu": round(client_cpu / elapsed, 2),
    }
    if server_cpu is not None and server_end is not None and len(lat):
        result["server_cpu"] = round((server_end - server_cpu) / elapsed, 2)
        result["server_cpu_us_per_req"] = round((server_end - server_cpu) / len(lat) * 1e6, 1)
    if state.first_error:
        result["first_error"] = state.first_error
    return result


async def _main(args: argparse.Namespace) -> None:
    payload = Path(args.request).read_bytes()
    check = _make_checker(args.expect_bytes)
    slot = args.warmup + args.duration + SLOT_SLACK
    for k, concurrency in enumerate(int(c) for c in args.concurrency.split(",")):
        n_channels = max(1, min(args.channels, concurrency))
        channels = [
            grpc.aio.insecure_channel(args.target, options=[*_OPTIONS, ("bench.channel", i)])
            for i in range(n_channels)
        ]
        calls = [ch.unary_unary(INFER_METHOD) for ch in channels]
        if args.start_at:
            # Several generator processes drive one server: each point starts at the same
            # wall-clock moment in all of them, so their measured windows overlap.
            await asyncio.sleep(max(0.0, args.start_at + k * slot - time.time()))
        result = await _point(
            calls,
            payload,
            concurrency,
            args.duration,
            args.warmup,
            check,
            args.server_pgid,
            args.timeout,
        )
        result["timeout_s"] = args.timeout
        result["channels"] = n_channels
        print(json.dumps(result), flush=True)
        for ch in channels:
            await ch.close()


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and run every concurrency point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--request", required=True, help="file with the serialized request")
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument("--expect-bytes", type=int, default=0)
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="each call's gRPC deadline in seconds"
    )
    parser.add_argument(
        "--server-pgid", type=int, default=0, help="process group whose CPU time to report"
    )
    parser.add_argument(
        "--start-at",
        type=float,
        default=0.0,
        help="wall-clock time (epoch seconds) at which the first point starts",
    )
    asyncio.run(_main(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
