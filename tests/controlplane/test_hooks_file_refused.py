"""A hooks file the server cannot use stops ``controlplane serve`` before it serves: exit 2
with one line naming the file, with or without ``--workers``, and no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.controlplane.conftest import serve_refused


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("deployments: [1,2\n", "cannot read the hooks file"),
        ("deployments:\n  fraud: {command: retrain.sh}\n", "needs 'command'"),
    ],
)
def test_serve_refuses_a_bad_hooks_file_in_one_line(
    tmp_path: Path, workers: str, content: str, says: str
) -> None:
    hooks = tmp_path / "hooks.yaml"
    hooks.write_text(content)
    result = serve_refused(
        tmp_path,
        *("--listen", "127.0.0.1:0", "--workers", workers),
        env={"MODELPLANE_HOOKS_FILE": str(hooks)},
    )
    err = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert result.returncode == 2, result.stderr
    assert len(err) == 1, result.stderr
    assert err[0].startswith("error: (INVALID_HOOKS_FILE) ") and str(hooks) in err[0], err[0]
    assert says in err[0], err[0]
