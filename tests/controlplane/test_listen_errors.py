"""An address ``controlplane serve`` cannot listen on is named with its option: exit 2 with
one line, with or without ``--workers``, for the gRPC listener and the metrics endpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.controlplane.conftest import serve_refused


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("option", ["--listen", "--metrics-listen"])
def test_an_address_in_use_is_named_with_its_option(
    tmp_path: Path, taken: str, workers: str, option: str
) -> None:
    argv = ["--listen", "127.0.0.1:0", "--workers", workers, option, taken]
    result = serve_refused(tmp_path, *argv)
    err = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr
    assert len(err) == 1 and err[0].startswith(f"error: {option} {taken}: "), result.stderr
    assert "Traceback" not in result.stderr
