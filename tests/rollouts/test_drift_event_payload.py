"""The drift event's payload judges features by the deployment's thresholds: a window that
crosses ``max_psi`` names the features that crossed it as drifted, ``drifted_share`` (and
``max_drifted_share``) counts them, and the payload says which windows it judged."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from modelplane.profiles import BaselineProfile, NumericFeature, psi_from_counts
from modelplane.v1 import deployments_pb2 as pb
from tests.controlplane.conftest import start_controlplane
from tests.controlplane.test_deployments_api import arm, wait_for
from tests.controlplane.test_deployments_drift import (  # noqa: F401
    FEATURES,
    Hook,
    _with_baseline,
    webhook,
)

ROWS = 200
SHIFT = 0.4


def _counts(feature: NumericFeature, shift: float, rows: int) -> list[int]:
    """Rows of N(shift, 1) over the feature's bins, as expected (no sampling noise)."""
    cdf = np.array([0.5 * (1 + math.erf((e - shift) / math.sqrt(2))) for e in feature.edges])
    shares = np.diff(np.concatenate(([0.0], cdf, [1.0])))
    return [int(v) for v in np.round(shares * rows)]


def _arm(version: int, profile: BaselineProfile, sha: str) -> Any:
    """A window where only x0 moved (by :data:`SHIFT`); the other features keep their
    baseline's shares."""
    summary = pb.DriftSummary(baseline_sha256=sha, rows=ROWS)
    for name in FEATURES:
        feature = profile.feature(name)
        assert isinstance(feature, NumericFeature)
        if name == "x0":
            counts = _counts(feature, SHIFT, ROWS)
        else:
            base = np.asarray(feature.bin_counts, dtype=np.float64)
            counts = [int(v) for v in np.round(base / base.sum() * ROWS)]
        summary.features.append(pb.FeatureCounts(name=name, counts=counts))
    out = arm("champion", version, ROWS)
    out.drift.CopyFrom(summary)
    return out


def test_the_payload_flags_the_features_that_crossed_max_psi(
    tmp_path: Path,
    webhook: str,  # noqa: F811
) -> None:
    cp = start_controlplane(tmp_path, f"sqlite:///{tmp_path / 'cp.db'}")
    try:
        with cp.client() as c:
            model_id, version, profile = _with_baseline(c, tmp_path)
            sha = c.get_version(model_id, version).baseline.sha256
            window = _arm(version, profile, sha)
            x0 = profile.feature("x0")
            assert isinstance(x0, NumericFeature)
            psi = psi_from_counts(x0.bin_counts, [2 * v for v in window.drift.features[0].counts])
            # Past max_psi, below the 0.2 that flags a feature when no max_psi is set.
            assert 0.1 < psi < 0.2
            c.create_deployment(
                "churn",
                model=model_id,
                champion_version=version,
                max_psi=0.1,
                max_drifted_share=0.1,
                min_rows=300,
                webhook_url=webhook,
            )
            start = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
            for i, replica in enumerate(("a", "b")):
                c.report_window(
                    "churn",
                    replica=replica,
                    sequence=1,
                    arms=[window],
                    start_time=start + timedelta(seconds=i),
                    end_time=start + timedelta(seconds=2 + i),
                )
            event = wait_for(lambda: Hook.received and Hook.received[0], "the webhook")
            part = event["arms"][0]
            assert part["rows"] == 2 * ROWS and part["max_psi"] > 0.1
            flagged = [f["name"] for f in part["features"] if f["drifted"]]
            assert flagged == ["x0"]
            assert part["drifted_share"] == 1 / len(FEATURES)
            # max_drifted_share counts the same features: one of eight is past 0.1.
            assert [r.split()[0] for r in part["crossed"]] == ["max_psi", "drifted_share"]
            # The windows judged: from the first replica's start to the last one's end.
            assert datetime.fromisoformat(event["window_start_time"]) == start
            assert datetime.fromisoformat(part["window_start_time"]) == start
            assert datetime.fromisoformat(part["window_end_time"]) == start + timedelta(seconds=3)
            assert datetime.fromisoformat(event["window_end_time"]) == start + timedelta(seconds=3)
    finally:
        cp.handle.stop(0)


def test_the_drifted_share_is_a_check_of_its_own_when_max_psi_is_set_higher() -> None:
    """Features at PSI 0.2 or more count as drifted whatever ``max_psi`` is: with ``max_psi``
    0.5, half the features near PSI 0.3 still cross ``max_drifted_share`` 0.25 on their own."""
    import math

    import numpy as np
    import pyarrow as pa

    from controlplane.domain.deployments import DriftSummary, DriftThresholds, FeatureCounts
    from controlplane.rollouts import drift
    from modelplane.profiles import build_profile

    rng = np.random.default_rng(0)
    names = [f"x{i}" for i in range(8)]
    profile = build_profile(pa.table({n: rng.normal(size=5000) for n in names}), [])

    def counts(name: str, shift: float, rows: int = 2000) -> tuple[int, ...]:
        edges = profile.feature(name).edges  # type: ignore[attr-defined]
        cdf = np.array([0.5 * (1 + math.erf((e - shift) / math.sqrt(2))) for e in edges])
        shares = np.diff(np.concatenate(([0.0], cdf, [1.0])))
        return tuple(int(v) for v in np.round(shares * rows))

    features = tuple(
        FeatureCounts(n, counts(n, 0.55 if i < 4 else 0.0)) for i, n in enumerate(names)
    )
    summary = DriftSummary("sha", 2000, features)
    psi = drift.feature_psi(summary, profile)
    assert all(0.2 < psi[n] < 0.5 for n in names[:4]) and all(psi[n] < 0.1 for n in names[4:])  # type: ignore[operator]
    thresholds = DriftThresholds(max_psi=0.5, max_drifted_share=0.25, min_rows=200)
    scored = drift.score(summary, profile, thresholds)
    assert scored.drifted_share == 0.5
    assert drift.crossed(scored, thresholds) == ["drifted_share 0.5 > 0.25"]
