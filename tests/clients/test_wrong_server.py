"""An address that answers but serves none of the API asked for (the control plane's and a
sidecar's addresses mixed up) is named as such, with the likely mix-up, while the gRPC code
(UNIMPLEMENTED) and the exit code (3, the server answered an error) stay as documented."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from modelplane import Client, Unimplemented
from modelplane.cli import main
from tests.clients.conftest import LiveControlPlane


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """HOST:PORT of a standalone sidecar serving a small MLP, started in this process."""
    from modelplane.testing import mlp, save
    from sidecar.server import start
    from sidecar.settings import SidecarSettings

    model = tmp_path_factory.mktemp("sidecar") / "model.onnx"
    save(mlp(4, (8,), 2, seed=1), model)
    handle = start(
        SidecarSettings(model=model, listen="127.0.0.1:0", device="cpu", warmup_runs=1)  # type: ignore[call-arg]
    )
    yield f"127.0.0.1:{handle.port}"
    handle.stop(0)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_server_option_given_a_sidecars_address(
    sidecar: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(capsys, "--server", sidecar, "--timeout", "30", "models", "list")
    assert (code, out) == (3, "")
    assert err.startswith("error: UNIMPLEMENTED (UNIMPLEMENTED) ") and err.count("\n") == 1, err
    assert f"the control plane at {sidecar} answers, but does not serve this API" in err
    assert f"is {sidecar} a sidecar's address?" in err and "--server" in err


def test_the_sdk_given_a_sidecars_address(sidecar: str) -> None:
    with Client(sidecar, timeout=30) as client, pytest.raises(Unimplemented) as raised:
        client.get_model("fraud")
    assert raised.value.reason == "UNIMPLEMENTED"
    assert "does not serve this API" in raised.value.message
    assert f"is {sidecar} a sidecar's address?" in raised.value.message


def test_the_sidecar_option_given_the_control_planes_address(
    live_controlplane: LiveControlPlane, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    address = live_controlplane.address
    labels = tmp_path / "labels.csv"
    labels.write_text("request_id,label\nr1,1\n")
    for argv in (
        ("drift", "report", "--sidecar", address),
        ("labels", "send", str(labels), "--sidecar", address),
    ):
        code, out, err = _run(capsys, "--output", "json", "--timeout", "30", *argv)
        # labels send prints its per-sidecar result also when a sidecar failed
        assert code == 3 and (out == "") == (argv[0] == "drift"), err
        assert "error: UNIMPLEMENTED (UNIMPLEMENTED) " in err, err
        assert f"the sidecar at {address} answers, but does not serve this API" in err
        assert f"is {address} the control plane's address?" in err and "--sidecar" in err
