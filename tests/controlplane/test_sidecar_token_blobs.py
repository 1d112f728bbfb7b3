"""A token holding only the ``sidecar`` role reads the blobs a sidecar loads (the artifact and
the baseline profile of the versions of deployed models) and nothing else: no training or
holdout data, no model that no deployment serves, no upload of anyone else's."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from modelplane.errors import PermissionDenied
from tests.conftest import unique
from tests.controlplane.conftest import TrainedModel
from tests.controlplane.test_auth_permissions import start_token_server


def test_a_sidecar_token_reads_only_what_a_sidecar_loads(
    tmp_path: Path, trained_model: TrainedModel
) -> None:
    server = start_token_server(
        tmp_path / "cp",
        {"ada": (["admin"], []), "sid": (["sidecar"], []), "val": (["viewer"], [])},
    )
    try:
        deployed, idle = unique(), unique()
        # The model no deployment serves is trained on half the rows: its baseline differs.
        half = tmp_path / "half.parquet"
        table = pq.read_table(trained_model.train)
        pq.write_table(table.slice(0, table.num_rows // 2), half)
        with server.client("ada") as ada:
            versions = {}
            for model_id, train in ((deployed, trained_model.train), (idle, half)):
                ada.create_model(model_id)
                versions[model_id] = ada.register_version(
                    model_id,
                    trained_model.onnx,
                    datasets={"train": train, "holdout": trained_model.holdout},
                    label="target",
                    capture_env=False,
                )
            ada.create_deployment(unique("d"), model=deployed, champion_version=1)
            secret = b"ssn,name\n123-45-6789,Jane Doe\n"
            uploaded = ada.upload_blob(secret).sha256
        served = versions[deployed]
        assert served.baseline.sha256
        datasets = [d.sha256 for d in served.lineage.datasets]
        assert len(datasets) == 2
        with server.client("sid") as sid:
            # What it serves: the artifact and the baseline profile, read and downloaded.
            for sha256 in (served.artifact.sha256, served.baseline.sha256):
                assert sid.get_blob(sha256).sha256 == sha256
                out = sid.download_blob(sha256, tmp_path / sha256)
                assert hashlib.sha256(out.read_bytes()).hexdigest() == sha256
            # The same model's training and holdout data, the baseline of a model no
            # deployment serves, and someone else's upload: refused.
            assert versions[idle].baseline.sha256 != served.baseline.sha256
            refused = [*datasets, versions[idle].baseline.sha256, uploaded]
            for sha256 in refused:
                with pytest.raises(PermissionDenied) as err:
                    sid.get_blob(sha256)
                assert err.value.reason == "BLOB_NOT_IN_SCOPE"
                with pytest.raises(PermissionDenied):
                    sid.download_blob(sha256, tmp_path / "refused")
                assert not (tmp_path / "refused").exists()
            # A digest nobody stored is refused alike: the token learns nothing of what exists.
            with pytest.raises(PermissionDenied):
                sid.get_blob("0" * 64)
        with server.client("val") as val:
            for sha256 in [*datasets, uploaded]:
                assert val.get_blob(sha256).sha256 == sha256
    finally:
        server.cp.handle.stop(0)
