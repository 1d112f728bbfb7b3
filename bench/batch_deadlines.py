"""Dynamic batching under client deadlines, A/B against another checkout in the same run.

The sidecar serves a 32 -> 1024 -> 1024 -> 2 MLP with batching on (``--max-batch-size 32
--max-queue-delay 2ms`` by default) and ``sidecar_tools/loadgen.py`` keeps N calls in flight,
each with the given gRPC deadline. Printed per run (one JSON line): the tree, the deadline,
answered calls per second, calls past their deadline, p50/p99 of the answered ones, and the
mean rows per session call (``modelplane_inference_batch_size``). Rounds alternate the trees;
at the end, the median of each. Deadlines close to the latency under load are where a batcher
that holds requests for more rows and one that runs them early part ways.

    .venv/bin/python bench/batch_deadlines.py --deadline-ms 15,1000 --rounds 3 \\
        --baseline-tree /tmp/before        # e.g. `git worktree add /tmp/before <rev>`
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from sidecar_tools import drive, oip, servers

from modelplane.testing import onnx_models

SERVER_CPU = ("taskset", "-c", "1")
CLIENT_CPU = ("taskset", "-c", "0")


def batch_rows(metrics_port: int) -> tuple[float, float]:
    """The sum and count of ``modelplane_inference_batch_size`` now."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read()
    total = count = 0.0
    for line in text.decode().splitlines():
        if line.startswith("modelplane_inference_batch_size_sum"):
            total += float(line.split()[-1])
        elif line.startswith("modelplane_inference_batch_size_count"):
            count += float(line.split()[-1])
    return total, count


def run_once(args: argparse.Namespace, tree: str, deadline_ms: float, work: Path) -> dict:
    """Start the sidecar of ``tree`` ("" for this checkout), drive it, stop it."""
    base, why = servers.sidecar_base_command()
    if base is None:
        raise SystemExit(f"cannot start the sidecar here: {why}")
    port, metrics = servers.free_port(), servers.free_port()
    flags = ["--metrics-listen", f"127.0.0.1:{metrics}", "--device", "cpu"]
    flags += ["--max-batch-size", str(args.max_batch_size), "--max-queue-delay", args.delay]
    env = {"PYTHONPATH": f"{tree}:{tree}/clients/python"} if tree else {}
    name = f"sidecar-{'baseline' if tree else 'current'}"
    server = servers.sidecar_server(name, base, work / "mlp.onnx", port, flags, work, env)
    if args.pin:
        server.argv = [*SERVER_CPU, *server.argv]
    server.start()
    try:
        oip.wait_ready(f"127.0.0.1:{port}", "mlp", 120, server.check_alive)
        before = batch_rows(metrics)
        [line] = drive.drive(
            f"127.0.0.1:{port}",
            work / "request",
            0,
            [args.concurrency],
            duration=args.duration,
            warmup=args.warmup,
            channels=2,
            server_pgid=server.pid,
            prefix=CLIENT_CPU if args.pin else (),
            timeout=deadline_ms / 1000,
        )
        after = batch_rows(metrics)
    finally:
        server.stop()
    calls = after[1] - before[1]
    return {
        "bench": "batch_deadlines",
        "tree": tree or "current",
        "deadline_ms": deadline_ms,
        "concurrency": args.concurrency,
        "rps": line["rps"],
        "past_deadline": line["errors"],
        "p50_ms": line["p50_ms"],
        "p99_ms": line["p99_ms"],
        "mean_batch_rows": round((after[0] - before[0]) / calls, 2) if calls else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--deadline-ms", type=lambda s: [float(x) for x in s.split(",")], default=[15.0, 1000.0]
    )
    parser.add_argument("--baseline-tree", default="", help="another checkout to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--delay", default="2ms", help="the sidecar's --max-queue-delay")
    parser.add_argument("--pin", action="store_true", help="server on CPU 1, client on CPU 0")
    args = parser.parse_args(argv)
    trees = [""] + ([str(Path(args.baseline_tree).resolve())] if args.baseline_tree else [])
    results: dict[tuple[str, float], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="modelplane-bench-deadlines-") as tmp:
        work = Path(tmp)
        onnx_models.save(onnx_models.mlp(32, (1024, 1024), 2), work / "mlp.onnx")
        x = np.random.default_rng(1).standard_normal((1, 32)).astype(np.float32)
        (work / "request").write_bytes(oip.infer_request("mlp", "input", x))
        for _ in range(args.rounds):
            for deadline in args.deadline_ms:
                for tree in trees:
                    line = run_once(args, tree, deadline, work)
                    print(json.dumps(line), flush=True)
                    results.setdefault((line["tree"], deadline), []).append(line)
                    time.sleep(0.5)
    for (tree, deadline), lines in sorted(results.items()):
        medians = {
            key: statistics.median(x[key] for x in lines if x[key] is not None)
            for key in ("rps", "past_deadline", "mean_batch_rows")
            if any(x[key] is not None for x in lines)
        }
        print(f"{tree:>20} {deadline:>7g} ms  medians {medians}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
