"""A request retried under its request id (AIP-155) after what it wrote was deleted, and
another resource created under the same name, answers NOT_FOUND: never that other resource,
and it changes nothing."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from modelplane import Client
from modelplane.errors import NotFound
from modelplane.testing import onnx_models
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane


def onnx(tmp: Path, features: int) -> Path:
    return onnx_models.save(onnx_models.mlp(features), tmp / f"m{features}.onnx")


def rid() -> str:
    return str(uuid.uuid4())


def recreate(c: Client, model_id: str) -> None:
    c.delete_model(model_id, force=True)
    c.create_model(model_id)


def gone(err: pytest.ExceptionInfo[NotFound], reason: str, request_id: str) -> None:
    assert err.value.reason == reason
    assert "no longer exists" in err.value.message and request_id in err.value.message


def test_a_retried_registration_never_answers_the_new_models_version(
    controlplane_any: RunningControlPlane, tmp_path: Path
) -> None:
    with controlplane_any.client() as c:
        model_id = unique()
        c.create_model(model_id)
        request_id = rid()
        first = c.register_version(model_id, onnx(tmp_path, 4), request_id=request_id)
        recreate(c, model_id)
        other = c.register_version(model_id, onnx(tmp_path, 8), capture_env=False)
        assert other.name == first.name  # versions/1 again, of another artifact

        with pytest.raises(NotFound) as err:
            c.register_version(model_id, onnx(tmp_path, 4), request_id=request_id)
        gone(err, "VERSION_NOT_FOUND", request_id)
        assert [v.artifact.sha256 for v in c.list_versions(model_id)] == [other.artifact.sha256]


def test_retried_model_mutations_never_answer_the_model_created_again(
    controlplane_any: RunningControlPlane,
) -> None:
    with controlplane_any.client() as c:
        model_id = unique()
        create_id, update_id = rid(), rid()
        c.create_model(model_id, description="first", request_id=create_id)
        c.update_model(model_id, description="changed", request_id=update_id)
        recreate(c, model_id)
        now = c.get_model(model_id)

        with pytest.raises(NotFound) as err:
            c.create_model(model_id, description="first", request_id=create_id)
        gone(err, "MODEL_NOT_FOUND", create_id)
        with pytest.raises(NotFound) as err:
            c.update_model(model_id, description="changed", request_id=update_id)
        gone(err, "MODEL_NOT_FOUND", update_id)
        assert c.get_model(model_id) == now


def test_retried_version_mutations_never_answer_the_new_models_version(
    controlplane_any: RunningControlPlane, tmp_path: Path
) -> None:
    with controlplane_any.client() as c:
        model_id = unique()
        c.create_model(model_id)
        c.register_version(model_id, onnx(tmp_path, 4), capture_env=False)
        update_id, archive_id = rid(), rid()
        c.update_version(model_id, 1, description="old", request_id=update_id)
        c.archive_version(model_id, 1, request_id=archive_id)
        recreate(c, model_id)
        c.register_version(model_id, onnx(tmp_path, 8), capture_env=False)
        now = c.get_version(model_id, 1)

        with pytest.raises(NotFound) as err:
            c.update_version(model_id, 1, description="old", request_id=update_id)
        gone(err, "VERSION_NOT_FOUND", update_id)
        with pytest.raises(NotFound) as err:
            c.archive_version(model_id, 1, request_id=archive_id)
        gone(err, "VERSION_NOT_FOUND", archive_id)
        assert c.get_version(model_id, 1) == now  # neither described nor archived


def test_a_retried_deployment_creation_never_answers_the_deployment_created_again(
    controlplane_any: RunningControlPlane, tmp_path: Path
) -> None:
    with controlplane_any.client() as c:
        model_id, deployment_id = unique(), unique("d")
        c.create_model(model_id)
        c.register_version(model_id, onnx(tmp_path, 4), capture_env=False)
        request_id = rid()
        c.create_deployment(
            deployment_id, model=model_id, champion_version=1, request_id=request_id
        )
        c.delete_deployment(deployment_id)
        c.create_deployment(deployment_id, model=model_id, champion_version=1, description="2")

        with pytest.raises(NotFound) as err:
            c.create_deployment(
                deployment_id, model=model_id, champion_version=1, request_id=request_id
            )
        gone(err, "DEPLOYMENT_NOT_FOUND", request_id)


def test_a_retried_delete_still_answers_ok_and_deletes_nothing_more(
    controlplane_any: RunningControlPlane,
) -> None:
    with controlplane_any.client() as c:
        model_id = unique()
        c.create_model(model_id)
        request_id = rid()
        c.delete_model(model_id, request_id=request_id)
        c.create_model(model_id, description="again")

        c.delete_model(model_id, request_id=request_id)  # what the first did; no new delete
        assert c.get_model(model_id).description == "again"


def test_a_retry_before_anything_was_deleted_still_replays(
    controlplane_any: RunningControlPlane, tmp_path: Path
) -> None:
    with controlplane_any.client() as c:
        model_id = unique()
        create_id, register_id = rid(), rid()
        model = c.create_model(model_id, request_id=create_id)
        version = c.register_version(
            model_id, onnx(tmp_path, 4), capture_env=False, request_id=register_id
        )
        again = c.create_model(model_id, request_id=create_id)  # as it stands now
        assert (again.name, again.create_time) == (model.name, model.create_time)
        replayed = c.register_version(
            model_id, onnx(tmp_path, 4), capture_env=False, request_id=register_id
        )
        assert replayed == version
