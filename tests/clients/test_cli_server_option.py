"""``--server`` and ``MODELPLANE_SERVER``: an empty variable means the default address, and an
address that is not HOST:PORT is a one-line usage error (exit 2), not gRPC's noise."""

from __future__ import annotations

import pytest

from modelplane.cli import build_parser, main


@pytest.mark.parametrize(
    "server", ["", "fraud", "127.0.0.1", "127.0.0.1:", ":50051", "h:0", "h:x", "::1", "fe80::1"]
)
def test_a_server_that_is_not_host_port_is_a_usage_error(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--server", server, "models", "list"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith(f"error: --server {server!r}: use HOST:PORT")


def test_an_empty_modelplane_server_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELPLANE_SERVER", "")
    assert build_parser().parse_args(["models", "list"]).server == "127.0.0.1:50051"
    monkeypatch.setenv("MODELPLANE_SERVER", "cp.example:7000")
    assert build_parser().parse_args(["models", "list"]).server == "cp.example:7000"


def test_a_bad_modelplane_server_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MODELPLANE_SERVER", "nowhere")
    assert main(["models", "list"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "MODELPLANE_SERVER" in err


@pytest.mark.parametrize("server", ["127.0.0.1:1", "[::1]:1", "unix:/nonexistent.sock"])
def test_host_port_and_grpc_targets_are_tried(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--server", server, "--timeout", "1", "models", "list"]) == 4
    assert "cannot reach" in capsys.readouterr().err
