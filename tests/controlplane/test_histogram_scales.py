"""The histograms a managed sidecar reports, read by the control plane on their own scale:
bucket edges in the value's units, counts and quantiles agreeing with numpy on the raw values,
for every layout the sidecar uses (latency on log10, probabilities linear, regression values
on the symmetric log)."""

from __future__ import annotations

import numpy as np
import pytest

from controlplane.api.deployments_converters import histogram_from_proto
from controlplane.domain.deployments import Histogram
from controlplane.rollouts import histograms
from controlplane.store.deployment_json import histogram as histogram_from_json
from controlplane.store.deployment_json import to_json
from modelplane.errors import InvalidArgument
from sidecar.managed.compare import LATENCY, PROBABILITY, REGRESSION, Hist, Layout


def _values(layout: Layout, rng: np.random.Generator) -> np.ndarray:
    if layout is LATENCY:
        return rng.lognormal(-6, 1.5, size=20_000)
    if layout is PROBABILITY:
        return rng.beta(2, 5, size=20_000)
    # Regression outputs of both signs over many magnitudes.
    return rng.standard_t(2, size=20_000) * 300.0


@pytest.mark.parametrize("layout", [LATENCY, PROBABILITY, REGRESSION], ids=["log", "lin", "sym"])
def test_reported_histograms_are_read_in_the_values_units(layout: Layout) -> None:
    values = _values(layout, np.random.default_rng(7))
    filled = Hist(layout)
    filled.add(values)
    h = histogram_from_proto(filled.to_proto(), True)
    assert h is not None and histograms.check(h, "scores") is h
    e = histograms.edges(h)
    assert e[0] == pytest.approx(h.low) and e[-1] == pytest.approx(h.high)
    assert h.low <= values.min() and values.max() < h.high
    # The sidecar's buckets hold what numpy counts between the edges the control plane reads
    # (a value within rounding of an edge may land on either side).
    reference, _ = np.histogram(values, bins=e)
    assert np.abs(np.asarray(h.counts) - reference).sum() <= 4
    for q in (0.1, 0.5, 0.9):
        exact = float(np.quantile(values, q))
        got = histograms.quantile(h, q)
        assert got is not None
        i = int(np.searchsorted(e, exact, side="right")) - 1
        assert e[max(i - 1, 0)] <= got <= e[min(i + 2, len(e) - 1)], (q, exact, got)
    assert histogram_from_json(to_json(h)) == h


def test_the_regression_layout_of_older_sidecars_reads_as_symlog() -> None:
    """Before the symlog flag, sidecars sent regression buckets with their bounds on the scale;
    such reports (and sums stored from them) merge with current ones."""
    values = _values(REGRESSION, np.random.default_rng(8))
    filled = Hist(REGRESSION)
    filled.add(values)
    current = filled.to_proto()
    legacy = type(current)()
    legacy.CopyFrom(current)
    legacy.low, legacy.high, legacy.symlog = -12.0, 12.0, False
    old = histogram_from_proto(legacy, True)
    new = histogram_from_proto(current, True)
    assert new is not None and new.symlog and old == new
    assert histogram_from_json(to_json(Histogram(-12.0, 12.0, False, new.counts))) == Histogram(
        new.low, new.high, False, new.counts, symlog=True
    )
    merged = histograms.merge([old, new], "candidate.scores")
    assert merged is not None and merged.total == 2 * len(values)


def test_one_scale_per_histogram() -> None:
    with pytest.raises(InvalidArgument) as err:
        histograms.check(Histogram(1.0, 10.0, True, (1, 2), symlog=True), "x")
    assert err.value.reason == "INVALID_HISTOGRAM"
    with pytest.raises(InvalidArgument) as err:
        histograms.merge(
            [Histogram(-5.0, 5.0, False, (1, 2)), Histogram(-5.0, 5.0, False, (1, 2), symlog=True)],
            "x",
        )
    assert err.value.reason == "HISTOGRAM_LAYOUT_MISMATCH"
