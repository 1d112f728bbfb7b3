"""Sidecar benchmark: raw ONNX Runtime, bare gRPC echo servers, the sidecar and MLServer.

Everything runs in one invocation on the same machine, so the ratios compare like with like.
Each server runs in its own process and the load comes from another process
(``sidecar_tools/loadgen.py``: ``grpc.aio``, N calls in flight). One JSON line per
measurement goes to stdout, then one JSON line per target ratio; a readable table of the
ratios goes to stderr.

    .venv/bin/python bench/sidecar.py [--quick] [--only mlp,sidecar,echo-aio,...]
        [--duration S] [--workers N] [--pin]

``--pin`` runs every server (with its child processes) on CPU 1 and the load generator on CPU 0
(``taskset``): on a 2-core machine that takes most of the scheduler's noise out of the ratios,
and gives every server one core of its own, the observer process of the logged lines included.

The GPU measurements (CUDA, several workers and client processes) are ``bench/sidecar_gpu.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sidecar_tools import drive, oip, plan, raw_ort, servers
from sidecar_tools.plan import ModelCase, ServerConfig

from modelplane.testing import onnx_models

#: ``--pin``: where the servers and the load generator run.
SERVER_CPU = ("taskset", "-c", "1")
CLIENT_CPU = ("taskset", "-c", "0")


def emit(line: dict) -> None:
    """Print one JSON result line."""
    print(json.dumps({"bench": "sidecar", **line}), flush=True)


def note(message: str) -> None:
    """Print a progress or skip message for people (stderr)."""
    print(f"[sidecar bench] {message}", file=sys.stderr, flush=True)


class Run:
    """One benchmark run: settings, scratch folder, collected results."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.baseline = workdir / "baseline.parquet"
        self.results: dict[tuple[str, str, int], list[dict]] = {}
        self.round = 0
        self.noted: set[str] = set()
        self.sidecar_base, self.sidecar_help = servers.sidecar_base_command()
        if self.sidecar_base is None:
            note(f"sidecar lines skipped: cannot start the sidecar ({self.sidecar_help})")

    def note_once(self, message: str) -> None:
        """A note printed on its first occurrence only (rounds repeat the same skips)."""
        if message not in self.noted:
            self.noted.add(message)
            note(message)

    def wanted(self, name: str) -> bool:
        """Whether ``--only`` selects this model or server name."""
        return not self.args.only or name in self.args.only

    def sidecar_flags(self, config: ServerConfig) -> list[str] | None:
        """The extra sidecar flags, or None (with a note) when the sidecar lacks one."""
        missing = [f for f in config.requires if f not in self.sidecar_help]
        if missing:
            self.note_once(f"{config.name} skipped: the sidecar has no {', '.join(missing)} flag")
            return None
        flags = [
            f.replace("{workdir}", str(self.workdir)).replace("{baseline}", str(self.baseline))
            for f in config.flags
        ]
        if "--device" in self.sidecar_help:
            flags += ["--device", "cpu"]
        if self.args.workers:
            flags += ["--workers", str(self.args.workers)]
        return flags

    def model(self, case: ModelCase) -> None:
        """Every selected measurement of one model."""
        path = onnx_models.save(case.build(), self.workdir / f"{case.name}.onnx")
        sess = raw_ort.session(path, "cpu")
        input_name = sess.get_inputs()[0].name
        output_name = sess.get_outputs()[0].name
        x = np.random.default_rng(1).standard_normal(case.request_shape).astype(np.float32)
        expected = sess.run(None, {input_name: x})[0]
        request = self.workdir / f"{case.name}.request"
        request.write_bytes(oip.infer_request(case.name, input_name, x))
        response = self.workdir / f"{case.name}.response"
        response.write_bytes(oip.infer_response_like(case.name, output_name, expected))
        self.baseline = self.workdir / f"{case.name}-baseline.parquet"
        self.write_baseline(case, self.baseline)
        if self.wanted("raw"):
            self.raw(case, sess, input_name)
        del sess
        for config in plan.SERVERS:
            if self.wanted(config.name):
                self.server(case, config, path, request, response, expected)

    @staticmethod
    def write_baseline(case: ModelCase, path: Path) -> None:
        """Training-like data for the drift baseline: 20,000 rows of the model's features."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        width = case.request_shape[1]
        data = np.random.default_rng(3).standard_normal((20_000, width))
        pq.write_table(pa.table({f"x_{j}": data[:, j] for j in range(width)}), path)

    def raw(self, case: ModelCase, sess, input_name: str) -> None:
        """In-process ``InferenceSession.run``: per call at batch 1, rows/s at larger batches."""
        rng = np.random.default_rng(2)
        seconds = 0.3 if self.args.quick else 1.0
        for batch in case.raw_batches:
            shape = (batch, *case.request_shape[1:])
            feed = {input_name: rng.standard_normal(shape).astype(np.float32)}
            line = raw_ort.measure(sess, feed, seconds)
            emit({"model": case.name, "server": "onnxruntime", "concurrency": 1, **line})

    def start(self, config: ServerConfig, case: ModelCase, path: Path, response: Path):
        """The server process for ``config`` (not started), or None when it can't run here."""
        port = servers.free_port()
        if config.kind.startswith("echo-"):
            kind = config.kind.removeprefix("echo-")
            return port, servers.echo_server(kind, port, response, self.workdir)
        if config.kind == "sidecar":
            if self.sidecar_base is None:
                return port, None
            flags = self.sidecar_flags(config)
            if flags is None:
                return port, None
            name = f"{config.name}-{case.name}"
            return port, servers.sidecar_server(
                name, self.sidecar_base, path, port, flags, self.workdir
            )
        if not servers.MLSERVER_BIN.exists():
            self.note_once(
                f"{config.name} skipped: {servers.MLSERVER_BIN} is missing (create it with "
                "`make bench` or `python3 -m venv .venv-peers/mlserver && "
                ".venv-peers/mlserver/bin/pip install -r bench/peers/mlserver.txt`)"
            )
            return port, None
        name = f"{config.name}-{case.name}"
        settings = dict(config.settings)
        return port, servers.mlserver_server(name, case.name, path, port, settings, self.workdir)

    def server(
        self,
        case: ModelCase,
        config: ServerConfig,
        path: Path,
        request: Path,
        response: Path,
        expected: np.ndarray,
    ) -> None:
        """Start one server, check one answer, drive the load, stop it."""
        port, proc = self.start(config, case, path, response)
        if proc is None:
            return
        if self.args.pin:
            proc.argv = [*SERVER_CPU, *proc.argv]
        target = f"127.0.0.1:{port}"
        started = time.monotonic()
        proc.start()
        try:
            echo = config.kind.startswith("echo-")
            probe = request.read_bytes() if echo else None
            oip.wait_ready(target, case.name, 120.0, proc.check_alive, probe)
            if not echo:
                got = next(iter(oip.infer_once(target, request.read_bytes()).values()))
                if got.shape != expected.shape or not np.allclose(
                    got, expected, rtol=1e-4, atol=1e-5
                ):
                    raise RuntimeError(f"{config.name} answered {got!r}, expected {expected!r}")
            startup = round(time.monotonic() - started, 2)
            for line in self.load(target, request, expected.nbytes, config, proc.pid):
                line = {"model": case.name, "server": config.name, **line}
                line["startup_s"] = startup
                if self.args.rounds > 1:
                    line["round"] = self.round
                key = (case.name, config.name, line["concurrency"])
                self.results.setdefault(key, []).append(line)
                emit(line)
        except (RuntimeError, TimeoutError, subprocess.SubprocessError) as err:
            tail = "" if "log tail" in str(err) else f"\n{proc.log_tail()}"
            note(f"{config.name} on {case.name} failed: {err}{tail}")
            emit({"model": case.name, "server": config.name, "error": str(err).splitlines()[0]})
        finally:
            proc.stop()

    def load(
        self, target: str, request: Path, out_bytes: int, config: ServerConfig, pgid: int
    ) -> list:
        """Run the load generator process against ``target``; its JSON lines."""
        return drive.drive(
            target,
            request,
            out_bytes,
            config.concurrency or self.args.concurrency,
            duration=self.args.duration,
            warmup=self.args.warmup,
            channels=self.args.channels,
            server_pgid=pgid,
            prefix=CLIENT_CPU if self.args.pin else (),
        )


