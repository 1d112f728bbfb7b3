"""Mistakes the SDK meets before it sends anything raise what its ``Client`` docstring says, as
the MLflow client does: :class:`InvalidArgument` for a value the server would refuse (an
update's unknown field, a time no Timestamp holds), Python's own errors for the local machine
(``FileNotFoundError``) and for a value of the wrong type (``TypeError``)."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from modelplane import Client, InvalidArgument, NotFound
from tests.conftest import unique
from tests.controlplane.conftest import TrainedModel


def test_an_unknown_update_field_is_invalid_argument(
    client: Client, trained_model: TrainedModel
) -> None:
    name = unique()
    client.create_model(name, description="kept")
    with pytest.raises(InvalidArgument) as typo:
        client.update_model(name, desciption="x")
    assert typo.value.reason == "INVALID_UPDATE_MASK"
    assert typo.value.metadata == {"field": "update_mask"}
    assert "'desciption'" in typo.value.message
    assert "description, labels, intended_use, limitations" in typo.value.message
    assert client.get_model(name).description == "kept"

    version = client.register_version(name, trained_model.onnx, capture_env=False).version
    with pytest.raises(InvalidArgument) as label_typo:
        client.update_version(name, version, lables={"a": "b"})
    assert label_typo.value.reason == "INVALID_UPDATE_MASK"
    assert "update_version()" in label_typo.value.message and "'lables'" in label_typo.value.message
    # A field the resource has but updates do not set (here one that says what to update).
    with pytest.raises(InvalidArgument) as not_updatable:
        client.update_model(name, name="other")
    assert not_updatable.value.reason == "INVALID_UPDATE_MASK"
    assert "update_model() cannot update a field 'name'" in not_updatable.value.message


def test_a_value_of_the_wrong_type_is_a_type_error(client: Client) -> None:
    name = unique()
    client.create_model(name)
    with pytest.raises(TypeError, match="'description'"):
        client.update_model(name, description=5)
    with pytest.raises(TypeError, match="'labels'"):
        client.update_model(name, labels="team=risk")


def test_a_missing_file_is_file_not_found_before_any_upload(
    client: Client, trained_model: TrainedModel, tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError):
        client.upload_blob(tmp_path / "nope.bin")
    name = unique()
    client.create_model(name)
    with pytest.raises(FileNotFoundError) as missing:
        client.register_version(
            name,
            trained_model.onnx,
            datasets={"train": trained_model.train, "holdout": tmp_path / "nope.csv"},
            capture_env=False,
        )
    assert missing.value.filename == str(tmp_path / "nope.csv")
    for uploaded_first in (trained_model.onnx, trained_model.train):
        with pytest.raises(NotFound):
            client.get_blob(hashlib.sha256(uploaded_first.read_bytes()).hexdigest())


def test_a_time_no_timestamp_holds_is_invalid_argument(client: Client) -> None:
    before_year_1 = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5)))
    with pytest.raises(InvalidArgument) as refused:
        next(client.audit_events(since=before_year_1))
    assert refused.value.reason == "INVALID_TIMESTAMP"
    assert refused.value.metadata == {"field": "since"}


@pytest.mark.parametrize("value", ["2026-01-01T00:00:00Z", 12345])
def test_a_time_that_is_no_datetime_is_a_type_error(client: Client, value: object) -> None:
    """Before, protobuf's own AttributeError ("Fail to convert to Timestamp") came out."""
    name = unique()
    client.create_model(name)
    with pytest.raises(TypeError, match="as_of must be a datetime"):
        client.get_alias(name, "champion", as_of=value)  # type: ignore[arg-type]
