"""A drift monitor compiles its kernels when it is made (at sidecar start-up): the first
batches, float64 or narrow, matrices (writable or read-only, as decoded from request bytes)
or columns with or without nulls, compile nothing more. Checked in a fresh
process, where nothing else compiled them before."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import json
import numpy as np, pyarrow as pa
from modelplane.profiles import build_profile
from sidecar.drift import DriftMonitor
from sidecar.drift._kernels import accumulate, snap_narrow, summarize_cells

rng = np.random.default_rng(0)
names = [f"x{i}" for i in range(3)]
profile = build_profile(pa.table({n: rng.normal(size=500) for n in names}), names)
monitor = DriftMonitor(profile, window_rows=50)
kernels = (accumulate, snap_narrow, summarize_cells)
made = [len(k.signatures) for k in kernels]
wide = {n: rng.normal(size=80) for n in names}
monitor.update(wide)
matrix = np.column_stack([wide[n] for n in names])
for dtype in (np.float64, np.float32, np.float16):
    values = matrix.astype(dtype)
    monitor.update(values)
    # As decoded from request bytes: read-only.
    monitor.update(np.frombuffer(values.tobytes(), dtype).reshape(values.shape))
whole = np.round(matrix * 4)
monitor_whole = DriftMonitor(
    build_profile(pa.table({n: np.round(rng.normal(size=500) * 4) for n in names}), names)
)
for dtype in (np.float32, np.float64):
    monitor_whole.update(np.frombuffer(whole.astype(dtype).tobytes(), dtype).reshape(whole.shape))
monitor.update({n: v.astype(np.float32) for n, v in wide.items()})
monitor.update({n: v.astype(np.float16) for n, v in wide.items()})
holes = np.arange(80) % 7 == 0
monitor.update({n: pa.array(v.astype(np.float32), mask=holes) for n, v in wide.items()})
monitor.update({n: pa.array(v, mask=holes) for n, v in wide.items()})
monitor.score(monitor.current())
print(json.dumps([made, [len(k.signatures) for k in kernels]]))
"""


def test_the_first_batches_compile_nothing() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, check=True
    ).stdout.strip()
    made, after = json.loads(out)
    assert made == after and min(made) >= 1, out
