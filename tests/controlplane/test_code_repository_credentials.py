"""Credentials in a version's code repository URL, however the URL is dressed (whitespace around
it, a character that does not print inside its scheme, no or three slashes after the scheme):
the control plane refuses to record them (lineage cannot be edited later, and every reader of
the version sees it), and the SDK takes them out before sending; so with a query string or
fragment (``?access_token=...``), which git remotes do not have. Logins that are no secret
(``git@host:org/repo``, ``ssh://git@host/...``) and local paths are recorded as given."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from modelplane import Client
from modelplane._code import without_credentials
from modelplane.errors import error_info
from modelplane.testing import onnx_models
from modelplane.v1 import registry_pb2
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane

#: URLs the control plane refuses, each with its reason and what the SDK records instead.
REFUSED: list[tuple[str, str, str]] = [
    ("https://user:SECRET@h/x.git", "CREDENTIALS_IN_URL", "https://h/x.git"),
    (" https://user:SECRET@h/x.git", "CREDENTIALS_IN_URL", "https://h/x.git"),
    ("https://user:SECRET@h/x.git  ", "CREDENTIALS_IN_URL", "https://h/x.git"),
    ("https:///user:SECRET@h/x", "CREDENTIALS_IN_URL", "https:///h/x"),
    ("https:user:SECRET@h/x", "CREDENTIALS_IN_URL", "https:h/x"),
    ("https:\\\\user:SECRET@h/x", "CREDENTIALS_IN_URL", "https:\\\\h/x"),
    ("https\u200b://user:SECRET@h/x", "CREDENTIALS_IN_URL", "https://h/x"),
    ("https\u3164://user:SECRET@h/x", "CREDENTIALS_IN_URL", "https\u3164://h/x"),
    ("https\u200b://SECRET@h/x", "INVALID_ARGUMENT", "https://h/x"),
    ("\u200bhttps://SECRET@h/x", "CREDENTIALS_IN_URL", "https://h/x"),
    ("HTTPS://SECRET@h/x", "CREDENTIALS_IN_URL", "HTTPS://h/x"),
    ("git+https://SECRET@h/x", "CREDENTIALS_IN_URL", "git+https://h/x"),
    ("https://u:SECRET@h:443/x", "CREDENTIALS_IN_URL", "https://h:443/x"),
    ("https://a:SECRET@b@host/x?y=1", "CREDENTIALS_IN_URL", "https://host/x"),
    ("ssh://git:SECRET@h/x", "CREDENTIALS_IN_URL", "ssh://git@h/x"),
    ("git+ssh://user:SECRET@h/x", "CREDENTIALS_IN_URL", "git+ssh://user@h/x"),
    ("mirror https://u:SECRET@h/x", "CREDENTIALS_IN_URL", "mirror https://h/x"),
    # A token in a query string or fragment: git remotes carry neither.
    ("https://h/org/x.git?access_token=SECRET", "CREDENTIALS_IN_URL", "https://h/org/x.git"),
    ("https://h/org/x.git#SECRET", "CREDENTIALS_IN_URL", "https://h/org/x.git"),
    ("git+https://h/x?private_token=SECRET&a=1", "CREDENTIALS_IN_URL", "git+https://h/x"),
    ("https:h/x?token=SECRET", "CREDENTIALS_IN_URL", "https:h/x"),
    ("ssh://git@h/x?SECRET", "CREDENTIALS_IN_URL", "ssh://git@h/x"),
    ("git@h:org/x.git?token=SECRET", "CREDENTIALS_IN_URL", "git@h:org/x.git"),
    ("mirror https://h/x?token=SECRET", "CREDENTIALS_IN_URL", "mirror https://h/x"),
    ("https://h/x #SECRET", "CREDENTIALS_IN_URL", "https://h/x"),
    ("https://h/x?", "CREDENTIALS_IN_URL", "https://h/x"),
    (" https://github.com/org/repo.git", "INVALID_ARGUMENT", "https://github.com/org/repo.git"),
    (
        "https://github.com/org/repo.git\u200b",
        "INVALID_ARGUMENT",
        "https://github.com/org/repo.git",
    ),
    ("https://github\u202e.com/org/repo", "INVALID_ARGUMENT", "https://github.com/org/repo"),
    ("https://github.com/org/repo\u00a0", "INVALID_ARGUMENT", "https://github.com/org/repo"),
]

#: URLs recorded exactly as given, by the control plane and the SDK alike.
ACCEPTED = [
    "git@github.com:org/repo.git",
    "ssh://git@host/org/repo",
    "ssh://git@host:22/org/repo",
    "git@host:repo@v1",
    "host:repo@v1",
    "https://github.com/org/repo.git",
    "https://host/path/x@y",
    "https://[::1]:8080/org/repo",
    "file:///srv/git/repo",
    "/srv/git/my repo",
    "C:\\Users\\me@corp\\repo",
    "C:\\src\\C#\\repo",
    "C:/src/C#/repo",
    "/srv/git/C#/repo?",
    "",
]


def _create(c: Client, parent: str, artifact: str, url: str) -> registry_pb2.ModelVersion:
    """CreateModelVersion with ``url`` as sent, as clients in other languages send it."""
    request = registry_pb2.CreateModelVersionRequest(
        parent=parent,
        artifact_sha256=artifact,
        code=registry_pb2.CodeRef(repository=url),
        request_id=str(uuid.uuid4()),
    )
    result: registry_pb2.ModelVersion = c.registry.CreateModelVersion(
        request, metadata=c._metadata, timeout=10
    )
    return result


@pytest.mark.parametrize(("url", "_reason", "recorded"), REFUSED)
def test_the_sdk_takes_credentials_out(url: str, _reason: str, recorded: str) -> None:
    assert without_credentials(url) == recorded


@pytest.mark.parametrize("url", ACCEPTED)
def test_the_sdk_keeps_a_url_without_credentials(url: str) -> None:
    assert without_credentials(url) == url


@pytest.fixture
def model(
    controlplane_any: RunningControlPlane, tmp_path: Path
) -> Iterator[tuple[Client, str, Path]]:
    """A client of a control plane on each backend, a new model and an ONNX file."""
    onnx = onnx_models.save(onnx_models.mlp(4, (4,)), tmp_path / "m.onnx")
    with controlplane_any.client() as c:
        model_id = unique()
        c.create_model(model_id)
        yield c, model_id, onnx


def test_the_control_plane_refuses_credentials_however_the_url_is_dressed(
    model: tuple[Client, str, Path],
) -> None:
    c, model_id, onnx = model
    artifact = c.upload_blob(onnx).sha256
    stored = []
    for url, reason, _ in REFUSED:
        try:
            made = _create(c, f"models/{model_id}", artifact, url)
        except grpc.RpcError as err:
            info = error_info(err)
            what = f"{url!r}: {err.details()}"
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, what
            assert info is not None and info.reason == reason, what
            assert info.metadata["field"] == "code.repository", what
            assert "SECRET" not in (err.details() or ""), what
        else:
            stored.append(made.lineage.code.repository)
    assert stored == []
    assert list(c.list_versions(model_id)) == []

    for url in ACCEPTED:
        made = _create(c, f"models/{model_id}", artifact, url)
        assert made.lineage.code.repository == url


def test_the_sdk_registers_every_url_without_its_credentials(
    model: tuple[Client, str, Path],
) -> None:
    c, model_id, onnx = model
    for url, _, recorded in REFUSED:
        made = c.register_version(model_id, onnx, code_repo=url, capture_env=False)
        assert made.lineage.code.repository == recorded, repr(url)
    for url in ACCEPTED:
        made = c.register_version(model_id, onnx, code_repo=url, capture_env=False)
        assert made.lineage.code.repository == url
    assert not any("SECRET" in v.lineage.code.repository for v in c.list_versions(model_id))
