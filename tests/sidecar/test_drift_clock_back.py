"""Drift windows when the wall clock steps back (NTP): no window ends before it starts."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from modelplane.profiles import build_profile
from sidecar.drift import DriftMonitor


def test_a_clock_stepping_back_gives_no_window_ending_before_it_starts() -> None:
    rng = np.random.default_rng(3)
    profile = build_profile(pa.table({"a": rng.normal(size=500), "b": rng.normal(size=500)}), [])
    now = [1_000.0]
    monitor = DriftMonitor(profile, window_seconds=60, clock=lambda: now[0])
    monitor.update(rng.normal(size=(5, 2)))
    now[0] = 1_000.0 + 60 * 5 + 1
    monitor.update(rng.normal(size=(3, 2)))
    started = monitor.current().start
    now[0] = 900.0
    monitor.update(rng.normal(size=(2, 2)))
    window = monitor.flush()
    assert window.rows == 5 and window.start == started
    assert window.end is not None and window.end >= window.start
    assert monitor.current().start >= window.end


def test_a_clock_stepping_back_in_row_windows() -> None:
    rng = np.random.default_rng(4)
    profile = build_profile(pa.table({"a": rng.normal(size=500)}), [])
    now = [1_000.0]
    monitor = DriftMonitor(profile, window_rows=4, clock=lambda: now[0])
    monitor.update(rng.normal(size=(4, 1)))
    now[0] = 500.0
    closed = monitor.update(rng.normal(size=(4, 1)))
    assert [(w.start, w.end) for w in closed] == [(1_000.0, 1_000.0)]
    assert monitor.current().start == 1_000.0
