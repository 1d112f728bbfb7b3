"""Commands whose extra is not installed exit 2 with the pip command that installs it, never
70 ("a bug in the CLI"). The light install is simulated in a fresh process whose imports of
the extras' packages fail, as they do without them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

RUN = """
import importlib.abc, sys
blocked = set(sys.argv[1].split(","))

class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in blocked or name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Missing())
from modelplane.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _run(blocked: str, *args: str) -> tuple[int, str]:
    got = subprocess.run(
        [sys.executable, "-c", RUN, blocked, *args], capture_output=True, text=True, timeout=120
    )
    return got.returncode, got.stderr


@pytest.mark.parametrize(
    ("blocked", "args", "extra", "missing"),
    [
        (
            "numba",
            ["sidecar", "serve", "--model", "{model}", "--listen", "127.0.0.1:0"],
            "sidecar",
            "numba",
        ),
        ("structlog", ["sidecar", "serve", "--model", "{model}"], "sidecar", "structlog"),
        (
            "structlog",
            ["injector", "serve", "--tls-cert", "{model}", "--tls-key", "{model}"],
            "controlplane",
            "structlog",
        ),
        (
            "pyarrow",
            ["labels", "send", "{model}", "--sidecar", "127.0.0.1:1"],
            "sidecar",
            "pyarrow",
        ),
        ("pydantic", ["logs", "read", "{folder}"], "sidecar", "pydantic"),
        (
            "sqlmodel",
            ["controlplane", "serve", "--listen", "127.0.0.1:0"],
            "controlplane",
            "sqlmodel",
        ),
    ],
    ids=["sidecar-numba", "sidecar-structlog", "injector", "labels", "logs", "controlplane"],
)
def test_a_missing_extra_is_a_usage_error_with_the_install_command(
    tmp_path: Path, blocked: str, args: list[str], extra: str, missing: str
) -> None:
    model = tmp_path / "file.csv"
    model.write_text("request_id,label\na,1\n")
    filled = [a.format(model=model, folder=tmp_path) for a in args]
    code, err = _run(blocked, *filled)
    assert code == 2, err
    assert f"pip install 'modelplane[{extra}]'" in err and missing in err, err
    assert "Traceback" not in err


def test_an_import_failure_of_our_own_is_a_bug_not_a_missing_extra(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    code, err = _run("sidecar.server", "sidecar", "serve", "--model", str(model))
    assert code == 70, err
    assert "sidecar.server" in err and "pip install" not in err, err
