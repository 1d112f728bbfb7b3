"""protos/generate.py: one run covers Python, TypeScript and Go; a missing generator is an
error naming the fix, never a silent skip."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.clients.conftest import ROOT

GENERATE = ROOT / "protos" / "generate.py"


def _generate(*args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": path if path is not None else os.environ.get("PATH", "")}
    return subprocess.run(
        [sys.executable, str(GENERATE), *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_check_fails_loudly_when_the_go_plugins_are_missing(tmp_path: Path) -> None:
    # A PATH with node (protoc-gen-es needs it) but without protoc-gen-go.
    bare = tmp_path / "bin"
    bare.mkdir()
    node = shutil.which("node")
    assert node is not None, "Node.js is needed to generate the TypeScript stubs"
    (bare / "node").symlink_to(node)
    result = _generate("--check", path=str(bare))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "cannot generate the go stubs: protoc-gen-go is not installed" in result.stderr
    assert "make go-tools" in result.stderr
    assert "fresh" not in result.stdout


def test_lang_narrows_the_check_on_purpose() -> None:
    result = _generate("--check", "--lang", "python")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "generated code is fresh: python"
