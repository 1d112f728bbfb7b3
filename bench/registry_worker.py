"""One load-generating client process of ``bench/registry.py``.

It runs under either environment: ``.venv`` for Modelplane, ``.venv-peers/mlflow`` for MLflow,
so only the standard library is imported at the top. One process serves many points: it
connects and prints ``ready``; then for each task line on stdin (JSON: ``op``, ``versions``,
``warmup``, ``duration``) it warms up, prints ``warm``, waits for a ``go`` line, calls back to
back for ``duration`` seconds and prints one JSON object with every latency. An empty line or
end of input ends it.

    python bench/registry_worker.py modelplane|mlflow --address HOST:PORT --model NAME
        --artifact BASE.onnx --workdir DIR
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

DOC_STRING_TAG = b"\x32"  # ModelProto field 6 (doc_string), length-delimited


def _varint(n: int) -> bytes:
    """Protobuf base-128 varint encoding of ``n``."""
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class Artifacts:
    """Writes a distinct copy of the base ONNX model before each registration.

    A second ``doc_string`` field is appended to the serialized model (protobuf keeps the last
    one), so every upload has its own digest and no store can skip work by deduplicating. The
    base bytes are written once; each copy rewrites only the tail, so the harness spends
    microseconds per call rather than a megabyte's copy and write, which would count as client
    CPU against both systems alike.
    """

    def __init__(self, base: Path, workdir: Path) -> None:
        self.base_size = base.stat().st_size
        self.path = workdir / "model.onnx"
        self.path.write_bytes(base.read_bytes())
        self.nonce = uuid.uuid4().hex
        self.seq = 0

    def next(self) -> Path:
        """Write the next distinct copy and return its path."""
        self.seq += 1
        text = f"bench {self.nonce} {self.seq}".encode()
        with self.path.open("r+b") as f:
            f.seek(self.base_size)
            f.write(DOC_STRING_TAG + _varint(len(text)) + text)
            f.truncate()
        return self.path


Op = Callable[[Path, int], None]


def modelplane_ops(args: argparse.Namespace) -> dict[str, Op]:
    """The Modelplane SDK calls."""
    from modelplane import Client

    client = Client(args.address, principal="bench")

    def register(path: Path, _: int) -> None:
        client.register_version(args.model, path, capture_env=False)

    def get(_: Path, version: int) -> None:
        client.get_version(args.model, version)

    return {"register": register, "get": get}


def mlflow_ops(args: argparse.Namespace) -> dict[str, Op]:
    """The MLflow client calls: artifact through the server's proxy, then the version."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"http://{args.address}")
    runs: list[tuple[str, str]] = []

    def register(path: Path, seq: int) -> None:
        if not runs:
            run = client.create_run("0", run_name=f"bench-{uuid.uuid4().hex[:8]}")
            runs.append((run.info.run_id, run.info.artifact_uri))
        run_id, root = runs[0]
        folder = f"m{seq}"
        client.log_artifact(run_id, str(path), artifact_path=folder)
        client.create_model_version(
            args.model, source=f"{root}/{folder}/{path.name}", run_id=run_id
        )

    def get(_: Path, version: int) -> None:
        client.get_model_version(args.model, str(version))

    return {"register": register, "get": get}


def run_point(op: Op, kind: str, task: dict, artifacts: Artifacts) -> dict:
    """Warm up, say ``warm``, wait for ``go``, then call back to back and report."""
    counter = iter(range(10**12))

    def call() -> float:
        path = artifacts.next() if kind == "register" else artifacts.path
        version = next(counter) % max(task["versions"], 1) + 1
        t0 = time.perf_counter()
        op(path, artifacts.seq if kind == "register" else version)
        return time.perf_counter() - t0

    for _ in range(task["warmup"]):
        call()
    print("warm", flush=True)
    sys.stdin.readline()
    latencies: list[float] = []
    errors = 0
    first_error = ""
    cpu0 = time.process_time()
    start = time.perf_counter()
    deadline = start + task["duration"]
    while time.perf_counter() < deadline:
        try:
            latencies.append(call())
        except Exception as exc:
            errors += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}"[:500]
    return {
        "latencies": latencies,
        "errors": errors,
        "first_error": first_error,
        "elapsed": time.perf_counter() - start,
        "client_cpu": time.process_time() - cpu0,
    }


def main() -> int:
    """Connect, then serve task lines until an empty one."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("system", choices=["modelplane", "mlflow"])
    parser.add_argument("--address", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    artifacts = Artifacts(args.artifact, args.workdir)
    ops = (modelplane_ops if args.system == "modelplane" else mlflow_ops)(args)
    print("ready", flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        task = json.loads(line)
        result = run_point(ops[task["op"]], task["op"], task, artifacts)
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
