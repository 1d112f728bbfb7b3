"""CSV booleans written as True/False text (as pandas writes them) keep one spelling across the
baseline's paths: the profile the registry builds from a train dataset is byte for byte the one
``--baseline`` builds from the same file (``True``/``False`` categories), and an evaluation
dataset read with that column as booleans is checked against those categories rather than
finding every row unseen."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from controlplane.evaluation._validation import ValidationThresholds, validate
from modelplane import Client
from modelplane.profiles import BaselineProfile, CategoricalFeature, load_baseline, read_table
from modelplane.testing.onnx_models import mlp, save
from tests.conftest import unique

FEATURES = 8


def _csv(rows: int = 300) -> bytes:
    rng = np.random.default_rng(3)
    numbers = rng.normal(size=(rows, FEATURES - 1))
    header = ",".join([*(f"x{j}" for j in range(FEATURES - 1)), "flag", "label"])
    lines = [
        ",".join([*(f"{v:.6f}" for v in numbers[i]), "True" if i % 3 else "False", str(i % 2)])
        for i in range(rows)
    ]
    return ("\n".join([header, *lines]) + "\n").encode()


def test_the_registrys_profile_is_the_baseline_files(client: Client, tmp_path: Path) -> None:
    data = _csv()
    train = tmp_path / "train.csv"
    train.write_bytes(data)
    model = unique()
    client.create_model(model)
    v = client.register_version(
        model,
        save(mlp(FEATURES, (4,), 2), tmp_path / "m.onnx"),
        datasets={"train": train},
        label="label",
        capture_env=False,
    )
    stored = BaselineProfile.from_bytes(
        client.download_blob(v.baseline.sha256, tmp_path / "p.json").read_bytes()
    )
    flag = stored.feature("flag")
    assert isinstance(flag, CategoricalFeature)
    assert flag.categories == {"False": 100, "True": 200}
    assert stored.to_bytes() == load_baseline(train, label="label").to_bytes()
    # The lineage still records the column as the dataset reads by default.
    (ref,) = v.lineage.datasets
    assert {c.name: c.type for c in ref.schema}["flag"] == "bool"


def test_evaluation_data_of_booleans_matches_true_false_categories() -> None:
    data = _csv()
    profile = load_baseline(data, label="label")
    table = read_table(data)
    assert table.schema.field("flag").type == pa.bool_()
    report = validate(
        table,
        profile.feature_names,
        known_columns=["label"],
        baseline=profile,
        thresholds=ValidationThresholds(),
    )
    flag = report.features["flag"]
    assert flag.unseen_categories == [] and flag.unseen_category_share == 0.0
    assert report.passed, report.failures
    # A category the baseline never saw is still found.
    flipped = table.set_column(
        table.schema.get_field_index("flag"), "flag", pa.array(["maybe"] * table.num_rows)
    )
    report = validate(
        flipped,
        profile.feature_names,
        known_columns=["label"],
        baseline=profile,
        thresholds=ValidationThresholds(),
    )
    assert report.features["flag"].unseen_categories == ["maybe"]
    assert not report.passed
