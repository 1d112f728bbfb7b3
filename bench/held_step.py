"""What one window report costs the control plane while a complete canary step is held.

A step that has lasted its time but whose guards cannot be evaluated yet (here
``candidate.accuracy`` with no labels reported) is judged again on every report, over the sum
of every report of the step. This runs a real control plane (gRPC on loopback, SQLite) and ten
synthetic replicas (the rollout tests' ``Sidecar``) that report windows in turn, and prints the
median time of one report (ReportWindow, plus the GetDeployment the replica makes first) after
each block of reports, twice in one run: with the step's sum kept with the rollout and each
report added to it (``kept``, what the control plane does), and with the sum recomputed from
the step's stored reports on every judgement (``resummed``, the previous version, as the
baseline).

    .venv/bin/python bench/held_step.py [--blocks 8] [--per-block 250] [--mode kept|resummed]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from controlplane.rollouts import step_sum  # noqa: E402
from modelplane.server import configure_logging  # noqa: E402
from tests.controlplane.conftest import start_controlplane  # noqa: E402
from tests.controlplane.test_deployments_api import Sidecar, deployed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--per-block", type=int, default=250)
    parser.add_argument("--replicas", type=int, default=10)
    parser.add_argument("--mode", choices=["kept", "resummed"], action="append")
    args = parser.parse_args()
    configure_logging("warning")
    current, take_in = step_sum.current, step_sum.take_in
    for mode in args.mode or ["kept", "resummed"]:
        if mode == "resummed":  # the previous version: no sum kept, every judgement re-sums
            step_sum.current = lambda tx, d, r: step_sum.summed(step_sum.step_reports(tx, d, r), r)
            step_sum.take_in = lambda tx, d, r: None
        else:
            step_sum.current, step_sum.take_in = current, take_in
        run(args, mode)
    step_sum.current, step_sum.take_in = current, take_in


def run(args: argparse.Namespace, mode: str) -> None:
    folder = Path(tempfile.mkdtemp(prefix="held-step-"))
    cp = start_controlplane(folder, f"sqlite:///{folder / 'cp.db'}")
    try:
        with cp.client() as c:
            dep, versions = deployed(c, folder)
            c.start_rollout(
                dep,
                versions[1],
                strategy="canary",
                steps=[10, 100],
                step_duration=0.1,
                guards=["candidate.accuracy >= 0.9"],
            )
            replicas = [Sidecar(c, dep, f"r{i}") for i in range(args.replicas)]
            time.sleep(0.3)  # the first step has lasted its time: from now on it is held
            sent = 0
            for _ in range(args.blocks):
                times = []
                for _ in range(args.per_block):
                    replica = replicas[sent % len(replicas)]
                    sent += 1
                    started = time.perf_counter()
                    replica.report(champion=50, candidate=5)
                    times.append(time.perf_counter() - started)
                record = {
                    "bench": "held_step",
                    "mode": mode,
                    "reports": sent,
                    "median_ms_per_report": round(statistics.median(times) * 1e3, 1),
                    "held": c.get_deployment(dep).rollout.step == 0,
                }
                print(json.dumps(record), flush=True)
    finally:
        cp.handle.stop(0)


if __name__ == "__main__":
    main()
