"""Registry input at its edges, through a real control plane: long text echoed in errors,
quoted filter values, label values, and feature names taken from a dataset's columns."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modelplane.errors import InvalidArgument, error_info
from modelplane.testing import onnx_models
from modelplane.v1 import registry_pb2, registry_pb2_grpc
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane


def _onnx(folder: Path, features: int = 4, seed: int = 0) -> Path:
    path = folder / f"m{features}-{seed}.onnx"
    return onnx_models.save(onnx_models.mlp(features, (8,), 2, seed=seed), path)


def _rpc_error(call: object, request: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=30)  # type: ignore[operator]
    return err.value


# Long text echoed in error messages -----------------------------------------------------------


def test_long_order_by_and_mask_paths_are_refused_with_a_short_message(
    controlplane: RunningControlPlane,
) -> None:
    """An error message quotes what was sent only in part: a status whose metadata outgrows
    gRPC's limit reaches the caller as RESOURCE_EXHAUSTED without its reason."""
    model_id = unique()
    with controlplane.client() as c:
        c.create_model(model_id)
    channel = grpc.insecure_channel(controlplane.address)
    registry = registry_pb2_grpc.RegistryServiceStub(channel)
    long = "x" * 9000
    cases = [
        (registry.ListModels, registry_pb2.ListModelsRequest(order_by=long), "INVALID_ORDER_BY"),
        (
            registry.ListModels,
            registry_pb2.ListModelsRequest(order_by="name " + long),
            "INVALID_ORDER_BY",
        ),
        (
            registry.ListModelVersions,
            registry_pb2.ListModelVersionsRequest(parent=f"models/{model_id}", order_by=long),
            "INVALID_ORDER_BY",
        ),
        (
            registry.UpdateModel,
            registry_pb2.UpdateModelRequest(
                model=registry_pb2.Model(name=f"models/{model_id}", description="d"),
                update_mask={"paths": [long]},
            ),
            "INVALID_UPDATE_MASK",
        ),
        (
            registry.ListModels,
            registry_pb2.ListModelsRequest(filter="labels.a=" + long),
            "INVALID_FILTER",
        ),
    ]
    for call, request, reason in cases:
        err = _rpc_error(call, request)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        assert len(err.details()) < 1000
        info = error_info(err)
        assert info is not None and info.reason == reason
    channel.close()
    with controlplane.client() as c, pytest.raises(InvalidArgument) as sdk:
        list(c.list_models(order_by=long))
    assert sdk.value.reason == "INVALID_ORDER_BY"


# Filters --------------------------------------------------------------------------------------


def test_filter_values_may_be_double_quoted_and_impossible_ones_are_refused(
    controlplane_any: RunningControlPlane, tmp_path: Path
) -> None:
    team = unique("t")
    with controlplane_any.client() as c:
        model_id = unique()
        c.create_model(model_id, labels={"team": team, "flag": ""})
        c.register_version(model_id, _onnx(tmp_path), capture_env=False, labels={"stage": "beta"})
        c.register_version(model_id, _onnx(tmp_path, seed=1), capture_env=False)
        c.archive_version(model_id, 1)

        def models(text: str) -> list[str]:
            return [m.name for m in c.list_models(filter=text)]

        def versions(text: str) -> list[int]:
            return [int(v.version) for v in c.list_versions(model_id, filter=text)]

        assert models(f"labels.team={team}") == [f"models/{model_id}"]
        assert models(f'labels.team="{team}"') == [f"models/{model_id}"]
        assert models(f'labels.team="{team}" labels.flag=""') == [f"models/{model_id}"]
        assert versions('labels.stage="beta"') == [1]
        assert versions('state="ARCHIVED"') == [1]
        assert versions("state=archived") == [1]
        assert versions('state="registered"') == [2]
        for bad in (
            f"labels.team='{team}'",
            f'labels.team="{team}',
            f'labels.team={team}"',
            'labels.team="a"b"',
            'labels.team="a\\"b"',
            "labels.team=a\\b",
            '"labels.team=x"',
            "labels.team=ri%",
            "labels.team=" + "x" * 64,
            "labels.t%=x",
            "labels.Team=x",
        ):
            with pytest.raises(InvalidArgument) as err:
                c.list_models_page(filter=bad)
            assert err.value.reason == "INVALID_FILTER", bad
            with pytest.raises(InvalidArgument) as err:
                c.list_versions_page(model_id, filter=bad)
            assert err.value.reason == "INVALID_FILTER", bad
        # Only ASCII letters fold (a dotless i is no i), and a quoted state is not empty.
        for bad_state in ("arch\u0131ved", "ARCH\u0130VED", "regi\u017ftered", '""', '"'):
            with pytest.raises(InvalidArgument) as err:
                c.list_versions_page(model_id, filter=f"state={bad_state}")
            assert err.value.reason == "INVALID_FILTER", bad_state


