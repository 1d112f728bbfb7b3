"""``register_version`` checks its parameters and metrics before it uploads anything: a metric
that is no finite number (a text that is no number, an int too large for a double, inf, NaN)
and a parameter ``str()`` cannot give are :class:`InvalidArgument` with the reason the server
gives (INVALID_METRIC, INVALID_PARAMETER), naming them; a value of the wrong type is
``TypeError``. Before, ``float()``'s OverflowError or ValueError came out after the model and
datasets were uploaded."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import grpc
import pytest

from modelplane import Client, InvalidArgument, NotFound
from modelplane.errors import error_info
from modelplane.v1 import registry_pb2, registry_pb2_grpc
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, TrainedModel


def _stored(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _refused_before_upload(
    controlplane: RunningControlPlane,
    client: Client,
    trained_model: TrainedModel,
    error: type[Exception],
    **kw: object,
) -> Exception:
    """The ``error`` that registering with ``kw`` raises, checked to leave no blob stored."""
    name = unique()
    client.create_model(name)
    before = _stored(controlplane.artifact_root)
    with pytest.raises(error) as refused:
        client.register_version(
            name,
            trained_model.onnx,
            datasets={"train": trained_model.train},
            label=trained_model.label,
            capture_env=False,
            **kw,  # type: ignore[arg-type]
        )
    assert _stored(controlplane.artifact_root) == before
    for path in (trained_model.onnx, trained_model.train):
        with pytest.raises(NotFound):
            client.get_blob(hashlib.sha256(path.read_bytes()).hexdigest())
    assert list(client.list_versions(name)) == []
    return refused.value


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (10**400, "too large"),
        ("high", "could not convert string to float: 'high'"),
        (math.inf, ""),
        (-math.inf, ""),
        (math.nan, ""),
        ("nan", ""),
    ],
    ids=["huge-int", "text", "inf", "-inf", "nan", "nan-text"],
)
def test_a_metric_that_is_no_finite_number_is_refused_before_any_upload(
    controlplane: RunningControlPlane,
    client: Client,
    trained_model: TrainedModel,
    value: object,
    why: str,
) -> None:
    err = _refused_before_upload(
        controlplane, client, trained_model, InvalidArgument, metrics={"acc": 0.9, "auc": value}
    )
    assert isinstance(err, InvalidArgument)
    assert err.reason == "INVALID_METRIC"
    assert err.metadata == {"field": "metrics"}
    assert err.message.startswith("metric 'auc' is not a finite number")
    assert why in err.message


def test_the_sdk_refuses_a_metric_with_the_servers_reason_and_words(
    controlplane: RunningControlPlane, client: Client, trained_model: TrainedModel
) -> None:
    """The server refuses an infinite metric sent without the SDK alike."""
    name = unique()
    client.create_model(name)
    artifact = client.upload_blob(trained_model.onnx).sha256
    with grpc.insecure_channel(controlplane.address) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raw:
            stub.CreateModelVersion(
                registry_pb2.CreateModelVersionRequest(
                    parent=f"models/{name}", artifact_sha256=artifact, metrics={"auc": math.inf}
                ),
                metadata=[("x-modelplane-principal", "alice")],
                timeout=30,
            )
    info = error_info(raw.value)
    assert info is not None and info.reason == "INVALID_METRIC"
    with pytest.raises(InvalidArgument) as sdk:
        client.register_version(name, trained_model.onnx, metrics={"auc": math.inf})
    assert sdk.value.reason == info.reason
    assert sdk.value.message == raw.value.details()
    # No request id: the SDK refused it before sending (a request sent carries its id).
    assert sdk.value.metadata == dict(info.metadata)


def test_a_metric_of_the_wrong_type_is_a_type_error_before_any_upload(
    controlplane: RunningControlPlane, client: Client, trained_model: TrainedModel
) -> None:
    err = _refused_before_upload(
        controlplane, client, trained_model, TypeError, metrics={"auc": None}
    )
    assert "metric 'auc' must be a number, not NoneType" in str(err)
    err = _refused_before_upload(controlplane, client, trained_model, TypeError, metrics={1: 0.5})
    assert "metric names must be str, not int" in str(err)


def test_a_parameter_str_cannot_give_is_refused_before_any_upload(
    controlplane: RunningControlPlane, client: Client, trained_model: TrainedModel
) -> None:
    err = _refused_before_upload(
        controlplane, client, trained_model, InvalidArgument, params={"seed": 10**5000}
    )
    assert isinstance(err, InvalidArgument)
    assert err.reason == "INVALID_PARAMETER" and err.metadata == {"field": "parameters"}
    assert "the value of parameter 'seed' cannot be sent as text" in err.message
    # A lone surrogate, which protobuf cannot encode, in a value and in a name.
    err = _refused_before_upload(
        controlplane, client, trained_model, InvalidArgument, params={"path": "a\udcffb"}
    )
    assert isinstance(err, InvalidArgument) and err.reason == "INVALID_PARAMETER"
    assert "the value of parameter 'path' is not UTF-8 text" in err.message
    err = _refused_before_upload(
        controlplane, client, trained_model, InvalidArgument, metrics={"a\udcff": 1.0}
    )
    assert isinstance(err, InvalidArgument) and err.reason == "INVALID_METRIC"
    assert err.message.startswith("metric name 'a\\udcff' is not UTF-8 text")
    err = _refused_before_upload(controlplane, client, trained_model, TypeError, params={2: "x"})
    assert "parameter names must be str, not int" in str(err)


@pytest.mark.parametrize(
    "kw",
    [
        {"labels": {"team": 5}},
        {"feature_names": [1, 2]},
        {"description": 3},
    ],
)
def test_another_argument_of_the_wrong_type_fails_before_any_upload(
    controlplane: RunningControlPlane,
    client: Client,
    trained_model: TrainedModel,
    kw: dict[str, object],
) -> None:
    _refused_before_upload(controlplane, client, trained_model, TypeError, **kw)


@pytest.mark.parametrize(
    ("metrics", "params", "expect_metrics", "expect_params"),
    [
        (
            {"auc": "0.93", "n": 10**20, "flag": True},
            {"seed": 7, "lr": 0.1, "big": 10**400},
            {"auc": 0.93, "n": 1e20, "flag": 1.0},
            {"seed": "7", "lr": "0.1", "big": str(10**400)},
        ),
    ],
)
def test_numbers_and_number_texts_are_still_registered(
    client: Client,
    trained_model: TrainedModel,
    metrics: dict[str, object],
    params: dict[str, object],
    expect_metrics: dict[str, float],
    expect_params: dict[str, str],
) -> None:
    name = unique()
    client.create_model(name)
    version = client.register_version(
        name,
        trained_model.onnx,
        datasets={"train": trained_model.train},
        label=trained_model.label,
        metrics=metrics,  # type: ignore[arg-type]
        params=params,  # type: ignore[arg-type]
        capture_env=False,
    )
    assert dict(version.lineage.metrics) == expect_metrics
    assert dict(version.lineage.parameters) == expect_params
    assert [d.role for d in version.lineage.datasets] == ["train"]
    assert (
        version.lineage.datasets[0].sha256
        == hashlib.sha256(trained_model.train.read_bytes()).hexdigest()
    )
    assert version.lineage.datasets[0].source == str(trained_model.train)
