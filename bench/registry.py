"""Registry benchmark: Modelplane's control plane against MLflow's tracking server.

Both servers run on this machine in the same invocation, each on a fresh database (SQLite file
or a new PostgreSQL database) and a fresh artifact folder. Load comes from separate client
processes (``registry_worker.py``; Modelplane's SDK in ``.venv``, MLflow's client in
``.venv-peers/mlflow``), 1 or 8 at a time, each calling back to back:

- register: a distinct ~1 MB ONNX model per call. Modelplane: blob upload + CreateModelVersion
  (the server also parses the ONNX signature). MLflow: ``log_artifact`` to a run through the
  server's artifact proxy + ``create_model_version``.
- get: read one registered version (Modelplane ``GetModelVersion``, MLflow
  ``get_model_version``), cycling through the versions registered before.

One JSON line per point goes to stdout (ops/s, p50/p99 latency, server CPU per operation),
then one summary line per backend and operation with the Modelplane/MLflow throughput ratio at
the highest client count; a readable table goes to stderr.

    .venv/bin/python bench/registry.py [--duration 5] [--clients 1,8] [--rounds 1]
        [--backends sqlite,postgresql] [--systems modelplane,mlflow] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np

from modelplane.testing import onnx_models

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().with_name("registry_worker.py")
MLFLOW_PYTHON = ROOT / ".venv-peers" / "mlflow" / "bin" / "python"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
MODEL = "bench-registry"
TARGET = 2.0
QUIET_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def emit(line: dict) -> None:
    """Print one JSON result line."""
    print(json.dumps({"bench": "registry", **line}), flush=True)


def note(message: str) -> None:
    """Print a progress or skip message for people (stderr)."""
    print(f"[registry bench] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and all its live descendants (Linux /proc)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += times.get(current, 0.0)
        todo += [child for child, parent in parents.items() if parent == current]
    return total


@contextmanager
def database(
    backend: str, system: str, workdir: Path, prefix: str = "bench_registry"
) -> Iterator[str]:
    """A fresh database URL for one server; a PostgreSQL database is dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{workdir / f'{system}.db'}"
        return
    import psycopg

    name = f"{prefix}_{system}_{os.getpid()}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def postgres_reachable() -> str:
    """Empty when PostgreSQL answers, else why not."""
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".strip()
    return ""


class Server:
    """A server process started in its own process group, logging to a file."""

    def __init__(self, system: str, command: list[str], workdir: Path, log: Path) -> None:
        self.system = system
        self.log = log
        env = {**os.environ, **QUIET_ENV}
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                command,
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.address = ""

    def wait_ready(self, timeout: float) -> None:
        """Raise with the log's tail when the server is not up within ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self.ready():
                return
            time.sleep(0.2)
        tail = self.log.read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"{self.system} server did not start; its log ends with:\n{tail}")

    def ready(self) -> bool:
        """Whether the server answers yet."""
        raise NotImplementedError

    def create_model(self, name: str) -> None:
        """Create the registered model every version goes to."""
        raise NotImplementedError

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by the server and its worker processes."""
        return tree_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        """SIGTERM to the server's process group; SIGKILL after 20 s."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class ModelplaneServer(Server):
    """``python -m controlplane serve`` on a free port with ``--workers`` processes (MLflow's
    server runs its default four)."""

    def __init__(self, db_url: str, workdir: Path, workers: str) -> None:
        command = [sys.executable, "-m", "controlplane", "serve", "--listen", "127.0.0.1:0"]
        command += ["--db", db_url, "--artifact-root", str(workdir / "modelplane-artifacts")]
        command += ["--workers", workers]
        self.supervised = workers != "1"
        super().__init__("modelplane", command, workdir, workdir / "modelplane.log")

    def ready(self) -> bool:
        for line in self.log.read_text(errors="replace").splitlines():
            # With several workers, the supervisor's line says all of them are up.
            if "control plane serving" in line and (not self.supervised or "workers" in line):
                found = re.search(r'"port": (\d+)|\bport=(\d+)', line)
                if found:
                    self.address = f"127.0.0.1:{found.group(1) or found.group(2)}"
                    return True
        return False

    def create_model(self, name: str) -> None:
        from modelplane import Client

        with Client(self.address, principal="bench") as client:
            client.create_model(name)


class MlflowServer(Server):
    """``mlflow server`` with its artifact proxy, default workers and security settings."""

    def __init__(self, db_url: str, workdir: Path) -> None:
        port = free_port()
        mlflow = str(MLFLOW_PYTHON.parent / "mlflow")
        command = [mlflow, "server", "--backend-store-uri", db_url, "--serve-artifacts"]
        command += ["--artifacts-destination", str(workdir / "mlflow-artifacts")]
        command += ["--host", "127.0.0.1", "--port", str(port)]
        super().__init__("mlflow", command, workdir, workdir / "mlflow.log")
        self.address = f"127.0.0.1:{port}"

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.address}/health", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def create_model(self, name: str) -> None:
        request = urllib.request.Request(
            f"http://{self.address}/api/2.0/mlflow/registered-models/create",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as r:
            r.read()


def mlflow_unavailable() -> str:
    """Empty when MLflow's environment can run, else why not."""
    if not MLFLOW_PYTHON.exists():
        return (
            f"{MLFLOW_PYTHON} is missing; build it with `make bench` or "
            "`python3 -m venv .venv-peers/mlflow && "
            ".venv-peers/mlflow/bin/pip install -r bench/peers/mlflow.txt`"
        )
    done = subprocess.run(
        [str(MLFLOW_PYTHON), "-c", "import mlflow; print(mlflow.__version__)"],
        capture_output=True,
        text=True,
        env={**os.environ, **QUIET_ENV},
    )
    if done.returncode != 0:
        return f"`import mlflow` fails in .venv-peers/mlflow: {done.stderr.strip()[-500:]}"
    return ""


