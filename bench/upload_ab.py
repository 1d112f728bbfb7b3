"""Upload A/B: the control plane of this tree against another checkout's, side by side.

One client uploads random 1 MiB blobs back to back, alternating between the two servers round
by round (the order flipped every round); the figure is each server's CPU time per upload,
read from /proc/PID/stat, which moves less with the machine's load than wall time does.

    git worktree add /tmp/before <rev>
    .venv/bin/python bench/upload_ab.py --baseline-tree /tmp/before --rounds 8 --uploads 40
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _start(tree: Path | None, folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    folder.mkdir(parents=True)
    address = f"127.0.0.1:{_free_port()}"
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = f"{tree}:{tree}/clients/python"
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelplane.cli", "controlplane", "serve", "--listen", address,
         "--db", f"sqlite:///{folder}/cp.db", "--artifact-root", str(folder / "artifacts")],
        env=env, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    from modelplane import Client

    deadline = time.monotonic() + 60
    while True:
        try:
            with Client(address, timeout=2, retries=1) as c:
                list(c.list_models())
            return proc, address
        except Exception:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-tree", type=Path, required=True, help="the other checkout")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--uploads", type=int, default=40, help="uploads per server per round")
    args = parser.parse_args()
    from modelplane import Client

    with tempfile.TemporaryDirectory() as scratch:
        servers = {
            "baseline": _start(args.baseline_tree.resolve(), Path(scratch) / "baseline"),
            "this tree": _start(None, Path(scratch) / "this"),
        }
        cpu_ms: dict[str, list[float]] = {name: [] for name in servers}
        wall_ms: dict[str, list[float]] = {name: [] for name in servers}
        try:
            for r in range(args.rounds):
                order = list(servers.items())
                for name, (proc, address) in order if r % 2 == 0 else reversed(order):
                    with Client(address, timeout=60, retries=1) as c:
                        c.upload_blob(os.urandom(1 << 20))
                        blobs = [os.urandom(1 << 20) for _ in range(args.uploads)]
                        cpu0, t0 = _cpu_seconds(proc.pid), time.perf_counter()
                        for blob in blobs:
                            c.upload_blob(blob)
                        wall_ms[name].append((time.perf_counter() - t0) / args.uploads * 1e3)
                        cpu_ms[name].append((_cpu_seconds(proc.pid) - cpu0) / args.uploads * 1e3)
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait()
    for name in servers:
        print(json.dumps({
            "bench": "upload_ab", "server": name, "rounds": args.rounds,
            "server_cpu_ms_per_upload": [round(v, 2) for v in cpu_ms[name]],
            "server_cpu_ms_median": round(statistics.median(cpu_ms[name]), 2),
            "wall_ms_median": round(statistics.median(wall_ms[name]), 2),
        }))  # fmt: skip


if __name__ == "__main__":
    main()
