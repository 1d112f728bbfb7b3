"""``rotate_size`` is a soft limit: a write round goes whole into one file, which may pass it,
and the file closes after that round."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sidecar.predlog import (
    PredictionBatch,
    PredictionLogSettings,
    list_log_files,
    open_prediction_log,
    read_file_batches,
)


def test_a_round_larger_than_rotate_size_stays_whole_and_the_file_then_closes(
    tmp_path: Path,
) -> None:
    settings = PredictionLogSettings(dir=tmp_path, durability="sync", rotate_size="4KiB")
    x = np.zeros((1_000, 4), np.float64)  # 32 KB of features in one round
    with open_prediction_log(settings) as writer:
        writer.append(PredictionBatch("m", "1", ["big"], [1_000], {"x": x})).result(10)
        writer.append(PredictionBatch("m", "1", ["next"], [1], {"x": x[:1]})).result(10)
    first, second = list_log_files(tmp_path)
    assert first.stat().st_size > 8 * settings.rotate_size
    assert [b.num_rows for b in read_file_batches(first)] == [1_000]
    assert [b.num_rows for b in read_file_batches(second)] == [1]


def test_the_setting_says_it_is_a_soft_limit() -> None:
    description = PredictionLogSettings.model_fields["rotate_size"].description or ""
    assert "soft limit" in description and "queue_rows" in description
