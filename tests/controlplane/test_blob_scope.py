"""Which blobs a caller whose roles hold only on some models may read: those it uploaded, and
those the digest fields of its models' versions and evaluations name. A digest written into
free text opens nothing, a registration may name only blobs the caller may read, and a missing
digest is answered like an unreadable one.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest

from modelplane import Client
from modelplane.errors import NotFound, PermissionDenied
from modelplane.v1 import evaluation_pb2, registry_pb2
from tests.conftest import unique
from tests.controlplane.conftest import TrainedModel, refused, start_controlplane
from tests.controlplane.test_auth_permissions import (
    TokenServer,
    start_token_server,
    write_tokens,
)


def blob_refused(call: Callable[[], object]) -> PermissionDenied:
    return refused(call, "BLOB_NOT_IN_SCOPE")


@dataclass
class Models:
    server: TokenServer
    a: str
    b: str


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def models(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Models]:
    """Models a and b on a token server over each backend (the scope is decided in SQL)."""
    a, b = unique("a"), unique("b")
    people = {
        "ada": (["admin"], []),
        "dana": (["developer"], [a]),
        "sam": (["viewer"], [a]),
    }
    tmp = tmp_path_factory.mktemp("blob-scope")
    if request.param == "sqlite":
        server = start_token_server(tmp, people)
    else:
        tokens = write_tokens(tmp / "tokens.yaml", people)
        cp = start_controlplane(
            tmp, request.getfixturevalue("pg_url"), auth=f"tokens:{tmp / 'tokens.yaml'}"
        )
        server = TokenServer(cp, tokens)
    with server.client("ada") as ada:
        ada.create_model(a)
        ada.create_model(b)
    yield Models(server, a, b)
    server.cp.handle.stop(0)


def _secret(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "secret.csv"
    path.write_text(f"ssn,salary\n{uuid.uuid4()},1000000\n")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def _other_onnx(trained: TrainedModel, tmp_path: Path) -> Path:
    """The trained model with a doc string of its own: an artifact no other test uploads."""
    model = onnx.load(str(trained.onnx))
    model.doc_string = str(uuid.uuid4())
    path = tmp_path / "other.onnx"
    onnx.save(model, str(path))
    return path


def _create(c: Client, model: str, artifact: str, **datasets: str) -> registry_pb2.ModelVersion:
    """CreateModelVersion naming digests directly, as a client that uploaded nothing would."""
    request = registry_pb2.CreateModelVersionRequest(
        parent=f"models/{model}",
        artifact_sha256=artifact,
        datasets=[
            registry_pb2.DatasetInput(role=role, source="s3://x", sha256=sha)
            for role, sha in datasets.items()
        ],
        label_column="target",
    )
    return c._call(c.registry.CreateModelVersion, request)


def test_a_digest_in_free_text_of_a_version_opens_nothing(
    models: Models, trained_model: TrainedModel, tmp_path: Path
) -> None:
    secret, sha = _secret(tmp_path)
    with models.server.client("ada") as ada:
        ada.register_version(
            models.b, trained_model.onnx, datasets={"secret": secret}, capture_env=False
        )
    with models.server.client("dana") as dana, models.server.client("sam") as sam:
        blob_refused(lambda: dana.download_blob(sha, tmp_path / "stolen.csv"))
        dana.register_version(
            models.a,
            trained_model.onnx,
            params={"note": sha},
            training_run_id=sha,
            capture_env=False,
        )
        for c in (dana, sam):
            blob_refused(lambda c=c: c.get_blob(sha))
            blob_refused(lambda c=c: c.download_blob(sha, tmp_path / "stolen.csv"))
        assert not (tmp_path / "stolen.csv").exists()


def test_a_registration_names_only_blobs_the_caller_may_read(
    models: Models, trained_model: TrainedModel, tmp_path: Path
) -> None:
    secret, sha = _secret(tmp_path)
    theirs = _other_onnx(trained_model, tmp_path)
    with models.server.client("ada") as ada:
        ada.register_version(models.b, theirs, datasets={"secret": secret}, capture_env=False)
        theirs_sha = ada.get_blob(hashlib.sha256(theirs.read_bytes()).hexdigest()).sha256
        before = len(list(ada.list_versions(models.a)))
    with models.server.client("dana") as dana:
        mine = dana.upload_blob(trained_model.onnx).sha256
        blob_refused(lambda: _create(dana, models.a, mine, holdout=sha))
        blob_refused(lambda: _create(dana, models.a, theirs_sha))
        # A digest nobody uploaded is answered the same way: the answer tells nothing.
        err = blob_refused(lambda: _create(dana, models.a, mine, holdout="0" * 64))
        assert "0" * 64 in err.message
    with models.server.client("ada") as ada:
        assert len(list(ada.list_versions(models.a))) == before


def test_uploading_bytes_someone_else_stored_first_makes_them_readable(
    models: Models, trained_model: TrainedModel, tmp_path: Path
) -> None:
    theirs = _other_onnx(trained_model, tmp_path)
    train = tmp_path / "train.parquet"
    train.write_bytes(trained_model.train.read_bytes())
    with models.server.client("ada") as ada:
        ada.register_version(models.b, theirs, capture_env=False)
    sha = hashlib.sha256(theirs.read_bytes()).hexdigest()
    with models.server.client("dana") as dana, models.server.client("sam") as sam:
        blob_refused(lambda: dana.get_blob(sha))
        v = dana.register_version(
            models.a, theirs, datasets={"train": train}, label="target", capture_env=False
        )
        assert v.artifact.sha256 == sha and v.baseline.sha256
        assert dana.get_blob(sha).created_by == "ada"
        # A viewer of model a reads what a's versions name: artifact, datasets and profile.
        for digest in (sha, v.lineage.datasets[0].sha256, v.baseline.sha256):
            got = sam.download_blob(digest, tmp_path / digest).read_bytes()
            assert hashlib.sha256(got).hexdigest() == digest
    with models.server.client("ada") as ada:
        uploads = [e for e in ada.audit_events(resource=f"blobs/{sha}") if e.action == "UploadBlob"]
        assert sorted(e.actor for e in uploads) == ["ada", "dana"]


def test_a_missing_digest_is_answered_like_an_unreadable_one(
    models: Models, tmp_path: Path
) -> None:
    stored = f"salary {uuid.uuid4()}".encode()
    absent = hashlib.sha256(f"never uploaded {uuid.uuid4()}".encode()).hexdigest()
    with models.server.client("ada") as ada:
        sha = ada.upload_blob(stored).sha256
        with pytest.raises(NotFound):
            ada.get_blob(absent)
    with models.server.client("sam") as sam:
        answers = []
        for digest in (sha, absent):
            got = blob_refused(lambda d=digest: sam.get_blob(d))
            answers.append(got.message.replace(digest, "DIGEST"))
            blob_refused(lambda d=digest: sam.download_blob(d, tmp_path / "x"))
        assert answers[0] == answers[1]


def test_an_evaluation_names_only_a_dataset_the_caller_may_read(
    models: Models, trained_model: TrainedModel, tmp_path: Path
) -> None:
    """Evaluating on another model's dataset by digest would hand its metrics (and, through the
    evaluation's dataset field, the blob itself) to the caller."""
    with models.server.client("ada") as ada:
        data = (
            ada.register_version(
                models.b, trained_model.onnx, datasets={"holdout": trained_model.holdout}
            )
            .lineage.datasets[0]
            .sha256
        )
    with models.server.client("dana") as dana:
        v = dana.register_version(models.a, trained_model.onnx, capture_env=False)
        request = evaluation_pb2.EvaluateRequest(
            name=v.name, dataset_sha256=data, label="target", compare_to="-"
        )
        blob_refused(lambda: dana._call(dana.evaluation.Evaluate, request))
        blob_refused(lambda: dana.get_blob(data))
        assert list(dana.list_evaluations(models.a, int(v.version))) == []
        # The same bytes uploaded by the caller itself may be evaluated.
        mine = dana.evaluate(models.a, int(v.version), trained_model.holdout, label="target")
        assert dana.operation_result(mine, timeout=120).dataset_sha256 == data
