"""GPU benchmark: the sidecar on CUDA with several workers, a bare echo server, raw ONNX Runtime.

For a machine with an NVIDIA GPU and ``onnxruntime-gpu``. Two models built with onnx.helper: the
compute-heavy MLP (256 FP32 features, four hidden layers of 2,048, batch 1 per request) and
ResNet-50 (``[1, 3, 224, 224]`` FP32 per request, 588 KiB). For each, in one run:

1. raw ONNX Runtime on CUDA in process: plain ``run`` and I/O binding (host input copied per
   call; input resident on the GPU) at several batch sizes (the compute ceiling);
2. a bare single-process thread-pool echo server answering the same payload sizes (what one
   Python gRPC process carries);
3. the sidecar, ``--device cuda --workers N`` with batching on.

Every gRPC point is driven by ``--client-procs`` load-generator processes at once (one Python
client process cannot saturate several server processes). JSON lines go to stdout, a table
of the target ratios to stderr:

    python bench/sidecar_gpu.py [--workers 6|1,2,4,6] [--cuda-mps auto|off,on]
        [--client-procs 8] [--concurrency 16] [--duration 4] [--only heavy,resnet50] [--no-raw]
        [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
from sidecar_tools import drive, oip, raw_ort, servers
from sidecar_tools.plan import ModelCase

from modelplane.testing import onnx_models

#: The sidecar's CUDA provider options (``sidecar.runtime.CUDA_OPTIONS``; that package is not
#: importable from here, where ``bench/sidecar.py`` shadows it).
CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC"}


CASES = (
    ModelCase("heavy", onnx_models.heavy_mlp, (1, 256), (1, 256, 4096)),
    ModelCase("resnet50", onnx_models.resnet50, (1, 3, 224, 224), (1, 32, 128)),
    # ResNet-50's payload on a model that computes next to nothing: the serving path's own
    # cost per image-sized request (not in the default selection).
    ModelCase("probe", onnx_models.image_probe, (1, 3, 224, 224), (1, 32, 128)),
)


#: The models the targets are set for; the others' ratios print for information.
TARGET_MODELS = ("heavy", "resnet50")


class GpuMemoryPeak:
    """The most GPU memory in use (MiB, as ``nvidia-smi`` reports it once a second) between
    :meth:`start` and :meth:`stop`; ``None`` without ``nvidia-smi``."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.peak: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> int | None:
        self._stop.set()
        self._thread.join(10)
        return self.peak

    def _watch(self) -> None:
        query = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"]
        while True:
            try:
                done = subprocess.run(query, capture_output=True, text=True, timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                return
            used = [int(v) for v in done.stdout.split() if v.strip().isdigit()]
            if done.returncode != 0 or not used:
                return
            self.peak = max(self.peak or 0, sum(used))
            if self._stop.wait(self.interval):
                return


def emit(line: dict) -> None:
    """Print one JSON result line."""
    print(json.dumps({"bench": "sidecar-gpu", **line}), flush=True)


def note(message: str) -> None:
    """Print a progress message for people (stderr)."""
    print(f"[sidecar-gpu bench] {message}", file=sys.stderr, flush=True)


def environment() -> dict:
    """The GPU, the driver and the ONNX Runtime build this run used."""
    import onnxruntime as ort

    line: dict = {
        "environment": True,
        "cpus": os.cpu_count(),
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
    }
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        line["gpu"] = smi.stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        line["gpu"] = f"nvidia-smi failed: {exc}"
    return line


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    """The relative error norm(got - want) / norm(want), in float64."""
    diff = np.linalg.norm(got.astype(np.float64) - want.astype(np.float64))
    return float(diff / max(np.linalg.norm(want.astype(np.float64)), 1e-30))


def wait_for_line(proc: servers.ServerProcess, marker: str, timeout: float) -> None:
    """Wait until the server's log holds ``marker`` (the supervisor's ready line)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.check_alive()
        if marker in proc.log.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{proc.name} printed no {marker!r} in {timeout:.0f} s:\n{proc.log_tail()}")


def _mean(text: str, family: str) -> float | None:
    total = re.search(rf"^{family}_sum\{{[^}}]*\}} ([0-9.e+-]+)$", text, re.M)
    count = re.search(rf"^{family}_count\{{[^}}]*\}} ([0-9.e+-]+)$", text, re.M)
    if not total or not count or not float(count.group(1)):
        return None
    return float(total.group(1)) / float(count.group(1))


def scrape(port: int) -> dict:
    """The provider label and mean batch, session-call, queue and request times (ms) from
    the sidecar's merged metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    pattern = r'modelplane_inference_model_info\{[^}]*provider="([^"]+)"'
    line: dict = {"providers": sorted(set(re.findall(pattern, text)))}
    batch = _mean(text, "modelplane_inference_batch_size")
    line["mean_batch_rows"] = None if batch is None else round(batch, 2)
    for key, family in (
        ("mean_session_call_ms", "modelplane_inference_compute_duration_seconds"),
        ("mean_queue_ms", "modelplane_inference_queue_duration_seconds"),
        ("mean_request_ms", "modelplane_inference_request_duration_seconds"),
    ):
        value = _mean(text, family)
        line[key] = None if value is None else round(value * 1000, 3)
    return line


