"""Alternating A/B of sidecar configurations on the 32-feature MLP, one server at a time.

Each round starts every configuration in turn (batching off), waits for it to be ready and
settle, drives it with ``sidecar_tools/loadgen.py`` at one concurrency, and stops it. Printed
per run: req/s, p99 and the CPU each process of the server used per request (the serving
process as ``main``, its children, such as the observer process, as ``child``); at the end the
median req/s of each configuration and its ratio to the first one. ``--pin`` puts the server
(with its children) on CPU 1 and the load generator on CPU 0 (``taskset``), which takes most
of the scheduler's noise out of a 2-core machine but leaves a child no core of its own.

    .venv/bin/python bench/sidecar_ab.py --configs plain,logged,logged-thread --rounds 5
    .venv/bin/python bench/sidecar_ab.py --configs plain,logged --pin --duration 4
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(BENCH), str(ROOT / "clients" / "python")]

from sidecar_tools import oip, servers  # noqa: E402
from sidecar_tools.loadgen import cpu_by_process  # noqa: E402

from modelplane.testing import onnx_models  # noqa: E402

OFF = ("--max-batch-size", "1")


def configs(work: Path) -> dict[str, tuple[str, ...]]:
    """The sidecar flags of each configuration (all with batching off)."""
    logged = ("--log-dir", str(work / "logs-{run}"), "--baseline", str(work / "baseline.parquet"))
    return {
        "plain": OFF,
        "logged": (*OFF, *logged),
        "logged-thread": (*OFF, *logged, "--observer-mode", "thread"),
        "log-only": (*OFF, "--log-dir", str(work / "logs-{run}")),
        "drift-only": (*OFF, "--baseline", str(work / "baseline.parquet")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="plain,logged,logged-thread")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after ready")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--pin", action="store_true", help="server on CPU 1, client on CPU 0")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sidecar-ab-"))
    model = onnx_models.save(onnx_models.mlp(), work / "mlp.onnx")
    x = np.random.default_rng(1).standard_normal((1, 32)).astype(np.float32)
    request = work / "request"
    request.write_bytes(oip.infer_request("mlp", "input", x))
    data = np.random.default_rng(3).standard_normal((20_000, 32))
    pq.write_table(pa.table({f"x_{j}": data[:, j] for j in range(32)}), work / "baseline.parquet")
    base, why = servers.sidecar_base_command()
    if base is None:
        raise SystemExit(f"cannot start the sidecar here: {why}")
    table = configs(work)
    names = args.configs.split(",")
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"unknown configurations {unknown}; known: {', '.join(table)}")
    server_pin = ["taskset", "-c", "1"] if args.pin else []
    client_pin = ["taskset", "-c", "0"] if args.pin else []
    rps: dict[str, list[float]] = {n: [] for n in names}
    for run in range(args.rounds):
        for name in names:
            flags = [f.replace("{run}", f"{name}-{run}") for f in table[name]]
            port = servers.free_port()
            proc = servers.sidecar_server(
                f"{name}-{run}", [*server_pin, *base], model, port, flags, work
            )
            proc.start()
            pid = proc.pid
            try:
                oip.wait_ready(f"127.0.0.1:{port}", "mlp", 120.0, proc.check_alive)
                time.sleep(args.settle)
                before = cpu_by_process(pid)
                done = subprocess.run(
                    [
                        *client_pin,
                        servers.python(),
                        *("-m", "sidecar_tools.loadgen", "--target", f"127.0.0.1:{port}"),
                        *("--request", str(request), "--concurrency", str(args.concurrency)),
                        *("--duration", str(args.duration), "--warmup", str(args.warmup)),
                    ],
                    capture_output=True,
                    text=True,
                    env=servers.bench_env(),
                    cwd=BENCH,
                    check=True,
                )
                after = cpu_by_process(pid)
            finally:
                proc.stop()
            line = json.loads(done.stdout.strip().splitlines()[-1])
            calls = line["rps"] * (args.duration + args.warmup)
            per_request = {"main": 0.0, "child": 0.0}
            for process, seconds in after.items():
                used = seconds - before.get(process, 0.0)
                per_request["main" if process == pid else "child"] += used / calls * 1e6
            rps[name].append(line["rps"])
            print(
                json.dumps(
                    {
                        "bench": "sidecar_ab",
                        "round": run,
                        "config": name,
                        "pinned": args.pin,
                        "rps": line["rps"],
                        "p99_ms": line["p99_ms"],
                        "cpu_us_per_req": {k: round(v, 1) for k, v in per_request.items()},
                    }
                ),
                flush=True,
            )
    first = statistics.median(rps[names[0]])
    for name in names:
        median = statistics.median(rps[name])
        print(
            json.dumps(
                {
                    "bench": "sidecar_ab",
                    "config": name,
                    "median_rps": median,
                    f"vs_{names[0]}": round(median / first, 3),
                    "rounds": rps[name],
                }
            )
        )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
