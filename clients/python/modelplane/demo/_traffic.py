"""Client traffic for the demo: data rows sent over OIP from a few threads, with labels.

Each request carries a unique id, so the sidecar's sticky routing spreads requests over the
arms by hash. The answering version of every reply (``model_version``) is counted so the demo
can show how traffic moves during a rollout; ``shift`` scales the features to inject drift.
Ground-truth labels go back to the sidecar in batches (live accuracy per arm), for the rows
that have one (the holdout's: the models never saw them).
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from typing import Any

import numpy as np


class Traffic:
    """Background OIP traffic against one sidecar address."""

    def __init__(self, address: str, model: str, rows: Any, labels: Any, threads: int = 3) -> None:
        self.address = address
        self.model = model
        self.rows = np.asarray(rows, dtype=np.float32)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.threads = threads
        #: Multiplies every feature (1.0: the data as trained on).
        self.shift = 1.0
        self.errors = 0
        self.sent = 0
        self._answers: collections.deque[tuple[float, str]] = collections.deque(maxlen=50_000)
        self._pending_labels: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def start(self) -> Traffic:
        """Start the sender threads and the label sender."""
        for i in range(self.threads):
            t = threading.Thread(target=self._send, args=(i,), daemon=True, name=f"traffic-{i}")
            t.start()
            self._workers.append(t)
        t = threading.Thread(target=self._send_labels, daemon=True, name="labels")
        t.start()
        self._workers.append(t)
        return self

    def stop(self) -> None:
        """Stop sending and wait for the threads."""
        self._stop.set()
        for t in self._workers:
            t.join(timeout=10)

    def answered(self, since: float, until: float | None = None) -> collections.Counter[str]:
        """Answers per answering version (``v1``, ...) received between the monotonic times
        ``since`` and ``until`` (now when None)."""
        end = time.monotonic() if until is None else until
        with self._lock:
            recent = [v for t, v in self._answers if since <= t <= end]
        return collections.Counter(f"v{v}" for v in recent)

    def _send(self, worker: int) -> None:
        import grpc

        from modelplane.oip import grpc_service_pb2 as pb
        from modelplane.oip import grpc_service_pb2_grpc as pbg

        n = len(self.rows)
        i = worker
        with grpc.insecure_channel(self.address) as ch:
            stub = pbg.GRPCInferenceServiceStub(ch)
            while not self._stop.is_set():
                row = self.rows[i % n] * self.shift
                rid = f"demo-{worker}-{i}"
                request = pb.ModelInferRequest(
                    model_name=self.model,
                    id=rid,
                    inputs=[
                        pb.ModelInferRequest.InferInputTensor(
                            name="X", datatype="FP32", shape=[1, self.rows.shape[1]]
                        )
                    ],
                    raw_input_contents=[row.astype(np.float32).tobytes()],
                )
                try:
                    reply = stub.ModelInfer(request, timeout=10)
                except grpc.RpcError:
                    with self._lock:
                        self.errors += 1
                else:
                    with self._lock:
                        self.sent += 1
                        self._answers.append((time.monotonic(), reply.model_version))
                        label = int(self.labels[i % n])
                        if label >= 0:
                            self._pending_labels.append((rid, label))
                i += self.threads
                time.sleep(0.002)

    def _send_labels(self) -> None:
        import grpc

        from modelplane.v1 import sidecar_pb2, sidecar_pb2_grpc

        with grpc.insecure_channel(self.address) as ch:
            stub = sidecar_pb2_grpc.SidecarAdminServiceStub(ch)
            while not self._stop.wait(1.0):
                with self._lock:
                    batch, self._pending_labels = self._pending_labels, []
                if not batch:
                    continue
                labels = [
                    sidecar_pb2.Label(request_id=rid, row=0, class_label=y) for rid, y in batch
                ]
                with contextlib.suppress(grpc.RpcError):
                    stub.IngestLabels(sidecar_pb2.IngestLabelsRequest(labels=labels), timeout=10)