class GpuRun:
    """One benchmark run over the selected models."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.results: dict[tuple[str, str], dict] = {}
        #: Best raw rows/s per model: I/O binding with the input copied from host memory per
        #: call ("host", what a server has to do) and with it resident on the GPU.
        self.raw_best: dict[str, dict[str, float]] = {}
        base, why = servers.sidecar_base_command()
        if base is None:
            raise SystemExit(f"cannot start the sidecar: {why}")
        self.sidecar_base = base

    def model(self, case: ModelCase) -> None:
        """Raw ONNX Runtime, the echo floor and the sidecar for one model."""
        note(f"model {case.name}: building")
        built = case.build()
        input_name = built.graph.input[0].name
        path = onnx_models.save(built, self.workdir / f"{case.name}.onnx")
        del built
        x = np.random.default_rng(1).standard_normal(case.request_shape).astype(np.float32)
        expected = self.raw(case, path, x) if self.args.raw else self.reference(path, x)
        request = self.workdir / f"{case.name}.request"
        request.write_bytes(oip.infer_request(case.name, input_name, x))
        response = self.workdir / f"{case.name}.response"
        response.write_bytes(oip.infer_response_like(case.name, "output", expected))
        self.echo(case, request, response, expected.nbytes)
        for workers in self.args.workers:
            for mps in self.args.cuda_mps:
                self.sidecar(case, path, request, x, expected, workers, mps)

    def reference(self, path: Path, x: np.ndarray) -> np.ndarray:
        """The session's answer for ``x`` (no rates measured: ``--no-raw``)."""
        sess = raw_ort.session(path, self.args.device)
        return sess.run(None, {sess.get_inputs()[0].name: x})[0]

    def raw(self, case: ModelCase, path: Path, x: np.ndarray) -> np.ndarray:
        """Raw CUDA session rates; returns the CUDA answer for ``x`` (checked against CPU)."""
        cpu = raw_ort.session(path, "cpu")
        want = cpu.run(None, {cpu.get_inputs()[0].name: x})[0]
        del cpu
        sess = raw_ort.session(path, self.args.device)
        emit({"model": case.name, "server": "onnxruntime", "providers": sess.get_providers()})
        name = sess.get_inputs()[0].name
        got = sess.run(None, {name: x})[0]
        emit({"model": case.name, "check": "raw vs cpu", "rel_error": rel_error(got, want)})
        rng = np.random.default_rng(2)
        best = {"host": 0.0, "resident": 0.0}
        for batch in case.raw_batches:
            feed = {name: rng.standard_normal((batch, *case.request_shape[1:])).astype(np.float32)}
            modes = (
                ("run", "iobinding", "iobinding-resident")
                if self.args.device == "cuda"
                else ("run",)
            )
            for mode in modes:
                if mode == "run":
                    line = raw_ort.measure(sess, feed, self.args.raw_seconds)
                else:
                    resident = mode == "iobinding-resident"
                    line = raw_ort.measure_bound(
                        sess, feed, self.args.raw_seconds, resident=resident
                    )
                if mode != "run" or self.args.device == "cpu":
                    kind = "resident" if mode == "iobinding-resident" else "host"
                    best[kind] = max(best[kind], line["rows_per_s"])
                server = f"onnxruntime-{self.args.device}"
                emit({"model": case.name, "server": server, "mode": mode, **line})
        self.raw_best[case.name] = best
        if self.args.device == "cuda":
            self.new_shapes(case, sess, "default (exhaustive)")
            del sess
            sess = raw_ort.session(path, "cuda", CUDA_OPTIONS)
            self.new_shapes(case, sess, "sidecar's (heuristic)")
        del sess
        return got

    def new_shapes(self, case: ModelCase, sess, search: str) -> None:
        """What a batch size the session has not seen costs on first sight, then again."""
        name = sess.get_inputs()[0].name
        rng = np.random.default_rng(4)
        for batch in (3, 5):
            feed = {name: rng.standard_normal((batch, *case.request_shape[1:])).astype(np.float32)}
            times = []
            for _ in range(2):
                start = time.perf_counter()
                sess.run(None, feed)
                times.append(round((time.perf_counter() - start) * 1000, 2))
            emit(
                {
                    "model": case.name,
                    "server": "onnxruntime-cuda",
                    "mode": "new batch size",
                    "cudnn_search": search,
                    "batch": batch,
                    "first_call_ms": times[0],
                    "second_call_ms": times[1],
                }
            )

    def load(self, case: ModelCase, name: str, target: str, request: Path, nbytes: int, pgid: int):
        """Drive ``target`` with the client processes; record and print the line."""
        lines = drive.drive(
            target,
            request,
            nbytes,
            [self.args.concurrency],
            duration=self.args.duration,
            warmup=self.args.warmup,
            channels=self.args.channels,
            server_pgid=pgid,
            procs=self.args.client_procs,
        )
        line = {"model": case.name, "server": name, **lines[0]}
        self.results[(case.name, name)] = line
        emit(line)
        return line

    def echo(self, case: ModelCase, request: Path, response: Path, nbytes: int) -> None:
        """The single-process thread-pool echo server with the same payload sizes."""
        proc = servers.echo_server("threads", servers.free_port(), response, self.workdir)
        port = int(proc.argv[proc.argv.index("--listen") + 1].rpartition(":")[2])
        proc.start()
        try:
            oip.wait_ready(
                f"127.0.0.1:{port}", case.name, 60.0, proc.check_alive, request.read_bytes()
            )
            self.load(case, "echo-threads", f"127.0.0.1:{port}", request, nbytes, proc.pid)
        except Exception as err:  # one failed line must not lose the others
            note(f"echo on {case.name} failed: {err}")
            emit({"model": case.name, "server": "echo-threads", "error": str(err).splitlines()[0]})
        finally:
            proc.stop()

    def sidecar(
        self,
        case: ModelCase,
        path: Path,
        request: Path,
        x: np.ndarray,
        expected: np.ndarray,
        workers: int,
        mps: str,
    ) -> None:
        """The sidecar on CUDA with workers and batching; one answer checked, then the load."""
        port, metrics = servers.free_port(), servers.free_port()
        flags = ["--device", self.args.device, "--workers", str(workers), "--cuda-mps", mps]
        flags += ["--max-batch-size", str(self.args.max_batch_size)]
        flags += ["--max-queue-delay", self.args.max_queue_delay]
        flags += ["--metrics-listen", f"127.0.0.1:{metrics}"]
        env = dict(item.split("=", 1) for item in self.args.sidecar_env)
        name = f"sidecar-{self.args.device}-w{workers}"
        if len(self.args.cuda_mps) > 1 or mps != "auto":
            name += f"-mps-{mps}"
        name += "".join(f"-{v.lower()}" for v in env.values())
        proc = servers.sidecar_server(name, self.sidecar_base, path, port, flags, self.workdir, env)
        memory = GpuMemoryPeak()
        memory.start()
        started = time.monotonic()
        proc.start()
        target = f"127.0.0.1:{port}"
        try:
            # With several workers, the supervisor's line (after every worker's own) counts them.
            marker = f'"workers": {workers}' if workers > 1 else '"sidecar ready"'
            wait_for_line(proc, marker, self.args.startup_timeout)
            startup = round(time.monotonic() - started, 1)
            used = re.search(r'"cuda_mps": "(\w+)"', proc.log.read_text(errors="replace"))
            got = next(iter(oip.infer_once(target, request.read_bytes()).values()))
            err = rel_error(got.reshape(expected.shape), expected)
            emit({"model": case.name, "check": "sidecar vs raw", "rel_error": err})
            if not err < 5e-2:
                raise RuntimeError(f"sidecar answer differs from raw ORT: rel error {err:.2e}")
            line = self.load(case, name, target, request, expected.nbytes, proc.pid)
            extra = scrape(metrics)
            extra["gpu_memory_peak_mib"] = memory.stop()
            line.update(extra, startup_s=startup, workers=workers)
            line["cuda_mps"] = used.group(1) if used else None
            best = self.results.get((case.name, "sidecar"))
            if best is None or line["rps"] > best["rps"]:
                self.results[(case.name, "sidecar")] = line
            emit(
                {
                    "model": case.name,
                    "server": name,
                    "metrics": extra,
                    "startup_s": startup,
                    "cuda_mps": line["cuda_mps"],
                }
            )
        except Exception as err:  # one failed line must not lose the others
            note(f"sidecar on {case.name} failed: {err}")
            emit({"model": case.name, "server": name, "error": str(err).splitlines()[0]})
        finally:
            memory.stop()
            proc.stop()
            log_copy = self.args.logs / f"{name}-{case.name}.log" if self.args.logs else None
            if log_copy is not None:
                log_copy.parent.mkdir(parents=True, exist_ok=True)
                log_copy.write_bytes(proc.log.read_bytes())

    def summary(self) -> list[dict]:
        """The target ratios: sidecar (its best worker count) vs the single-process echo (3x),
        ResNet-50 vs raw I/O binding with the input copied from host memory (0.5x), and, for
        information, vs raw with the input already on the GPU."""
        rows = []
        for case in CASES:
            side = self.results.get((case.name, "sidecar"), {}).get("rps")
            echo = self.results.get((case.name, "echo-threads"), {}).get("rps")
            ratio = round(side / echo, 3) if side and echo else None
            target_model = case.name in TARGET_MODELS
            goal = 3.0 if target_model else None
            rows.append(self._row(case.name, "rps / single-process echo", ratio, goal))
            if not target_model:
                continue  # a model that computes nothing: raw ONNX Runtime is no yardstick
            raw = self.raw_best.get(case.name, {})
            for kind, label in (("host", "host input"), ("resident", "resident input")):
                best = raw.get(kind)
                ratio = round(side / best, 3) if side and best else None
                goal = 0.5 if case.name == "resnet50" and kind == "host" else None
                target = f"rows/s / raw ORT I/O binding, {label}"
                rows.append(self._row(case.name, target, ratio, goal))
        return [r for r in rows if r["model"] in {m for m, _ in self.results}]

    @staticmethod
    def _row(model: str, target: str, value: float | None, goal: float | None) -> dict:
        met = None if value is None or goal is None else value >= goal
        return {"model": model, "target": target, "value": value, "goal": goal, "met": met}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="heavy,resnet50", help="models: heavy, resnet50, probe")
    parser.add_argument(
        "--workers",
        type=lambda v: [int(n) for n in v.split(",")],
        default=[6],
        help="sidecar --workers; a comma-separated list measures each (the summary takes the best)",
    )
    parser.add_argument(
        "--cuda-mps",
        type=lambda v: v.split(","),
        default=["auto"],
        help="sidecar --cuda-mps (auto, on, off); a comma-separated list measures each",
    )
    parser.add_argument("--client-procs", type=int, default=8, help="load-generator processes")
    parser.add_argument("--concurrency", type=int, default=16, help="calls in flight per process")
    parser.add_argument("--channels", type=int, default=4, help="channels per client process")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-queue-delay", default="2ms")
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=1.5, help="warm-up seconds per point")
    parser.add_argument("--raw-seconds", type=float, default=1.0, help="seconds per raw line")
    parser.add_argument("--startup-timeout", type=float, default=180.0)
    parser.add_argument(
        "--sidecar-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an environment variable for the sidecar (repeatable), e.g. MODELPLANE_CUDA_SYNC=spin",
    )
    parser.add_argument(
        "--no-raw", dest="raw", action="store_false", help="skip the raw ONNX Runtime lines"
    )
    parser.add_argument("--logs", type=Path, help="copy the sidecar logs into this folder")
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="cpu: a dry run of the whole procedure on a machine without a GPU",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the selected models; print the lines and the summary."""
    args = parse_args(argv)
    wanted = set(args.only.split(","))
    emit(environment())
    with tempfile.TemporaryDirectory(prefix="modelplane-bench-gpu-") as tmp:
        run = GpuRun(args, Path(tmp))
        for case in CASES:
            if case.name in wanted:
                run.model(case)
        rows = run.summary()
    note("targets (ratios measured in this run):")
    for row in rows:
        emit({"summary": True, **row})
        value = "not measured" if row["value"] is None else f"{row['value']:.2f}x"
        met = {True: "met", False: "MISSED", None: ""}[row["met"]]
        goal = "" if row["goal"] is None else f"goal {row['goal']}"
        print(f"  {row['model']:9} {row['target']:48} {value:>13} {goal:>9} {met}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
