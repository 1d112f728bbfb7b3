"""Window merging and derived fields against numpy/scipy references; guards, the state machine
and rollout settings as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

from controlplane.domain.deployments import (
    ArmSummary,
    DriftSummary,
    Evidence,
    FeatureCounts,
    Histogram,
    ShadowSummary,
    WindowReport,
)
from controlplane.rollouts import drift, guards, histograms, machine
from controlplane.rollouts.merge import merge_reports
from controlplane.rollouts.spec import build_spec
from modelplane.errors import FailedPrecondition, InvalidArgument
from modelplane.profiles import CategoricalFeature, NumericFeature, build_profile, psi_from_counts


def hist(values: np.ndarray, low: float, high: float, n: int, log: bool) -> Histogram:
    edges = (
        np.logspace(np.log10(low), np.log10(high), n + 1) if log else np.linspace(low, high, n + 1)
    )
    inside = values[(values >= low) & (values < high)]
    counts, _ = np.histogram(inside, bins=edges)
    return Histogram(
        low,
        high,
        log,
        tuple(int(c) for c in counts),
        int((values < low).sum()),
        int((values >= high).sum()),
        float(values.sum()),
    )


def test_merged_histogram_equals_histogram_of_pooled_data() -> None:
    rng = np.random.default_rng(0)
    parts = [rng.lognormal(-5, 1, size=n) for n in (1000, 3000, 17)]
    merged = histograms.merge([hist(p, 1e-4, 1.0, 40, True) for p in parts], "latency")
    pooled = np.concatenate(parts)
    reference = hist(pooled, 1e-4, 1.0, 40, True)
    assert merged is not None and merged.counts == reference.counts
    assert (merged.underflow, merged.overflow) == (reference.underflow, reference.overflow)
    assert merged.sum == pytest.approx(pooled.sum())
    assert merged.total == len(pooled)
    with pytest.raises(InvalidArgument) as err:
        histograms.merge(
            [hist(pooled, 1e-4, 1.0, 40, True), hist(pooled, 1e-4, 2.0, 40, True)], "x"
        )
    assert err.value.reason == "HISTOGRAM_LAYOUT_MISMATCH"


@pytest.mark.parametrize("log", [True, False])
def test_quantiles_within_one_bucket_of_numpy(log: bool) -> None:
    rng = np.random.default_rng(1)
    values = rng.lognormal(-4, 0.8, size=20_000) if log else rng.uniform(0, 1, size=20_000)
    h = hist(values, 1e-4, 10.0, 200, True) if log else hist(values, 0.0, 1.0, 100, False)
    e = histograms.edges(h)
    for q in (0.5, 0.9, 0.99):
        exact = float(np.quantile(values, q))
        got = histograms.quantile(h, q)
        assert got is not None
        i = int(np.searchsorted(e, exact, side="right")) - 1
        assert e[i] <= got <= e[i + 1] or abs(got - exact) <= (e[i + 1] - e[i])


def test_quantile_interpolates_within_the_bucket() -> None:
    h = Histogram(0.0, 10.0, False, (0, 10, 0, 0, 0))  # ten values in [2, 4)
    assert histograms.quantile(h, 0.5) == pytest.approx(3.0)
    assert histograms.quantile(h, 0.99) == pytest.approx(3.98)
    logh = Histogram(0.001, 10.0, True, (0, 4, 0, 0))  # ten-fold buckets; values in [0.01, 0.1)
    assert histograms.quantile(logh, 0.5) == pytest.approx(10**-1.5)
    assert histograms.quantile(Histogram(1.0, 2.0, False, (0,), underflow=3), 0.5) == 1.0
    assert histograms.quantile(Histogram(1.0, 2.0, False, (0,), overflow=3), 0.5) == 2.0
    assert histograms.quantile(Histogram(1.0, 2.0, False, (0,)), 0.5) is None


def test_ks_from_histograms_matches_scipy_on_bucketed_data() -> None:
    rng = np.random.default_rng(2)
    a = rng.beta(2, 5, size=3000)
    b = rng.beta(2.6, 5, size=2000)
    ha, hb = hist(a, 0.0, 1.0, 50, False), hist(b, 0.0, 1.0, 50, False)
    # Round each value to its bucket's left edge: scipy's KS of the rounded data is the
    # largest CDF distance at the edges.
    e = histograms.edges(ha)
    ra = e[np.clip(np.searchsorted(e, a, side="right") - 1, 0, 49)]
    rb = e[np.clip(np.searchsorted(e, b, side="right") - 1, 0, 49)]
    expected = stats.ks_2samp(ra, rb).statistic
    assert histograms.ks_statistic(ha, hb, "s") == pytest.approx(expected)
    assert histograms.ks_statistic(ha, None, "s") is None


def _arm(name: str, version: int, requests: int, errors: int, latency: np.ndarray) -> ArmSummary:
    return ArmSummary(
        arm=name,
        version=version,
        requests=requests,
        errors=errors,
        rows=requests,
        latency=hist(latency, 1e-4, 10.0, 60, True),
        labeled=requests // 2,
        correct=requests // 3,
        label_counts={0: requests - 1, 1: 1},
    )


def test_merge_reports_adds_counts_and_derives_fields() -> None:
    rng = np.random.default_rng(3)
    lat = [rng.lognormal(-5, 0.5, size=n) for n in (300, 500)]
    reports = []
    for i, (requests, errors) in enumerate([(300, 3), (500, 20)]):
        shadow = ShadowSummary(
            version=2,
            pairs=requests,
            disagreements=i + 5,
            abs_diff_sum=0.5 * requests,
            champion_scores=hist(rng.uniform(size=requests), 0, 1, 20, False),
            shadow_scores=hist(rng.uniform(size=requests) ** 1.3, 0, 1, 20, False),
        )
        reports.append(
            WindowReport(
                "d",
                f"r{i}",
                1,
                2,
                "ro",
                None,
                None,
                (
                    _arm("champion", 1, requests, errors, lat[i]),
                    _arm("candidate", 7, 10, 0, lat[i][:10]),
                ),
                shadow,
            )
        )
    champion, candidate, merged_shadow = merge_reports(reports, {"champion": 1, "candidate": 2})
    assert candidate is None  # version 7 is not the candidate
    assert champion is not None and merged_shadow is not None
    shadow = merged_shadow
    assert champion.requests == 800 and champion.errors == 23
    assert champion.error_rate == pytest.approx(23 / 800)
    assert champion.accuracy == pytest.approx((100 + 166) / (150 + 250))
    assert champion.label_counts == {0: 798, 1: 2}
    pooled = np.concatenate(lat)
    e = histograms.edges(champion.latency)  # type: ignore[arg-type]
    exact = np.quantile(pooled, 0.99)
    i = int(np.searchsorted(e, exact, side="right")) - 1
    assert champion.latency_p99 is not None and e[i] <= champion.latency_p99 <= e[i + 1]
    assert shadow.pairs == 800 and shadow.disagreement_rate == pytest.approx(11 / 800)
    assert shadow.mean_abs_diff == pytest.approx(0.5)
    assert shadow.ks_statistic is not None and 0 <= shadow.ks_statistic <= 1


def test_drift_psi_matches_the_sidecar_definition() -> None:
    rng = np.random.default_rng(4)
    train = pa.table(
        {
            "x": rng.normal(0, 1, 5000),
            "color": pa.array(rng.choice(["red", "green", "blue"], 5000)),
        }
    )
    profile = build_profile(train, ["x", "color"])
    x = profile.feature("x")
    color = profile.feature("color")
    assert isinstance(x, NumericFeature) and isinstance(color, CategoricalFeature)
    current = rng.normal(0.8, 1, 2000)
    bins = np.bincount(np.searchsorted(x.edges, current, side="right"), minlength=len(x.edges) + 1)
    parts = [bins // 2, bins - bins // 2]
    cats = list(color.categories)
    summaries = [
        DriftSummary(
            "abc",
            int(p.sum()),
            (
                FeatureCounts("x", tuple(int(v) for v in p)),
                FeatureCounts("color", (int(p.sum()), 0, 0), out_of_range=3),
            ),
        )
        for p in parts
    ]
    from controlplane.rollouts.merge import merge_drift

    merged = merge_drift(summaries, "candidate.drift")
    assert merged is not None and merged.features[0].counts == tuple(int(v) for v in bins)
    drift.check_layout(merged, profile, "candidate.drift")
    scored = drift.score(merged, profile)
    psi_x = psi_from_counts(x.bin_counts, bins)
    ref_color = np.array([*color.categories.values(), 0])
    psi_color = psi_from_counts(ref_color, [int(bins.sum()), 0, 0, 6])
    assert scored.max_psi == pytest.approx(max(psi_x, psi_color))
    assert scored.drifted_share == pytest.approx(sum(v >= 0.2 for v in (psi_x, psi_color)) / 2)
    # The same number as a direct numpy computation of the documented formula.
    r = np.maximum(x.bin_counts / x.bin_counts.sum(), 1e-4)
    c = np.maximum(bins / bins.sum(), 1e-4)
    assert psi_x == pytest.approx(float(np.sum((c - r) * np.log(c / r))))
    assert cats == sorted(cats)
    bad = DriftSummary("abc", 1, (FeatureCounts("x", (1, 2)),))
    with pytest.raises(InvalidArgument) as err:
        drift.check_layout(bad, profile, "candidate.drift")
    assert err.value.reason == "HISTOGRAM_LAYOUT_MISMATCH"
    from controlplane.domain.deployments import DriftThresholds

    t = DriftThresholds(max_psi=0.1, min_rows=100)
    assert drift.crossed(scored, t)
    assert not drift.crossed(scored, DriftThresholds(max_psi=0.1, min_rows=10_000))
    assert not drift.crossed(scored, DriftThresholds())


def test_guard_evaluation_skips_missing_and_thin_arms() -> None:
    champion = ArmSummary("champion", 1, requests=100, errors=1, error_rate=0.01, latency_p99=0.01)
    candidate = ArmSummary(
        "candidate", 2, requests=100, errors=9, error_rate=0.09, latency_p99=0.01
    )
    ev = Evidence(champion=champion, candidate=candidate)
    values = guards.variables(ev)
    got = guards.evaluate(
        [*guards.DEFAULT_TRAFFIC_GUARDS, "candidate.accuracy > 0.9", "shadow.pairs > 1"],
        values,
        20,
    )
    assert [g.passed for g in got] == [False, True, False, False]
    assert got[0].failed and not got[1].failed
    assert "candidate.accuracy" in got[2].error and "shadow" in got[3].error
    assert guards.first_failure(got) is got[0]
    thin = guards.evaluate(["candidate.error_rate < 0.01"], values, 500)
    assert not thin[0].failed and "fewer than 500" in thin[0].error
    # The champion's reference stands in when it had no traffic.
    silent = Evidence(champion=ArmSummary("champion", 1), candidate=candidate)
    ref = guards.variables(silent, champion)
    assert ref["champion"]["error_rate"] == 0.01
    assert guards.effective_guards([], [], "shadow") == guards.DEFAULT_SHADOW_GUARDS
    assert guards.effective_guards(["a"], ["b"], "canary") == ("a", "b")


def test_machine_canary_needs_time_and_requests() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    spec = build_spec(
        candidate_version=2, strategy="canary", step_duration_seconds=10, min_requests=5
    )
    assert spec.steps == (10.0, 50.0, 100.0) and spec.guards == ()
    r = machine.start("ro-1", "d", spec, 1, "alice", "", t0)
    assert machine.due(r, t0 + timedelta(seconds=11), 2) is None  # no requests yet
    r = r.__class__(**{**r.__dict__, "step_candidate_requests": 5})
    assert machine.due(r, t0 + timedelta(seconds=9), 2) is None  # too early
    t = machine.due(r, t0 + timedelta(seconds=10), 2)
    assert t is not None and t.action == "advanced" and t.rollout.candidate_percent == 50
    assert t.rollout.step_candidate_requests == 0
    with pytest.raises(FailedPrecondition) as err:
        machine.manual(r, "resume", t0, "", "deployments/d")
    assert err.value.reason == "ROLLOUT_NOT_PAUSED"
    done = machine.manual(r, "promote", t0, "ok", "deployments/d")
    assert done.champion_version == 2 and done.rollout.end_time == t0


def test_spec_defaults() -> None:
    ab = build_spec(candidate_version=3, strategy="ab")
    assert ab.split == 50 and ab.step_duration_seconds == 60 and ab.min_requests == 100
    shadow = build_spec(candidate_version=3, strategy="shadow")
    assert shadow.shadow_fraction == 1.0 and shadow.steps == ()
