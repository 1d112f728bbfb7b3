"""An empty text in a categorical feature is a missing value, in the baseline (whatever the
file's format: a CSV cannot tell an empty text from none) and in served BYTES inputs alike, so
that served rows like the training rows read as unchanged."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from modelplane.profiles import CategoricalFeature, load_baseline
from sidecar.drift import DriftMonitor


def _baselines(frame: pd.DataFrame) -> list[bytes]:
    csv = frame.to_csv(index=False).encode()
    parquet = io.BytesIO()
    frame.to_parquet(parquet, index=False)
    return [csv, parquet.getvalue()]


def test_a_served_empty_text_is_missing_as_in_the_baseline() -> None:
    cities = ["Paris", "", "Oslo", None, "Paris", "Oslo"] * 50
    frame = pd.DataFrame({"city": cities, "x": np.arange(len(cities), dtype=np.float64)})
    profiles = [load_baseline(data) for data in _baselines(frame)]
    assert profiles[0].to_bytes() == profiles[1].to_bytes()
    city = profiles[0].feature("city")
    assert isinstance(city, CategoricalFeature)
    assert city.categories == {"Oslo": 100, "Paris": 100} and city.missing == 100

    # The training rows, served as a BYTES input (no None there: an empty text instead).
    served = np.array([(c or "").encode() for c in cities], dtype=object)
    monitor = DriftMonitor(profiles[0])
    monitor.update({"city": served, "x": frame["x"].to_numpy()})
    window = monitor.flush()
    assert int(window.categorical_missing[0]) == 100
    assert window.unseen[0] == {}
    report = monitor.score(window).features
    got = next(f for f in report if f.name == "city")
    assert got.missing_share == city.missing / (city.count + city.missing)
    assert got.unseen_share == 0.0 and not got.drifted
