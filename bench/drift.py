"""Drift benchmark: the Numba engine against a scipy/numpy loop and Evidently.

Reference 1,000,000 x 20 float features, current window 100,000 x 20 with half the features
shifted. Prints one JSON object per line: preparation and compile times, per-window scoring
times with ratios, KS agreement with scipy, and the streaming update cost for 32 features.
Evidently runs in its own environment (.venv-peers/evidently, from bench/peers/evidently.txt).

Two comparisons besides the engine's scoring against the scipy/numpy loop as a script writes
it: the loop with its reference-only work (sorting, quantile edges, reference bin counts and
CDF) prepared once, as the engine prepares its baseline (``score_window_prepared_scipy``); and
each peer against the engine's preparation plus one window (``prepare_plus_window``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import stats
from scipy.spatial.distance import jensenshannon

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "clients" / "python")]

from modelplane.profiles import build_profile  # noqa: E402
from modelplane.server.cpus import available_cores  # noqa: E402
from sidecar.drift import DriftMonitor, ReferenceSet  # noqa: E402
from sidecar.drift._kernels import summarize_cells  # noqa: E402

EVIDENTLY_PYTHON = ROOT / ".venv-peers" / "evidently" / "bin" / "python"

COMPILE_SNIPPET = """
import time, numpy as np
t = time.perf_counter()
import sidecar.drift as d
from modelplane.profiles import build_profile
import pyarrow as pa
rng = np.random.default_rng(0)
d.ks_2samp(rng.normal(size=50), rng.normal(size=40))
d.wasserstein(rng.normal(size=50), rng.normal(size=40))
p = build_profile(pa.table({"x": rng.normal(size=100)}), [])
m = d.DriftMonitor(p)
m.update(rng.normal(size=(10, 1)))
m.update(rng.normal(size=(10, 1)).astype(np.float32))
m.score(m.flush())
print(time.perf_counter() - t)
"""

EVIDENTLY_SNIPPET = """
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import pandas as pd
from evidently import Report
from evidently.presets import DataDriftPreset
ref = pd.read_parquet(sys.argv[1])
cur = pd.read_parquet(sys.argv[2])
import evidently
t = time.perf_counter()
report = Report([DataDriftPreset(method="ks")])
snapshot = report.run(cur, ref)
result = snapshot.dict()
elapsed = time.perf_counter() - t
values = {}
for metric in result["metrics"]:
    config = metric.get("config", {})
    if str(config.get("type", "")).endswith("ValueDrift"):
        values[config["column"]] = float(metric["value"])
