"""A blob is named by its digest or by ``blobs/<sha256>``, the name ``blobs upload`` prints:
``blobs get`` and ``blobs download`` take either, as the SDK's ``get_blob`` and
``download_blob`` do."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.controlplane.conftest import RunningControlPlane
from tests.controlplane.test_cli import Cli


@pytest.fixture
def cli(controlplane: RunningControlPlane, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(controlplane.address, capsys)


def test_the_cli_takes_the_name_upload_prints(cli: Cli, tmp_path: Path) -> None:
    data = os.urandom(4096)
    (tmp_path / "data.bin").write_bytes(data)
    uploaded = cli.json("blobs", "upload", str(tmp_path / "data.bin"))
    digest = hashlib.sha256(data).hexdigest()
    assert uploaded["name"] == f"blobs/{digest}"
    for blob in (uploaded["name"], digest):
        assert cli.json("blobs", "get", blob)["name"] == uploaded["name"]
        out = tmp_path / f"copy-{len(blob)}.bin"
        downloaded = cli.json("blobs", "download", blob, "--out", str(out))
        assert downloaded["sha256"] == digest and downloaded["size_bytes"] == len(data)
        assert out.read_bytes() == data


def test_the_sdk_takes_the_name_upload_returns(
    controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    data = os.urandom(2048)
    with controlplane.client() as c:
        name = c.upload_blob(data).name
        assert c.get_blob(name).sha256 == hashlib.sha256(data).hexdigest()
        assert c.download_blob(name, tmp_path / "copy.bin").read_bytes() == data