# Labels ---------------------------------------------------------------------------------------


def test_label_values_are_short_words_of_letters_digits_and_punctuation(
    controlplane: RunningControlPlane,
) -> None:
    with controlplane.client() as c:
        # Values Kubernetes would refuse ("-", "_x_") were always allowed here, and may be stored.
        good = {"a": "", "b": "x", "c": "A.b_c-9", "d": "-", "e": "_x_", "f": "z" * 63}
        model_id = unique()
        assert dict(c.create_model(model_id, labels=good).labels) == good
        assert [m.name for m in c.list_models(filter="labels.e=_x_ labels.d=-")] == [
            f"models/{model_id}"
        ]
        for value in ("a b", "a/b", "é", "a=b", "z" * 64):
            with pytest.raises(InvalidArgument) as err:
                c.create_model(unique(), labels={"k": value})
            assert err.value.reason == "INVALID_LABELS", value
            with pytest.raises(InvalidArgument) as err:
                c.update_model(model_id, labels={"k": value})
            assert err.value.reason == "INVALID_LABELS", value


# Feature names taken from the train dataset ---------------------------------------------------


@pytest.mark.parametrize("column", ["a\x00b", "x\ny", "tab\there", "d\x7f", "c" * 257], ids=repr)
def test_feature_names_from_dataset_columns_are_checked_like_given_ones(
    controlplane_any: RunningControlPlane, tmp_path: Path, column: str
) -> None:
    names = ["f1", column, "f3", "f4"]
    table = pa.table({n: np.arange(10, dtype=np.float64) for n in names} | {"y": np.arange(10) % 2})
    train = tmp_path / "train.parquet"
    pq.write_table(table, train)
    with controlplane_any.client() as c:
        model_id = unique()
        c.create_model(model_id)
        with pytest.raises(InvalidArgument) as err:
            c.register_version(
                model_id, _onnx(tmp_path), capture_env=False, datasets={"train": train}, label="y"
            )
        assert err.value.reason == "DATASET_COLUMNS_INVALID"
        assert "feature_names" in err.value.message
        with pytest.raises(InvalidArgument) as given:
            c.register_version(model_id, _onnx(tmp_path), capture_env=False, feature_names=names)
        assert given.value.reason in ("INVALID_ARGUMENT", "INVALID_FEATURE_NAMES")
        # Naming the usable columns registers the version.
        v = c.register_version(
            model_id,
            _onnx(tmp_path, features=3),
            capture_env=False,
            datasets={"train": train},
            label="y",
            feature_names=["f1", "f3", "f4"],
        )
        assert list(v.feature_names) == ["f1", "f3", "f4"]
        assert c.get_model(model_id).latest_version == 1


def test_lineage_parameter_and_metric_names_must_not_be_empty(
    controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    with controlplane.client() as c:
        model_id = unique()
        c.create_model(model_id)
        onnx = _onnx(tmp_path)
        for kwargs in ({"params": {"": "1"}}, {"metrics": {"": 0.5}}):
            with pytest.raises(InvalidArgument) as err:
                c.register_version(model_id, onnx, capture_env=False, **kwargs)  # type: ignore[arg-type]
            assert "name must not be empty" in err.value.message
        v = c.register_version(
            model_id, onnx, capture_env=False, params={"c": ""}, metrics={"auc": 0.5}
        )
        assert v.name == f"models/{model_id}/versions/1"  # nothing half-registered before