print(json.dumps({"seconds": elapsed, "version": evidently.__version__, "ks_pvalues": values}))
"""


def emit(**fields: object) -> None:
    """Print one JSON line."""
    print(json.dumps(fields), flush=True)


def best_of(repeats: int, fn) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    """Smallest wall time over ``repeats`` calls, and the last result."""
    best, result = math.inf, None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def compile_times() -> None:
    """Numba compile time in a fresh process with an empty cache, then the cached load."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=f"{ROOT}:{ROOT}/clients/python")
        runs = []
        for _ in range(2):
            out = subprocess.run(
                [sys.executable, "-c", COMPILE_SNIPPET],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            runs.append(float(out.stdout.strip().splitlines()[-1]))
    emit(bench="drift", what="numba_first_use", compile_s=runs[0], cached_load_s=runs[1])


def scipy_loop(ref_cols: list[np.ndarray], cur_cols: list[np.ndarray]) -> list[tuple]:
    """PSI (numpy), KS (scipy) and JS (scipy) per feature, the way a script would do it."""
    out = []
    for ref, cur in zip(ref_cols, cur_cols, strict=True):
        ks = stats.ks_2samp(ref, cur, method="asymp")
        edges = np.unique(np.quantile(ref, np.arange(1, 10) / 10))
        r = np.bincount(np.digitize(ref, edges), minlength=len(edges) + 1)
        c = np.bincount(np.digitize(cur, edges), minlength=len(edges) + 1)
        rp = np.maximum(r / r.sum(), 1e-4)
        cp = np.maximum(c / c.sum(), 1e-4)
        psi = float(np.sum((cp - rp) * np.log(cp / rp)))
        out.append((float(ks.statistic), float(ks.pvalue), psi, float(jensenshannon(r, c))))
    return out


def prepare_scipy(ref_cols: list[np.ndarray]) -> list[tuple]:
    """The scipy/numpy loop's reference-only work, done once: each column sorted, its CDF at
    its own values, its quantile edges and bin counts (and shares)."""
    out = []
    for ref in ref_cols:
        srt = np.sort(ref)
        cdf = np.searchsorted(srt, srt, side="right") / len(srt)
        edges = np.unique(np.quantile(srt, np.arange(1, 10) / 10))
        r = np.bincount(np.digitize(srt, edges), minlength=len(edges) + 1)
        rp = np.maximum(r / r.sum(), 1e-4)
        out.append((srt, cdf, edges, r, rp))
    return out


def scipy_loop_prepared(prepared: list[tuple], cur_cols: list[np.ndarray]) -> list[tuple]:
    """What :func:`scipy_loop` computes, against the prepared reference: the KS statistic as
    ``ks_2samp`` computes it (both empirical CDFs at every value of both samples, the
    reference's own half read from the prepared CDF) with its asymptotic p-value, PSI and JS
    from the prepared edges and counts."""
    out = []
    for (srt, ref_cdf, edges, r, rp), cur in zip(prepared, cur_cols, strict=True):
        n1, n2 = len(srt), len(cur)
        cs = np.sort(cur)
        at_ref = np.abs(ref_cdf - np.searchsorted(cs, srt, side="right") / n2)
        at_cur = np.abs(
            np.searchsorted(srt, cs, side="right") / n1 - np.searchsorted(cs, cs, side="right") / n2
        )
        d = float(max(at_ref.max(), at_cur.max()))
        m, n = sorted([float(n1), float(n2)], reverse=True)
        pvalue = float(np.clip(stats.kstwo.sf(d, np.round(m * n / (m + n))), 0, 1))
        c = np.bincount(np.digitize(cur, edges), minlength=len(edges) + 1)
        cp = np.maximum(c / c.sum(), 1e-4)
        psi = float(np.sum((cp - rp) * np.log(cp / rp)))
        out.append((d, pvalue, psi, float(jensenshannon(r, c))))
    return out


def max_diffs(got: list[tuple], want: list[tuple]) -> dict[str, float]:
    """Largest absolute differences of KS statistic, p-value, PSI and JS."""
    keys = ("ks_statistic", "ks_pvalue", "psi", "js")
    return {
        f"{k}_max_abs_diff": max(abs(g[i] - w[i]) for g, w in zip(got, want, strict=True))
        for i, k in enumerate(keys)
    }


def evidently(ref: np.ndarray, cur: np.ndarray, names: list[str]) -> dict | None:
    """Run Evidently's data-drift preset (KS forced) in its own environment."""
    if not EVIDENTLY_PYTHON.exists():
        emit(
            bench="drift",
            what="evidently",
            skipped="no .venv-peers/evidently; build it with `make bench` "
            "(pip install -r bench/peers/evidently.txt)",
        )
        return None
    with tempfile.TemporaryDirectory() as tmp:
        ref_path, cur_path = Path(tmp, "ref.parquet"), Path(tmp, "cur.parquet")
        pq.write_table(pa.table({n: ref[:, i] for i, n in enumerate(names)}), ref_path)
        pq.write_table(pa.table({n: cur[:, i] for i, n in enumerate(names)}), cur_path)
        out = subprocess.run(
            [str(EVIDENTLY_PYTHON), "-c", EVIDENTLY_SNIPPET, str(ref_path), str(cur_path)],
            capture_output=True,
            text=True,
            check=False,
        )
    if out.returncode != 0:
        emit(bench="drift", what="evidently", error=out.stderr.strip()[-2000:])
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def streaming(features: int, batch_rows: int, batches: int) -> None:
    """Streaming update cost per row, against a numpy searchsorted/bincount update."""
    rng = np.random.default_rng(1)
    profile = build_profile(
        pa.table({f"f{i}": rng.normal(size=100_000) for i in range(features)}), []
    )
    monitor = DriftMonitor(profile)
    data = [rng.normal(0.1, 1.0, size=(batch_rows, features)) for _ in range(batches)]
    monitor.update(data[0])
    monitor.flush()

    def engine() -> None:
        for batch in data:
            monitor.update(batch)

    grid = monitor.grid
    points = [
        grid.points[grid.point_offsets[i] : grid.point_offsets[i + 1]] for i in range(features)
    ]
    counts = [np.zeros(2 * len(p) + 1, np.int64) for p in points]

    def numpy_update() -> None:
        for batch in data:
            for i in range(features):
                column = batch[:, i]
                pos = np.searchsorted(points[i], column, side="left")
                equal = points[i][np.minimum(pos, len(points[i]) - 1)] == column
                counts[i] += np.bincount(2 * pos + equal, minlength=len(counts[i]))

    rows = batch_rows * batches
    engine_s, _ = best_of(3, engine)
    numpy_s, _ = best_of(3, numpy_update)
    cpu = time.process_time()
    engine()
    engine_cpu = time.process_time() - cpu
    emit(
        bench="drift",
        what="streaming_update",
        features=features,
        batch_rows=batch_rows,
        engine_us_per_row=engine_s / rows * 1e6,
        engine_cpu_us_per_row=engine_cpu / rows * 1e6,
        numpy_us_per_row=numpy_s / rows * 1e6,
        speedup_vs_numpy=numpy_s / engine_s,
        target_us_per_row=2.0,
    )
    window = monitor.current()
    score_s, report = best_of(5, lambda: monitor.score(window))
    kernel_s, _ = best_of(5, lambda: engine_window_ks(grid, window))
    numpy_s, numpy_ks = best_of(5, lambda: numpy_window_ks(grid, window))
    ks = [f.ks_statistic for f in report.features]
    emit(
        bench="drift",
        what="score_streaming_window",
        features=features,
        window_rows=window.rows,
        reference_sample=len(grid.numeric[0].feature.sample),
        report_ms=score_s * 1e3,
        ks_and_bins_engine_ms=kernel_s * 1e3,
        ks_and_bins_numpy_ms=numpy_s * 1e3,
        speedup_vs_numpy=numpy_s / kernel_s,
        ks_max_abs_diff=max(abs(a - b) for a, b in zip(ks, numpy_ks, strict=True)),
    )


def engine_window_ks(grid: Any, window: Any) -> list[float]:
    """Each feature's bin counts and KS distance, as the engine's report computes them."""
    out = []
    for i, ngrid in enumerate(grid.numeric):
        cells = window.cells[grid.cell_offsets[i] : grid.cell_offsets[i + 1]]
        bins = np.zeros(len(ngrid.feature.edges) + 1, np.int64)
        reference = len(ngrid.feature.sample)
        _, statistic = summarize_cells(
            cells, ngrid.cell_to_sample_cell, ngrid.cell_to_bin, ngrid.sample_cum, reference, bins
        )
        out.append(statistic)
    return out


def numpy_window_ks(grid: Any, window: Any) -> list[float]:
    """Each feature's bin counts and KS distance from its window's grid cells in numpy (the
    engine's former implementation, kept as the baseline)."""
    out = []
    for i, ngrid in enumerate(grid.numeric):
        cells = window.cells[grid.cell_offsets[i] : grid.cell_offsets[i + 1]]
        count = int(cells.sum())
        np.bincount(ngrid.cell_to_bin, weights=cells, minlength=len(ngrid.feature.edges) + 1)
        reference = len(ngrid.feature.sample)
        sample_cells = np.bincount(
            ngrid.cell_to_sample_cell, weights=cells, minlength=2 * len(ngrid.sample_values) + 1
        ).astype(np.int64)
        cum = np.cumsum(sample_cells)
        at_points = np.abs(ngrid.sample_cum / reference - cum[1::2] / count)
        gaps = sample_cells[0:-1:2] > 0
        before = np.concatenate(([0], ngrid.sample_cum[:-1]))
        in_gaps = np.abs(before / reference - cum[0:-1:2] / count)[gaps]
        out.append(float(max(at_points.max(initial=0.0), in_gaps.max(initial=0.0))))
    return out


def main() -> None:
    """Run every part and print JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reference-rows", type=int, default=1_000_000)
    parser.add_argument("--current-rows", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--no-evidently", action="store_true")
    args = parser.parse_args()

    compile_times()
    rng = np.random.default_rng(2026)
    n_features = args.features
    names = [f"f{i}" for i in range(n_features)]
    ref = rng.normal(size=(args.reference_rows, n_features))
    cur = rng.normal(size=(args.current_rows, n_features))
    shifted = list(range(0, n_features, 2))
    cur[:, shifted] += 0.1
    cur[:, shifted] *= 1.1

    prepare_s, reference = best_of(3, lambda: ReferenceSet.prepare(ref, names))
    assert isinstance(reference, ReferenceSet)
    one_prepare_s, _ = best_of(3, lambda: ReferenceSet.prepare(ref, names, workers=1))
    emit(
        bench="drift",
        what="prepare_baseline",
        seconds=prepare_s,
        one_thread_seconds=one_prepare_s,
        rows=args.reference_rows,
    )

    engine_s, scores = best_of(3, lambda: reference.score(cur))
    # The engine scores features on a thread per core; the loops below run on one thread.
    one_thread_s, one_thread = best_of(3, lambda: reference.score(cur, workers=1))
    assert one_thread == scores
    ref_cols = [np.ascontiguousarray(ref[:, i]) for i in range(n_features)]
    cur_cols = [np.ascontiguousarray(cur[:, i]) for i in range(n_features)]
    scipy_s, expected = best_of(1, lambda: scipy_loop(ref_cols, cur_cols))
    assert isinstance(scores, list) and isinstance(expected, list)
    ks_stat_diff = max(abs(s.ks_statistic - e[0]) for s, e in zip(scores, expected, strict=True))
    ks_p_diff = max(abs(s.ks_pvalue - e[1]) for s, e in zip(scores, expected, strict=True))
    psi_diff = max(abs(s.psi - e[2]) for s, e in zip(scores, expected, strict=True))
    js_diff = max(abs(s.js - e[3]) for s, e in zip(scores, expected, strict=True))
    flagged = [s.name for s in scores if s.ks_pvalue < 0.05 or s.psi >= 0.2]
    emit(
        bench="drift",
        what="score_window",
        engine_s=engine_s,
        engine_threads=min(available_cores(), n_features),
        engine_one_thread_s=one_thread_s,
        scipy_numpy_loop_s=scipy_s,
        speedup_vs_scipy=scipy_s / engine_s,
        speedup_vs_scipy_one_thread=scipy_s / one_thread_s,
        target_speedup_vs_scipy=20,
        ks_statistic_max_abs_diff=ks_stat_diff,
        ks_pvalue_max_abs_diff=ks_p_diff,
        psi_max_abs_diff=psi_diff,
        js_max_abs_diff=js_diff,
        ks_equal_to_scipy=ks_stat_diff <= 1e-12 and ks_p_diff <= 1e-6,
        drifted=flagged,
        shifted=[names[i] for i in shifted],
    )

    scipy_prepare_s, prepared = best_of(3, lambda: prepare_scipy(ref_cols))
    assert isinstance(prepared, list)
    hoisted_s, hoisted = best_of(3, lambda: scipy_loop_prepared(prepared, cur_cols))
    assert isinstance(hoisted, list)
    emit(
        bench="drift",
        what="score_window_prepared_scipy",
        scipy_prepare_s=scipy_prepare_s,
        scipy_prepared_window_s=hoisted_s,
        engine_s=engine_s,
        speedup_vs_prepared_scipy=hoisted_s / engine_s,
        speedup_vs_prepared_scipy_one_thread=hoisted_s / one_thread_s,
        target_speedup_vs_scipy=20,
        vs_scipy_loop=max_diffs(hoisted, expected),
        vs_engine=max_diffs(hoisted, [(s.ks_statistic, s.ks_pvalue, s.psi, s.js) for s in scores]),
    )
    with_prep = prepare_s + engine_s
    ratios = {
        "speedup_vs_scipy": scipy_s / with_prep,
        "speedup_vs_prepared_scipy_window": hoisted_s / with_prep,
        "speedup_vs_prepared_scipy_with_its_prep": (scipy_prepare_s + hoisted_s) / with_prep,
    }

    peer = None if args.no_evidently else evidently(ref, cur, names)
    if peer is not None:
        peer_p = peer["ks_pvalues"]
        agree = [abs(peer_p[s.name] - s.ks_pvalue) for s in scores if s.name in peer_p]
        emit(
            bench="drift",
            what="evidently",
            version=peer["version"],
            evidently_s=peer["seconds"],
            engine_s=engine_s,
            speedup_vs_evidently=peer["seconds"] / engine_s,
            target_speedup_vs_evidently=100,
            features_compared=len(agree),
            ks_pvalue_max_abs_diff=max(agree) if agree else None,
        )
        ratios["speedup_vs_evidently"] = peer["seconds"] / with_prep
    emit(
        bench="drift",
        what="prepare_plus_window",
        engine_prepare_s=prepare_s,
        engine_window_s=engine_s,
        engine_prepare_plus_window_s=with_prep,
        **ratios,
        target_speedup_vs_scipy=20,
        target_speedup_vs_evidently=100,
    )

    streaming(features=32, batch_rows=256, batches=200)


if __name__ == "__main__":
    main()
