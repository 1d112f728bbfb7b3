"""deploy/README.md describes what the manifests hold."""

from __future__ import annotations

import re
from typing import Any

from tests.deploy.conftest import DEPLOY

_RBAC = {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}


def _row(path: str) -> str:
    text = (DEPLOY / "README.md").read_text()
    return next(line for line in text.splitlines() if line.startswith(f"| `{path}` |"))


def test_the_base_row_lists_rbac_only_when_the_base_has_it(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    has_rbac = any(r["kind"] in _RBAC for r in rendered["base"])
    listed = re.search(r"(?<!no )RBAC", _row("base/")) is not None
    assert listed == has_rbac


def test_the_examples_row_names_every_example_directory() -> None:
    row = _row("examples/")
    for path in sorted(p for p in (DEPLOY / "examples").iterdir() if p.is_dir()):
        assert f"`{path.name}/`" in row, path.name
