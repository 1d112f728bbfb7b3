"""Blob scope is a credential's, not a principal's: one principal may hold credentials scoped to
different models (two tokens-file entries, or JWTs with one ``sub`` and different models
claims), and what one of them gave a model is not the other's to read. Sending the bytes proves
holding them only until another model comes to use them. An upload of bytes stored before tells
a caller who may not read them neither that, nor by whom, nor when they were stored.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from modelplane import Client
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, TrainedModel, start_controlplane
from tests.controlplane.test_auth_identity import SECRET, _hs, _jwt_server
from tests.controlplane.test_blob_scope import _create, _other_onnx, blob_refused

#: Who calls: principal, roles, and the models those roles are limited to (none: all).
PEOPLE: dict[str, tuple[str, list[str], str]] = {
    "ada": ("ada", ["admin"], ""),
    "bob": ("bob", ["developer"], ""),
    "dana": ("dana", ["developer"], "a"),
    "bot-a": ("ci-bot", ["developer"], "a"),
    "bot-b": ("ci-bot", ["developer"], "b"),
}


@dataclass
class Servers:
    cp: RunningControlPlane
    client: Callable[[str], Client]
    a: str
    b: str


@pytest.fixture(scope="module", params=["tokens", "jwt"])
def servers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Servers]:
    """Models a and b on a control plane with a tokens file or with JWTs."""
    a, b = unique("a"), unique("b")
    models = {"a": [a], "b": [b], "": []}
    tmp = tmp_path_factory.mktemp(f"blob-credentials-{request.param}")
    tokens: dict[str, str] = {}
    if request.param == "tokens":
        entries = []
        for who, (principal, roles, scope) in PEOPLE.items():
            tokens[who] = f"mp-{who}-{secrets.token_urlsafe(24)}"
            entry = {"token": tokens[who], "principal": principal, "roles": roles}
            if scope:
                entry["models"] = models[scope]
            entries.append(entry)
        (tmp / "tokens.yaml").write_text(yaml.safe_dump({"tokens": entries}))
        cp = start_controlplane(
            tmp, f"sqlite:///{tmp / 'cp.db'}", auth=f"tokens:{tmp / 'tokens.yaml'}"
        )
    else:
        (tmp / "secret").write_bytes(SECRET)
        cp = _jwt_server(tmp, tmp / "secret")
        for who, (principal, roles, scope) in PEOPLE.items():
            claims = {"models": models[scope]} if scope else {}
            tokens[who] = _hs(sub=principal, roles=roles, **claims)

    def client(who: str) -> Client:
        return Client(cp.address, token=tokens[who], timeout=30)

    with client("ada") as ada:
        ada.create_model(a)
        ada.create_model(b)
    yield Servers(cp, client, a, b)
    cp.handle.stop(0)


def _secret(tmp_path: Path, name: str = "secret.csv") -> tuple[Path, str]:
    path = tmp_path / name
    path.write_text(f"ssn,salary\n{uuid.uuid4()},1000000\n")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_credential_reads_nothing_another_credential_of_its_principal_gave_a_model(
    servers: Servers, trained_model: TrainedModel, tmp_path: Path
) -> None:
    secret, secret_sha = _secret(tmp_path)
    artifact = _other_onnx(trained_model, tmp_path)
    with servers.client("bot-b") as bot_b:
        v = bot_b.register_version(
            servers.b,
            artifact,
            datasets={"train": trained_model.train, "secret": secret},
            label="target",
            capture_env=False,
        )
    digests = [v.artifact.sha256, v.baseline.sha256, *(d.sha256 for d in v.lineage.datasets)]
    assert secret_sha in digests and v.baseline.sha256
    with servers.client("bot-a") as bot_a:
        for digest in digests:
            blob_refused(lambda d=digest: bot_a.get_blob(d))
            blob_refused(lambda d=digest: bot_a.download_blob(d, tmp_path / "stolen"))
        blob_refused(lambda: _create(bot_a, servers.a, v.artifact.sha256, holdout=secret_sha))
        assert not (tmp_path / "stolen").exists()
    with servers.client("bot-b") as bot_b:
        assert bot_b.get_blob(secret_sha).created_by == "ci-bot"


def test_sending_the_bytes_opens_them_until_another_model_uses_them(
    servers: Servers, trained_model: TrainedModel, tmp_path: Path
) -> None:
    secret, sha = _secret(tmp_path)
    with servers.client("bot-b") as bot_b, servers.client("bot-a") as bot_a:
        bot_b.upload_blob(secret)
        # Between an upload and the registration that names it, the uploader's name is all
        # there is to go by.
        assert bot_a.get_blob(sha).sha256 == sha
        bot_b.register_version(
            servers.b, trained_model.onnx, datasets={"secret": secret}, capture_env=False
        )
        blob_refused(lambda: bot_a.get_blob(sha))
        # Sending the bytes again proves holding them: readable, and a registration may name
        # them, although another model uses them.
        bot_a.upload_blob(secret)
        assert bot_a.get_blob(sha).sha256 == sha
        v = bot_a.register_version(
            servers.a, trained_model.onnx, datasets={"secret": secret}, capture_env=False
        )
        assert v.lineage.datasets[0].sha256 == sha
        got = bot_a.download_blob(sha, tmp_path / "mine.csv").read_bytes()
        assert got == secret.read_bytes()


def test_an_upload_of_bytes_stored_before_tells_a_scoped_caller_nothing(
    servers: Servers, trained_model: TrainedModel, tmp_path: Path
) -> None:
    stored, sha = _secret(tmp_path, "stored.csv")
    used, used_sha = _secret(tmp_path, "used.csv")
    with servers.client("ada") as ada:
        first = ada.upload_blob(stored)
        ada.register_version(
            servers.b, trained_model.onnx, datasets={"used": used}, capture_env=False
        )
        used_first = ada.get_blob(used_sha)
    time.sleep(0.05)
    with servers.client("dana") as dana:
        fresh = dana.upload_blob(_secret(tmp_path, "fresh.csv")[0])
        for path, digest, record in ((stored, sha, first), (used, used_sha, used_first)):
            blob_refused(lambda d=digest: dana.get_blob(d))
            before = time.time()
            got = dana.upload_blob(path)
            # As a first upload of its own answers: its name, the time now.
            assert (got.created_by, got.media_type) == (fresh.created_by, fresh.media_type)
            assert got.create_time.ToDatetime().timestamp() >= before - 1
            assert got.create_time != record.create_time
            # GetBlob and another upload show it the same, not the stored record.
            assert dana.get_blob(digest) == got
            assert dana.upload_blob(path) == got
        # ... and its registration may name what it sent.
        v = dana.register_version(
            servers.a, trained_model.onnx, datasets={"used": used}, capture_env=False
        )
        assert v.lineage.datasets[0].sha256 == used_sha
    with servers.client("ada") as ada, servers.client("bob") as bob:
        # The stored record is left as it is; a caller who may read it gets it.
        assert ada.get_blob(sha) == first
        assert bob.upload_blob(stored) == first
        assert bob.get_blob(sha) == first
