"""A managed sidecar follows a control plane that requires mutual TLS: with its client
certificate (and token) it loads and serves the deployment's champion; without one the
handshake fails. The certificate and its key go together, and only in managed mode."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import ValidationError

from modelplane import Client
from modelplane.oip import grpc_service_pb2 as pb
from modelplane.oip import grpc_service_pb2_grpc as pb_grpc
from modelplane.testing import onnx_models
from sidecar.managed.server import control_plane_channel
from sidecar.server import start
from sidecar.settings import SidecarSettings
from tests.conftest import unique
from tests.controlplane.test_auth_permissions import TokenServer, start_token_server
from tests.controlplane.test_auth_tls import Pki, pki  # noqa: F401  (the fixture)


@pytest.fixture
def mtls_plane(tmp_path: Path, pki: Pki) -> Iterator[TokenServer]:  # noqa: F811
    server = start_token_server(
        tmp_path / "cp",
        {"ada": (["admin"], []), "sid": (["sidecar"], [])},
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        client_ca=str(pki.ca),
        report_interval_seconds=0.3,
    )
    yield server
    server.cp.handle.stop(0)


def _settings(server: TokenServer, pki: Pki, deployment: str, **kw: object) -> SidecarSettings:  # noqa: F811
    return SidecarSettings(
        control_plane=server.address,
        deployment=deployment,
        control_plane_token=server.tokens["sid"],
        control_plane_tls_ca=pki.ca,
        listen="127.0.0.1:0",
        device="cpu",
        warmup_runs=1,
        **kw,  # type: ignore[arg-type]
    )


def test_a_managed_sidecar_serves_through_mutual_tls(
    mtls_plane: TokenServer,
    pki: Pki,  # noqa: F811
    tmp_path: Path,
) -> None:
    model_id, deployment = unique(), unique("d")
    with Client(
        mtls_plane.address,
        token=mtls_plane.tokens["ada"],
        tls_ca=pki.ca,
        tls_cert=pki.client_cert,
        tls_key=pki.client_key,
        timeout=30,
    ) as ada:
        ada.create_model(model_id)
        ada.register_version(
            model_id,
            onnx_models.save(onnx_models.mlp(4), tmp_path / "m.onnx"),
            capture_env=False,
        )
        ada.create_deployment(deployment, model=model_id, champion_version=1)

    # Without a client certificate the control plane refuses the handshake.
    without = _settings(mtls_plane, pki, deployment)
    with control_plane_channel(without) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

    settings = _settings(
        mtls_plane,
        pki,
        deployment,
        control_plane_tls_cert=pki.client_cert,
        control_plane_tls_key=pki.client_key,
        cache_dir=tmp_path / "cache",
    )
    handle = start(settings)
    try:
        assert handle.wait_ready(60)
        rows = np.ones((2, 4), dtype=np.float32)
        with grpc.insecure_channel(f"127.0.0.1:{handle.port}") as channel:
            reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                pb.ModelInferRequest(
                    model_name=deployment,
                    inputs=[
                        pb.ModelInferRequest.InferInputTensor(
                            name="input", datatype="FP32", shape=[2, 4]
                        )
                    ],
                    raw_input_contents=[rows.tobytes()],
                ),
                timeout=10,
            )
        assert reply.model_version == "1" and reply.outputs[0].shape == [2, 2]
    finally:
        handle.stop(0)


def test_the_client_certificate_and_key_go_together_and_only_in_managed_mode(
    tmp_path: Path,
) -> None:
    cert, key = tmp_path / "c.crt", tmp_path / "c.key"
    managed = {"control_plane": "127.0.0.1:1", "deployment": "d"}
    with pytest.raises(ValidationError, match="go together"):
        SidecarSettings(**managed, control_plane_tls_cert=cert)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="go together"):
        SidecarSettings(**managed, control_plane_tls_key=key)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="managed mode"):
        SidecarSettings(
            model=tmp_path / "m.onnx", control_plane_tls_cert=cert, control_plane_tls_key=key
        )
