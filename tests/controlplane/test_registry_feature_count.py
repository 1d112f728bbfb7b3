"""A registration whose feature names do not match the width of the model's input
(FEATURE_COUNT_MISMATCH) says where the names came from: given, or taken from the train
dataset's columns; and when the one column too many may be the label that --label would have
named, it says so."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modelplane import Client, InvalidArgument
from modelplane.cli import main
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, TrainedModel


def _refusal(
    client: Client, model: TrainedModel, train: Path | None, **kw: object
) -> InvalidArgument:
    name = unique()
    client.create_model(name)
    datasets = {"train": train} if train else {}
    with pytest.raises(InvalidArgument) as refused:
        client.register_version(name, model.onnx, datasets=datasets, capture_env=False, **kw)
    assert refused.value.reason == "FEATURE_COUNT_MISMATCH"
    assert client.get_model(name).latest_version == 0
    return refused.value


def _with_id_column(model: TrainedModel, tmp_path: Path) -> Path:
    table = pq.read_table(model.train)
    out = tmp_path / "train_with_id.parquet"
    pq.write_table(table.append_column("id", pa.array(range(table.num_rows))), out)
    return out


def test_a_label_column_left_unnamed_is_suggested(
    client: Client, trained_model: TrainedModel
) -> None:
    error = _refusal(client, trained_model, trained_model.train)
    width = len(trained_model.feature_names)
    assert f"takes {width} features but the train dataset has {width + 1} columns" in error.message
    assert "may be the label (the last column is 'target')" in error.message
    assert "--label" in error.message and "--feature-names" in error.message


def test_more_than_one_column_too_many(
    client: Client, trained_model: TrainedModel, tmp_path: Path
) -> None:
    train = _with_id_column(trained_model, tmp_path)
    width = len(trained_model.feature_names)
    error = _refusal(client, trained_model, train)
    assert f"the train dataset has {width + 2} columns" in error.message
    assert "may be the label" not in error.message and "--label" in error.message
    named = _refusal(client, trained_model, train, label="target")
    assert f"has {width + 1} columns besides its label column 'target'" in named.message
    assert "--feature-names" in named.message and "may be the label" not in named.message


def test_names_given_are_said_to_be_given(client: Client, trained_model: TrainedModel) -> None:
    error = _refusal(client, trained_model, None, feature_names=["a", "b"])
    assert error.message.endswith("but 2 feature names were given")


def test_the_cli_names_the_option(
    controlplane: RunningControlPlane,
    trained_model: TrainedModel,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = unique()
    with controlplane.client() as c:
        c.create_model(name)
    argv = ["--server", controlplane.address, "versions", "register", name]
    argv += ["--onnx", str(trained_model.onnx), "--dataset", f"train={trained_model.train}"]
    code = main([*argv, "--no-environment", "--code-commit", "", "--code-repo", ""])
    err = capsys.readouterr().err
    assert code == 3 and "INVALID_ARGUMENT (FEATURE_COUNT_MISMATCH)" in err
    assert "name it with label_column (--label COLUMN)" in err
