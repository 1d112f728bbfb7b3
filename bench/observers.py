"""Observer benchmark: what the prediction log and drift monitor cost per served request.

The records are those the sidecar publishes for the 32-feature MLP served unbatched (one row
per session call), in lists of ``--records`` as the hub hands them over. Both observers run on
them as the sidecar wires them (``sidecar.observing.observe``: a baseline of 20,000 rows, an
async log in a temporary folder). Measured in the same run:

* ``records``: each observer takes the list and gathers it itself (``on_records``: what a
  hub without ``on_runs`` observers does; at f32ee97 each grouped records its own way);
* ``runs``: the hub gathers the list into runs once (``sidecar.observers.gather``) and each
  observer takes the runs (``on_runs``), with and without the layout key a fixed-shape model
  puts on its records;
* ``gather``: the gathering alone.

CPU time of the process (the calling thread plus the log writer's thread) per record; one
JSON object per line, then the speed-up of ``runs`` over ``records``.

    .venv/bin/python bench/observers.py [--records 100] [--repeat 300]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "clients" / "python")]

from modelplane.testing import onnx_models  # noqa: E402
from sidecar import runtime as rt  # noqa: E402
from sidecar.observers import BatchRecord, gather  # noqa: E402
from sidecar.observing import observe  # noqa: E402
from sidecar.predlog import PredictionLogSettings  # noqa: E402
from sidecar.settings import SidecarSettings  # noqa: E402


def _records(runtime: Any, count: int, layout: object | None, seed: int) -> list[BatchRecord]:
    sig = runtime.signature
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        x = rng.standard_normal((1, 32)).astype(np.float32)
        y = runtime.run(sig.output_names, {sig.inputs[0].name: x})
        out.append(
            BatchRecord(
                "mlp",
                "1",
                runtime.provider,
                {sig.inputs[0].name: x},
                dict(zip(sig.output_names, y, strict=True)),
                [f"req-{seed}-{i}"],
                [""],
                [1],
                [0.001],
                ["OK"],
                1e-5,
                time.time(),
                ["OK"],
                layout,
            )
        )
    return out


def _cpu_per_record(
    fn: Callable[[], Any], records: int, repeat: int, flush: Callable[[], Any]
) -> float:
    for _ in range(max(repeat // 10, 5)):
        fn()
    flush()
    start = time.process_time()
    for _ in range(repeat):
        fn()
    flush()
    return (time.process_time() - start) / repeat / records * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100, help="records per hand-over")
    parser.add_argument("--repeat", type=int, default=300, help="hand-overs per measurement")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-observers-"))
    model = onnx_models.save(onnx_models.mlp(), work / "mlp.onnx")
    data = np.random.default_rng(3).standard_normal((20_000, 32))
    pq.write_table(pa.table({f"x_{j}": data[:, j] for j in range(32)}), work / "baseline.parquet")
    runtime = rt.load(model, "cpu", intra_op_threads=1, warmup_runs=1, batch_rows=1)
    settings = SidecarSettings(model=model, baseline=work / "baseline.parquet")
    wiring = observe(
        settings, PredictionLogSettings(dir=work / "log"), runtime.signature, None, print
    )
    assert wiring.writer is not None
    flush = wiring.writer.flush
    observers = wiring.observers
    n = args.records
    results = {}
    for label, layout in (("no layout key", None), ("layout key", object())):
        records = _records(runtime, n, layout, seed=len(results))

        def by_records(records: list[BatchRecord] = records) -> None:
            for obs in observers:
                obs.on_records(records)

        def by_runs(records: list[BatchRecord] = records) -> None:
            runs = gather(records)
            for obs in observers:
                obs.on_runs(runs)

        def gather_only(records: list[BatchRecord] = records) -> None:
            gather(records)

        for way, fn in (("records", by_records), ("runs", by_runs), ("gather", gather_only)):
            us = _cpu_per_record(fn, n, args.repeat, flush)
            results[(label, way)] = us
            line = {"bench": "observers", "records": n, "layout": label, "way": way}
            print(json.dumps({**line, "cpu_us_per_record": round(us, 2)}), flush=True)
    for label in ("no layout key", "layout key"):
        speedup = results[(label, "records")] / results[(label, "runs")]
        print(
            json.dumps({"bench": "observers", "layout": label, "runs_speedup": round(speedup, 2)})
        )
    wiring.writer.close()


if __name__ == "__main__":
    main()
