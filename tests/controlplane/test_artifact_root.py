"""The artifact root is a folder on a local or mounted file system or an object store
(``s3://``, ``gs://``: see test_object_store.py): any other URI is refused at startup (it once
became a folder named ``s3:`` under the working directory), and a ``file://`` URI names its
folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from controlplane.blobstore import BlobStore
from controlplane.server import start
from controlplane.settings import ControlPlaneSettings
from modelplane import Client
from modelplane.errors import InvalidArgument

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("root", ["hdfs://nn:8020/a", "abfs://container/a", "ftp://host/a"])
def test_serve_refuses_other_uris_in_one_line(tmp_path: Path, root: str) -> None:
    argv = ["controlplane", "serve", "--listen", "127.0.0.1:0", "--artifact-root", root]
    result = subprocess.run(
        [str(BIN / "modelplane"), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "MODELPLANE_DB_URL": f"sqlite:///{tmp_path / 'cp.db'}"},
    )
    err = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert result.returncode == 2, result.stderr
    assert len(err) == 1 and err[0].startswith("error: "), result.stderr
    assert "artifact_root" in err[0] and root in err[0] and "file:///path" in err[0]
    assert "s3://BUCKET/PREFIX" in err[0]
    assert not (tmp_path / root.split("/")[0]).exists()  # no folder named "hdfs:"


def test_the_variable_is_refused_too_and_the_blob_store_refuses_it_on_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELPLANE_ARTIFACT_ROOT", "hdfs://namenode/artifacts")
    with pytest.raises(ValueError, match="artifact_root"):
        ControlPlaneSettings()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidArgument) as err:
        BlobStore.open("hdfs://namenode/artifacts", 1024)
    assert err.value.reason == "INVALID_ARTIFACT_ROOT"
    assert list(tmp_path.iterdir()) == []


def test_a_file_uri_names_its_folder(tmp_path: Path) -> None:
    folder = tmp_path / "some dir"
    root = folder.as_uri()  # file:///.../some%20dir
    assert ControlPlaneSettings(artifact_root=root).artifact_root == str(folder)
    settings = ControlPlaneSettings(
        listen="127.0.0.1:0", db_url=f"sqlite:///{tmp_path / 'cp.db'}", artifact_root=root
    )
    handle = start(settings)
    try:
        with Client(f"127.0.0.1:{handle.port}", principal="alice") as c:
            blob = c.upload_blob(b"some bytes")
        assert (folder / "blobs" / "sha256" / blob.sha256[:2] / blob.sha256).is_file()
    finally:
        handle.stop(0)
    with pytest.raises(ValueError, match="file:///path"):
        ControlPlaneSettings(artifact_root="file://elsewhere/x")
