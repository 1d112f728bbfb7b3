"""`models list` and `versions list` with --page-size print a table and, on stderr, the
--page-token that continues it; following those tokens lists everything once."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from modelplane.testing import onnx_models
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane
from tests.controlplane.test_cli import Cli


@pytest.fixture
def cli(controlplane: RunningControlPlane, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(controlplane.address, capsys)


def pages(cli: Cli, *argv: str) -> list[str]:
    """The table rows (first cells) of every page, following the tokens printed on stderr."""
    names: list[str] = []
    token: list[str] = []
    while True:
        code, out, err = cli.run(*argv, "--page-size", "2", *token, output="table")
        assert code == 0, err
        names += [line.split("│")[1].strip() for line in out.splitlines() if "/" in line]
        notes = [line for line in err.splitlines() if line.startswith("next page: ")]
        if not notes:
            assert err == ""
            return names
        assert len(notes) == 1
        token = shlex.split(notes[0].removeprefix("next page: "))
        assert token[0] == "--page-token" and len(token) == 2


def test_models_list_pages_tell_how_to_continue(cli: Cli) -> None:
    label = unique("team")
    made = [unique() for _ in range(5)]
    for model_id in made:
        cli.json("models", "create", model_id, "--label", f"team={label}")
    listed = pages(cli, "models", "list", "--filter", f"labels.team={label}")
    assert listed == sorted(f"models/{m}" for m in made)


def test_versions_list_pages_tell_how_to_continue(cli: Cli, tmp_path: Path) -> None:
    model_id = unique()
    cli.json("models", "create", model_id)
    onnx = onnx_models.save(onnx_models.mlp(4), tmp_path / "m.onnx")
    for _ in range(3):
        cli.json("versions", "register", model_id, "--onnx", str(onnx), "--no-environment")
    listed = pages(cli, "versions", "list", model_id)
    assert listed == [f"models/{model_id}/versions/{n}" for n in (3, 2, 1)]
    # JSON output carries the token in the document and says nothing on stderr.
    code, _, err = cli.run("versions", "list", model_id, "--page-size", "2")
    assert code == 0 and err == ""


def test_operations_list_pages_tell_how_to_continue(
    cli: Cli, controlplane: RunningControlPlane
) -> None:
    from controlplane.services import OperationService
    from controlplane.store import Store
    from modelplane.server import RequestContext

    target = f"models/{unique()}/versions/1"
    store = Store.open(controlplane.db_url)
    try:
        ops = OperationService(store)
        made = {ops.start(RequestContext(principal="ci"), "evaluation", target).name for _ in "abc"}
    finally:
        store.close()
    listed = pages(cli, "operations", "list", "--target", target)
    assert sorted(listed) == sorted(made) and len(listed) == 3