class Pool:
    """Client processes for one server, reused for every point measured against it."""

    def __init__(self, server: Server, size: int, args: argparse.Namespace, work: Path) -> None:
        self.server = server
        self.args = args
        python = sys.executable if server.system == "modelplane" else str(MLFLOW_PYTHON)
        self.procs = []
        for i in range(size):
            command = [python, str(WORKER), server.system, "--address", server.address]
            command += ["--model", MODEL, "--artifact", str(args.artifact_path)]
            command += ["--workdir", str(work / f"client-{i}")]
            self.procs.append(
                subprocess.Popen(
                    command,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    env={**os.environ, **QUIET_ENV},
                )
            )
        self._expect(self.procs, "ready")

    def _expect(self, procs: list[subprocess.Popen[str]], word: str) -> None:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if line != word:
                self.close()
                raise RuntimeError(f"a {self.server.system} client exited (expected {word!r})")

    def _send(self, procs: list[subprocess.Popen[str]], line: str) -> None:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(line + "\n")
            proc.stdin.flush()

    def warm(self) -> int:
        """Every client registers and reads a few versions, so every server worker has served
        both calls before anything is measured; returns how many versions now exist."""
        size = len(self.procs)
        self.point("register", size, 0, duration=0.0)
        registered = size * self.args.warmup_register
        self.point("get", size, registered, duration=0.0)
        return registered

    def point(self, op: str, clients: int, versions: int, duration: float | None = None) -> dict:
        """Warm up ``clients`` workers, release them together, and merge their results."""
        procs = self.procs[:clients]
        warmup = self.args.warmup_register if op == "register" else self.args.warmup_get
        task = {
            "op": op,
            "versions": versions,
            "warmup": warmup,
            "duration": self.args.duration if duration is None else duration,
        }
        self._send(procs, json.dumps(task))
        self._expect(procs, "warm")
        cpu_before = self.server.cpu_seconds()
        self._send(procs, "go")
        results = []
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                self.close()
                raise RuntimeError(f"a {self.server.system} client exited while measuring")
            results.append(json.loads(line))
        server_cpu = self.server.cpu_seconds() - cpu_before
        latencies = np.array([x for r in results for x in r["latencies"]])
        wall = max(r["elapsed"] for r in results)
        errors = sum(r["errors"] for r in results)
        ops = len(latencies)
        point = {
            "system": self.server.system,
            "op": op,
            "clients": clients,
            "ops": ops,
            "errors": errors,
            "seconds": round(wall, 3),
            "ops_per_s": round(ops / wall, 1) if wall else 0.0,
            "p50_ms": round(float(np.percentile(latencies, 50)) * 1e3, 2) if ops else None,
            "p99_ms": round(float(np.percentile(latencies, 99)) * 1e3, 2) if ops else None,
            "server_cpu_ms_per_op": round(server_cpu / max(ops, 1) * 1e3, 2),
            "client_cpu_ms_per_op": round(
                sum(r["client_cpu"] for r in results) / max(ops, 1) * 1e3, 2
            ),
        }
        if errors:
            point["first_error"] = next(r["first_error"] for r in results if r["first_error"])
        return point

    def close(self) -> None:
        """Tell every client to exit (killing any that does not)."""
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    assert proc.stdin is not None
                    proc.stdin.write("\n")
                    proc.stdin.close()
                    proc.wait(10)
                except (OSError, subprocess.TimeoutExpired):
                    proc.kill()
                    proc.wait()


def start_systems(
    backend: str, systems: list[str], args: argparse.Namespace, workdir: Path, stack: ExitStack
) -> dict[str, Pool]:
    """Start every system's server on a fresh database (together) and its client pool."""
    servers: dict[str, Server] = {}
    for system in systems:
        work = workdir / f"{backend}-{system}"
        work.mkdir()
        url = stack.enter_context(database(backend, system, work))
        if system == "modelplane":
            servers[system] = ModelplaneServer(url, work, args.modelplane_workers)
        else:
            servers[system] = MlflowServer(url, work)
        stack.callback(servers[system].stop)
    pools = {}
    for system, server in servers.items():
        try:
            server.wait_ready(args.start_timeout)
            server.create_model(MODEL)
            pools[system] = Pool(server, max(args.clients), args, workdir / f"{backend}-{system}")
        except (RuntimeError, OSError) as exc:
            note(f"{system} on {backend} skipped: {exc}")
            emit({"skipped": system, "backend": backend, "reason": str(exc)[-1000:]})
            server.stop()
            continue
        stack.callback(pools[system].close)
    return pools