def print_summary(rows: list[dict], ran: set[tuple[str, str]]) -> None:
    """JSON lines for the ratios of the servers that ran, and a table of them on stderr."""
    rows = [r for r in rows if r["value"] is not None or (r["model"], r["server"]) in ran]
    for row in rows:
        emit({"summary": True, **row})
    note("targets (ratios measured in this run):")
    for row in rows:
        value = "not measured" if row["value"] is None else f"{row['value']:.2f}x"
        met = {True: "met", False: "MISSED", None: ""}[row["met"]]
        goal = "" if row["goal"] is None else f"goal {row['goal']}"
        print(
            f"  {row['model']:8} {row['server']:15} {row['target']:38} {value:>13} {goal:>7} {met}",
            file=sys.stderr,
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short points (a smoke run)")
    parser.add_argument(
        "--only",
        type=lambda s: set(s.split(",")),
        default=set(),
        help="comma-separated models (mlp, heavy) and servers (raw, echo-threads, "
        "echo-aio, sidecar, sidecar-batch, sidecar-intra1, sidecar-logged, sidecar-logged-thread, "
        "mlserver, mlserver-tuned)",
    )
    parser.add_argument("--duration", type=float, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per point")
    parser.add_argument(
        "--concurrency",
        type=lambda s: tuple(int(c) for c in s.split(",")),
        default=plan.CONCURRENCY,
    )
    parser.add_argument("--channels", type=int, default=2, help="client channels per point")
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat every server this often; ratios use medians"
    )
    parser.add_argument("--workers", type=int, default=0, help="sidecar --workers (0: its own)")
    parser.add_argument(
        "--pin", action="store_true", help="servers on CPU 1, the load generator on CPU 0"
    )
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 1.0 if args.quick else 2.5
    if args.warmup is None:
        args.warmup = 0.3 if args.quick else 0.75
    return args


def main(argv: list[str] | None = None) -> int:
    """Run every selected model and server; print the lines and the summary."""
    args = parse_args(argv)
    model_names = {m.name for m in plan.MODELS}
    with tempfile.TemporaryDirectory(prefix="modelplane-bench-sidecar-") as tmp:
        run = Run(args, Path(tmp))
        selected_models = args.only & model_names
        args.only = args.only - model_names
        if args.pin and not {0, 1} <= os.sched_getaffinity(0):
            raise SystemExit("--pin needs CPUs 0 and 1")
        emit(
            {
                "environment": True,
                "cpus": os.cpu_count(),
                "loadavg_1m": os.getloadavg()[0],
                "pinned": args.pin,
            }
        )
        for run.round in range(args.rounds):
            for case in plan.MODELS:
                if selected_models and case.name not in selected_models:
                    continue
                note(f"model {case.name}" + (f", round {run.round}" if args.rounds > 1 else ""))
                run.model(case)
        emit({"environment": True, "loadavg_1m": os.getloadavg()[0]})
        ran = {(model, server) for model, server, _ in run.results}
        print_summary(plan.summary(plan.medians(run.results)), ran)
    return 0


if __name__ == "__main__":
    sys.exit(main())
