"""Rollout benchmark: how fast a violated guard takes a candidate out of traffic, and what
shadow mode costs the champion.

1. Rollback time. A control plane and two managed sidecar replicas (real processes, default
   settings: windows every 2 s) serve a deployment under steady traffic. A canary of a broken
   candidate (ONNX Runtime fails on most of its requests) starts; the guard on error rate
   fails on the first window that holds enough candidate requests. Measured: from the end of
   that window (the evidence's ``window_end_time``) to the rollback decision, and to the last
   candidate answer any replica gave (after which every replica serves the champion only).
   Target: under 5 s.
2. Shadow cost. One managed sidecar serving the 32-feature MLP, a closed-loop load generator
   at concurrency 32 (grpc.aio in its own process): champion p99 with no rollout, then with a
   shadow candidate at fractions 1.0 and 0.25, alternated over ``--rounds``. Target: p99 under
   1.1x the no-shadow p99 (sampling allowed and reported).

One JSON line per measurement on stdout, a summary on stderr.

    .venv/bin/python bench/rollout.py [--quick] [--rounds N] [--duration S]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from sidecar_tools import servers  # noqa: E402
from sidecar_tools.oip import infer_request  # noqa: E402

from modelplane import Client  # noqa: E402
from modelplane.testing.onnx_models import faulty_classifier, mlp, save  # noqa: E402
from modelplane.testing.processes import Server, controlplane, sidecar  # noqa: E402
from modelplane.testing.traffic import Load  # noqa: E402
from modelplane.v1 import deployments_pb2 as dp  # noqa: E402

FEATURES = 32
FINAL = {dp.ROLLOUT_STATE_PROMOTED, dp.ROLLOUT_STATE_ROLLED_BACK, dp.ROLLOUT_STATE_ABORTED}


def emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def wait_ended(client: Client, deployment: str, timeout: float) -> dp.Deployment:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d = client.get_deployment(deployment)
        if d.rollout.state in FINAL:
            return d
        time.sleep(0.05)
    raise TimeoutError(f"the rollout of {deployment} did not end within {timeout:.0f}s")


def rollback_time(work: Path, rounds: int) -> list[dict[str, Any]]:
    """Rounds of broken canaries; one record each."""
    cp = controlplane(work, f"sqlite:///{work / 'rollback.db'}", name="cp-rollback").start()
    started: list[Server] = [cp]
    results = []
    try:
        client = Client(cp.address, principal="bench", timeout=30)
        client.create_model("bench")
        good = save(mlp(FEATURES, (64,), 2, seed=0), work / "good.onnx")
        bad = save(faulty_classifier(FEATURES), work / "bad.onnx")
        champion = client.register_version("bench", good, capture_env=False).version
        broken = client.register_version("bench", bad, capture_env=False).version
        client.create_deployment("bench", model="bench", champion_version=champion)
        replicas = [sidecar(work, cp.address, "bench", name=f"rb-sc{i}").start() for i in range(2)]
        started += replicas
        traffic = Load([s.address for s in replicas], "bench", features=FEATURES, pause=0.001)
        traffic.start()
        try:
            time.sleep(2)
            for r in range(rounds):
                client.start_rollout(
                    "bench", broken, strategy="canary", steps=[20, 100], step_duration=60
                )
                d = wait_ended(client, "bench", 60)
                decided = d.rollout.end_time.ToNanoseconds() / 1e9
                window_end = d.rollout.evidence.window_end_time.ToNanoseconds() / 1e9
                time.sleep(3)  # let every replica's last candidate answer show
                # The candidate's answers: its failures (ONNX Runtime refuses most inputs:
                # INVALID_ARGUMENT, MODEL_EXECUTION_FAILED) and the rare inputs it gets through.
                last = traffic.last_seen({"!INVALID_ARGUMENT", str(broken)})
                record = {
                    "bench": "rollback",
                    "round": r,
                    "state": dp.RolloutState.Name(d.rollout.state),
                    "reason": d.rollout.reason,
                    "window_to_decision_s": round(decided - window_end, 3),
                    "window_to_champion_only_s": round(last - window_end, 3),
                    "decision_to_champion_only_s": round(last - decided, 3),
                    "replicas": len(replicas),
                }
                emit(record)
                results.append(record)
        finally:
            traffic.stop()
    finally:
        for s in reversed(started):
            s.stop()
    return results


def load(address: str, request: Path, out_bytes: int, duration: float) -> dict[str, Any]:
    argv = [servers.python(), "-m", "sidecar_tools.loadgen", "--target", address]
    argv += ["--request", str(request), "--expect-bytes", str(out_bytes)]
    argv += ["--concurrency", "32", "--duration", str(duration), "--warmup", "1"]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration + 90, env=servers.bench_env()
    )
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed: {done.stderr.strip()[-1500:]}")
    return next(json.loads(line) for line in done.stdout.splitlines() if line.startswith("{"))


def shadow_cost(work: Path, rounds: int, duration: float) -> list[dict[str, Any]]:
    """Champion p99 at concurrency 32 without and with a shadow candidate."""
    cp = controlplane(work, f"sqlite:///{work / 'shadow.db'}", name="cp-shadow").start()
    started: list[Server] = [cp]
    results = []
    try:
        client = Client(cp.address, principal="bench", timeout=30)
        client.create_model("shadow")
        a = save(mlp(FEATURES, (64,), 2, seed=0), work / "a.onnx")
        b = save(mlp(FEATURES, (64,), 2, seed=1), work / "b.onnx")
        champion = client.register_version("shadow", a, capture_env=False).version
        candidate = client.register_version("shadow", b, capture_env=False).version
        client.create_deployment("shadow", model="shadow", champion_version=champion)
        sc = sidecar(work, cp.address, "shadow", name="shadow-sc").start()
        started.append(sc)
        request = work / "request.bin"
        x = np.random.default_rng(0).standard_normal((1, FEATURES)).astype(np.float32)
        request.write_bytes(infer_request("shadow", "input", x))
        for r in range(rounds):
            for mode, fraction in (("off", 0.0), ("shadow-1.0", 1.0), ("shadow-0.25", 0.25)):
                if fraction:
                    client.start_rollout(
                        "shadow",
                        candidate,
                        strategy="shadow",
                        shadow_fraction=fraction,
                        guards=["shadow.pairs >= 0"],
                    )
                    time.sleep(1.5)  # the sidecar loads the candidate
                point = load(sc.address, request, 8, duration)
                if fraction:
                    d = client.abort_rollout("shadow", reason="bench round done")
                    shadow = d.rollout.evidence.shadow
                    point["shadow_pairs"] = shadow.pairs
                    point["shadow_dropped"] = shadow.dropped
                    time.sleep(1.0)
                record = {"bench": "shadow", "round": r, "mode": mode, **point}
                emit(record)
                results.append(record)
    finally:
        for s in reversed(started):
            s.stop()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round of each, short loads")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    duration = 2.0 if args.quick else args.duration
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
        work = Path(tmp)
        rb = rollback_time(work, rounds)
        sh = shadow_cost(work, rounds, duration)
    total = [r["window_to_champion_only_s"] for r in rb]
    print(
        f"rollback: first violated window → champion only on every replica: "
        f"median {statistics.median(total):.2f} s, max {max(total):.2f} s (target < 5 s)",
        file=sys.stderr,
    )
    off = statistics.median(r["p99_ms"] for r in sh if r["mode"] == "off")
    for mode in ("shadow-1.0", "shadow-0.25"):
        p99 = statistics.median(r["p99_ms"] for r in sh if r["mode"] == mode)
        rps = statistics.median(r["rps"] for r in sh if r["mode"] == mode)
        emit({"bench": "shadow-ratio", "mode": mode, "p99_ratio": round(p99 / off, 3)})
        print(
            f"{mode}: champion p99 {p99:.2f} ms vs {off:.2f} ms without shadow "
            f"({p99 / off:.2f}x, target < 1.10x), {rps:.0f} req/s",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
