"""Prediction-log benchmark: the background writer against one Arrow batch per request.

Rows look like the sidecar's: 32 float32 features, a 2-wide float32 output, request id, trace
id, model, version, arm, status, latency, batch size. Each request has one row. Measured in
the same run:

* ``naive``: one RecordBatch per request written straight to an IPC stream (the baseline);
* ``writer-async``: ``PredictionLogWriter.append`` once per request from one thread, then
  ``close`` (the time includes writing everything);
* ``writer-async-batched``: one append per session batch of 32 requests (how the sidecar
  calls it after dynamic batching);
* ``writer-sync``: group commit, ``--threads`` callers each waiting for its fsynced ack.

Prints one JSON object per line with rows/s, bytes/row and the speed-up over ``naive``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "clients" / "python")]

from sidecar.predlog import (  # noqa: E402
    PredictionBatch,
    PredictionLogSettings,
    list_log_files,
    open_prediction_log,
)

FEATURES = 32


def _data(n: int) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, FEATURES)).astype(np.float32)
    y = rng.random((n, 2)).astype(np.float32)
    ids = [str(uuid.UUID(int=int(v))) for v in rng.integers(0, 2**62, n)]
    traces = [f"00-{i:032x}-{i:016x}-01" for i in range(n)]
    return x, y, ids, traces


def _log_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in list_log_files(directory))


def naive(directory: Path, n: int) -> dict[str, float]:
    """One RecordBatch per request, each written to the stream as it comes.

    Every ``pa.array`` call names its type: inferring types from Python lists makes pyarrow
    try to import ``dateutil`` on each call, which would slow the baseline unfairly.
    """
    x, y, ids, traces = _data(n)
    ts_type = pa.timestamp("us", tz="UTC")
    fields = [
        ("timestamp", ts_type),
        ("request_id", pa.string()),
        ("row", pa.int32()),
        ("trace_id", pa.string()),
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("arm", pa.string()),
        ("status_code", pa.string()),
        ("latency_s", pa.float64()),
        ("batch_size", pa.int32()),
        *[(f"x_{j}", pa.float32()) for j in range(FEATURES)],
        ("out_y", pa.list_(pa.float32(), 2)),
    ]
    schema = pa.schema(fields)
    path = directory / "naive.arrows"
    start = time.perf_counter()
    # A buffered file: the baseline pays for per-request batches, not for unbuffered writes.
    with open(path, "wb", buffering=1 << 20) as sink, pa.ipc.new_stream(sink, schema) as writer:
        for i in range(n):
            row = x[i]
            columns = [
                pa.array([int(time.time() * 1e6)], ts_type),
                pa.array([ids[i]], pa.string()),
                pa.array([0], pa.int32()),
                pa.array([traces[i]], pa.string()),
                pa.array(["model"], pa.string()),
                pa.array(["1"], pa.string()),
                pa.array(["champion"], pa.string()),
                pa.array(["OK"], pa.string()),
                pa.array([0.001], pa.float64()),
                pa.array([1], pa.int32()),
                *[pa.array(row[j : j + 1]) for j in range(FEATURES)],
                pa.FixedSizeListArray.from_arrays(pa.array(y[i]), 2),
            ]
            writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=schema))
    elapsed = time.perf_counter() - start
    return {"rows": n, "seconds": elapsed, "bytes": path.stat().st_size}


def _request(
    x: np.ndarray, y: np.ndarray, ids: list[str], traces: list[str], i: int, k: int
) -> PredictionBatch:
    k = min(k, len(ids) - i)
    return PredictionBatch(
        model_name="model",
        model_version="1",
        request_ids=ids[i : i + k],
        row_counts=[1] * k,
        inputs={"input": x[i : i + k]},
        outputs={"y": y[i : i + k]},
        latencies_s=0.001,
        trace_ids=traces[i : i + k],
        batch_size=k,
    )


def writer_async(directory: Path, n: int, per_append: int) -> dict[str, float]:
    """Appends of ``per_append`` one-row requests from one thread, async durability."""
    x, y, ids, traces = _data(n)
    batches = [_request(x, y, ids, traces, i, per_append) for i in range(0, n, per_append)]
    writer = open_prediction_log(PredictionLogSettings(dir=directory, durability="async"))
    start = time.perf_counter()
    for batch in batches:
        writer.append(batch)
    append_s = time.perf_counter() - start
    writer.close()
    elapsed = time.perf_counter() - start
    return {
        "rows": n,
        "seconds": elapsed,
        "append_seconds": append_s,
        "bytes": _log_bytes(directory),
    }


def writer_sync(directory: Path, n: int, threads: int) -> dict[str, float]:
    """``threads`` callers, each appending one-row requests and waiting for the fsynced ack."""
    x, y, ids, traces = _data(n)
    batches = [_request(x, y, ids, traces, i, 1) for i in range(n)]
    writer = open_prediction_log(PredictionLogSettings(dir=directory, durability="sync"))
    waits: list[float] = []

    def caller(part: list[PredictionBatch]) -> None:
        own = []
        for batch in part:
            t = time.perf_counter()
            writer.append(batch).result()
            own.append(time.perf_counter() - t)
        waits.extend(own)

    workers = [threading.Thread(target=caller, args=(batches[t::threads],)) for t in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    writer.close()
    files_bytes = _log_bytes(directory)
    ack = np.array(waits)
    return {
        "rows": n,
        "seconds": elapsed,
        "bytes": files_bytes,
        "threads": threads,
        "ack_p50_ms": float(np.percentile(ack, 50) * 1e3),
        "ack_p99_ms": float(np.percentile(ack, 99) * 1e3),
    }


def main() -> None:
    """Run every case and print one JSON line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows for the writer cases")
    parser.add_argument("--naive-rows", type=int, default=20_000, help="rows for the baseline")
    parser.add_argument("--sync-rows", type=int, default=50_000, help="rows for the sync case")
    parser.add_argument("--threads", type=int, default=32, help="callers in the sync case")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write (default: a temp dir)"
    )
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="predlog-bench-", dir=args.dir))
    cases = [
        ("naive", lambda d: naive(d, args.naive_rows)),
        ("writer-async", lambda d: writer_async(d, args.rows, 1)),
        ("writer-async-batched", lambda d: writer_async(d, args.rows, 32)),
        ("writer-sync", lambda d: writer_sync(d, args.sync_rows, args.threads)),
    ]
    baseline = None
    for name, run in cases:
        directory = base / name
        directory.mkdir()
        result = run(directory)
        rows_per_s = result["rows"] / result["seconds"]
        baseline = baseline or rows_per_s
        line = {
            "case": name,
            "rows_per_s": round(rows_per_s),
            "bytes_per_row": round(result["bytes"] / result["rows"], 1),
            "vs_naive": round(rows_per_s / baseline, 2),
            **{k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()},
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
