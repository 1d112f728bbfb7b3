"""What one request of many small strings costs the sidecar, and what ``--max-bytes-elements``
bounds it to.

A string identity model (``x`` BYTES ``[n, k]`` answered as sent) is served by two sidecars in
the same run: one with the default bound (2**20 BYTES elements per request) and one whose
bound is lifted to the per-tensor element limit (2**28, what bounded BYTES requests before).
Each gets one request of ``N`` strings (``[1, N]``, ``--item`` bytes each; the empty string by
default, so the request is four bytes per element), for ``N`` in ``--elements``. For each it
prints, as one JSON object per line: the answer (``OK`` or the status and reason), the
server's wall time for the call, the growth of the server's peak resident memory (``VmHWM``
from ``/proc``) and the longest wait of a health check sent every 100 ms meanwhile.

    .venv/bin/python bench/bytes_limit.py [--elements 1048576,1048577,4194304] [--item '']
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "clients" / "python")]

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from modelplane.errors import error_info  # noqa: E402
from modelplane.oip import grpc_service_pb2 as pb  # noqa: E402
from modelplane.oip import grpc_service_pb2_grpc as pb_grpc  # noqa: E402
from modelplane.testing import onnx_models  # noqa: E402

LIFTED = 2**28


def _peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def _start(model: Path, bound: int | None) -> tuple[subprocess.Popen[str], int]:
    argv = [sys.executable, "-m", "modelplane.cli", "sidecar", "serve", "--model", str(model)]
    argv += ["--listen", "127.0.0.1:0", "--device", "cpu"]
    if bound is not None:
        argv += ["--max-bytes-elements", str(bound)]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if '"sidecar ready"' in line:
            return proc, int(json.loads(line)["port"])
    raise RuntimeError("the sidecar exited before it was ready")


def _request(count: int, item: bytes) -> Any:
    req = pb.ModelInferRequest(model_name="strings")
    req.inputs.add(name="x", datatype="BYTES", shape=[1, count])
    req.raw_input_contents.append((len(item).to_bytes(4, "little") + item) * count)
    return req


def _measure(proc: subprocess.Popen[str], port: int, count: int, item: bytes) -> dict[str, Any]:
    channel = grpc.insecure_channel(
        f"127.0.0.1:{port}",
        options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)],
    )
    infer = pb_grpc.GRPCInferenceServiceStub(channel)
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    waits: list[float] = []
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            started = time.perf_counter()
            health.Check(health_pb2.HealthCheckRequest(), timeout=600)
            waits.append(time.perf_counter() - started)
            done.wait(0.1)

    request = _request(count, item)
    before = _peak_kib(proc.pid)
    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    started = time.perf_counter()
    try:
        infer.ModelInfer(request, timeout=600)
        answer = "OK"
    except grpc.RpcError as err:
        info = error_info(err)
        answer = f"{err.code().name} {info.reason if info else ''}".strip()
    seconds = time.perf_counter() - started
    done.set()
    prober.join()
    channel.close()
    return {
        "answer": answer,
        "seconds": round(seconds, 3),
        "peak_growth_mib": round((_peak_kib(proc.pid) - before) / 1024, 1),
        "longest_health_wait_s": round(max(waits, default=0.0), 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", default="1048576,1048577,4194304")
    parser.add_argument("--item", default="", help="each string's text (default: empty)")
    args = parser.parse_args()
    counts = [int(x) for x in args.elements.split(",")]
    item = args.item.encode()
    with tempfile.TemporaryDirectory() as tmp:
        model = onnx_models.save(
            onnx_models.identity_model("BYTES", ["n", "k"]), Path(tmp) / "strings.onnx"
        )
        for label, bound in (("default bound", None), ("bound lifted to 2**28", LIFTED)):
            for count in counts:
                # A fresh server per request: peak memory only ever grows.
                proc, port = _start(model, bound)
                try:
                    result = _measure(proc, port, count, item)
                finally:
                    proc.terminate()
                    proc.wait(60)
                line = {"bench": "bytes_limit", "sidecar": label, "elements": count}
                print(json.dumps({**line, "item_bytes": len(item), **result}), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("MODELPLANE_SIDECAR_WARMUP_RUNS", "1")
    sys.exit(main())