def measure_backend(
    backend: str, systems: list[str], args: argparse.Namespace, workdir: Path
) -> list[dict]:
    """Every point on one backend; the systems take turns point by point, order alternating."""
    points = []
    with ExitStack() as stack:
        pools = start_systems(backend, systems, args, workdir, stack)
        registered = {system: pool.warm() for system, pool in pools.items()}
        turn = 0
        for _ in range(args.rounds):
            for op in ("register", "get"):
                for clients in args.clients:
                    order = list(pools) if turn % 2 == 0 else list(pools)[::-1]
                    turn += 1
                    for system in order:
                        point = pools[system].point(op, clients, registered[system])
                        point["backend"] = backend
                        emit(point)
                        points.append(point)
                        if op == "register":
                            # Warm-up registrations count too: versions 1..N all exist.
                            registered[system] += point["ops"] + clients * args.warmup_register
    return points


def summarize(points: list[dict], clients: int) -> list[dict]:
    """One line per backend and operation: Modelplane/MLflow throughput at ``clients``.

    With several rounds each side's figure is its median over the rounds.
    """
    lines = []
    rates: dict[tuple[str, str, str], list[float]] = {}
    for p in points:
        if p["clients"] == clients:
            rates.setdefault((p["backend"], p["system"], p["op"]), []).append(p["ops_per_s"])
    for backend in dict.fromkeys(p["backend"] for p in points):
        for op in ("register", "get"):
            ours = rates.get((backend, "modelplane", op))
            theirs = rates.get((backend, "mlflow", op))
            if not ours or not theirs:
                continue
            mine, peer = float(np.median(ours)), float(np.median(theirs))
            ratio = mine / peer if peer else None
            lines.append(
                {
                    "summary": "modelplane_vs_mlflow",
                    "backend": backend,
                    "op": op,
                    "clients": clients,
                    "modelplane_ops_per_s": round(mine, 1),
                    "mlflow_ops_per_s": round(peer, 1),
                    "ratio": round(ratio, 2) if ratio else None,
                    "target": TARGET,
                    "met": bool(ratio and ratio >= TARGET),
                }
            )
    return lines


def table(points: list[dict], summary: list[dict]) -> None:
    """The readable view, on stderr."""
    note(
        "backend     system      op        clients    ops/s   p50 ms   p99 ms"
        "  server CPU ms/op  client CPU ms/op"
    )
    for p in points:
        note(
            f"{p['backend']:<11} {p['system']:<11} {p['op']:<9} {p['clients']:>7} "
            f"{p['ops_per_s']:>8} {p['p50_ms']:>8} {p['p99_ms']:>8} "
            f"{p['server_cpu_ms_per_op']:>17} {p['client_cpu_ms_per_op']:>17}"
            + (f"  ({p['errors']} errors)" if p["errors"] else "")
        )
    for s in summary:
        note(
            f"{s['backend']} {s['op']} at {s['clients']} clients: Modelplane/MLflow "
            f"{s['ratio']}x (target {TARGET}x, {'met' if s['met'] else 'MISSED'})"
        )


def main() -> int:
    """Run every selected point and print the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per point")
    parser.add_argument("--clients", default="1,8", help="client process counts")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--systems", default="modelplane,mlflow")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every point")
    parser.add_argument("--warmup-register", type=int, default=2)
    parser.add_argument("--warmup-get", type=int, default=20)
    parser.add_argument("--start-timeout", type=float, default=180.0)
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument(
        "--modelplane-workers", default="auto", help="control-plane processes (N or auto)"
    )
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    systems = args.systems.split(",")
    backends = args.backends.split(",")
    if "mlflow" in systems and (why := mlflow_unavailable()):
        note(f"MLflow lines skipped: {why}")
        emit({"skipped": "mlflow", "reason": why})
        systems.remove("mlflow")
    if "postgresql" in backends and (why := postgres_reachable()):
        note(f"PostgreSQL lines skipped: {why}")
        emit({"skipped": "postgresql", "reason": why})
        backends.remove("postgresql")
    workdir = Path(tempfile.mkdtemp(prefix="bench-registry-"))
    try:
        model = onnx_models.mlp(features=256, hidden=(1000,), outputs=2)
        args.artifact_path = onnx_models.save(model, workdir / "base.onnx")
        emit({"artifact_bytes": args.artifact_path.stat().st_size, "cpus": os.cpu_count()})
        points = []
        for backend in backends:
            note(f"{backend}: starting {', '.join(systems)}")
            points += measure_backend(backend, systems, args, workdir)
        summary = summarize(points, max(args.clients))
        for line in summary:
            emit(line)
        table(points, summary)
    finally:
        if args.keep:
            note(f"scratch kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
