"""Merging drift windows with more unseen categories than are kept by name: the result does
not depend on which window comes first, and every count survives."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from modelplane.profiles import BaselineProfile, build_profile
from sidecar.drift import DriftMonitor, WindowState
from sidecar.drift._window import MAX_UNSEEN, OVERFLOW_CATEGORY


def _profile() -> BaselineProfile:
    rng = np.random.default_rng(5)
    table = pa.table(
        {"x": rng.normal(size=500), "colour": rng.choice(["red", "green"], 500).tolist()}
    )
    return build_profile(table, [], sample_size=200)


def _window(profile: BaselineProfile, colours: list[str]) -> WindowState:
    monitor = DriftMonitor(profile)
    monitor.update({"x": np.zeros(len(colours)), "colour": colours})
    return monitor.flush()


def test_merging_past_the_unseen_cap_is_the_same_in_either_order() -> None:
    profile = _profile()
    # Each window holds MAX_UNSEEN names of its own and 100 shared ones: together they pass
    # the cap, so names must fold into the overflow category.
    shared = [f"s{i}" for i in range(100)]
    a = _window(profile, [f"a{i}" for i in range(MAX_UNSEEN - 100)] + shared * 3)
    b = _window(profile, [f"b{i}" for i in range(MAX_UNSEEN - 100)] + shared * 2 + ["b0"] * 4)
    ab, ba = a.merge(b), b.merge(a)
    assert ab.unseen == ba.unseen
    (names,) = ab.unseen
    assert len(names) == MAX_UNSEEN + 1
    # The most frequent names keep their own counts; the rest add up under the overflow.
    assert all(names[s] == 5 for s in shared) and names["b0"] == 5
    total = sum(a.unseen[0].values()) + sum(b.unseen[0].values())
    assert sum(names.values()) == total
    assert names[OVERFLOW_CATEGORY] == total - sum(
        c for n, c in names.items() if n != OVERFLOW_CATEGORY
    )
    assert ab.rows == ba.rows == a.rows + b.rows


def test_merging_below_the_cap_keeps_every_name() -> None:
    profile = _profile()
    a = _window(profile, ["p", "q", "q", "red"])
    b = _window(profile, ["q", "r"])
    assert a.merge(b).unseen == [{"p": 1, "q": 3, "r": 1}]


def test_report_does_not_depend_on_how_windows_were_merged() -> None:
    # Past the cap, which names a merge folds into the overflow depends on the grouping; the
    # report scores every unseen category as one bin, so its statistics do not.
    profile = _profile()
    monitor = DriftMonitor(profile)
    n = [f"n{i}" for i in range(MAX_UNSEEN)]
    m = [f"m{i}" for i in range(MAX_UNSEEN)]
    x = _window(profile, ["red"] * 900 + n)
    y = _window(profile, ["green"] * 300 + m)
    z = _window(profile, ["red"] * 100 + n)
    # x + z first: the n names count 2 and keep their names; z + y first: every name counts
    # 1, the m names win the tie and the n names fold for good.
    left, right = x.merge(z).merge(y), x.merge(z.merge(y))
    assert left.unseen != right.unseen
    assert sum(left.unseen[0].values()) == sum(right.unseen[0].values())
    first, second = monitor.score(left), monitor.score(right)
    assert first.features == second.features
    colour = first.feature("colour")
    assert colour.psi is not None and colour.chi2_statistic is not None
