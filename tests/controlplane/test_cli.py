"""Every registry CLI command against a real server, with the exit-code contract."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from modelplane.cli import main
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, TrainedModel


class Cli:
    """Runs ``modelplane --server ADDR --output json ...`` in process."""

    def __init__(self, address: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.address = address
        self.capsys = capsys

    def run(
        self, *argv: str, principal: str = "alice", output: str = "json"
    ) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main(["--server", self.address, "--output", output, "--as", principal, *argv])
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *argv: str, **kw: str) -> dict:  # type: ignore[type-arg]
        code, out, err = self.run(*argv, **kw)
        assert code == 0, err
        return json.loads(out)


@pytest.fixture
def cli(controlplane: RunningControlPlane, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(controlplane.address, capsys)


def test_models_commands(cli: Cli) -> None:
    name = unique()
    created = cli.json("models", "create", name, "--description", "scores", "--label", "team=risk")
    assert created["name"] == f"models/{name}" and created["labels"] == {"team": "risk"}
    assert cli.json("models", "get", name)["description"] == "scores"
    listed = cli.json("models", "list", "--filter", "labels.team=risk")
    assert f"models/{name}" in [m["name"] for m in listed["models"]]
    page = cli.json("models", "list", "--page-size", "1")
    assert len(page["models"]) == 1
    updated = cli.json(
        "models",
        "update",
        name,
        "--description",
        "v2",
        "--intended-use",
        "triage",
        "--etag",
        created["etag"],
    )
    assert (updated["description"], updated["intended_use"]) == ("v2", "triage")
    code, _, err = cli.run(
        "models", "update", name, "--description", "v3", "--etag", created["etag"]
    )
    assert code == 3 and "ABORTED" in err and "ETAG_MISMATCH" in err
    assert cli.json("models", "delete", name) == {"deleted": f"models/{name}"}
    code, out, err = cli.run("models", "get", name)
    assert (code, out) == (3, "") and "NOT_FOUND" in err and "MODEL_NOT_FOUND" in err


def test_versions_alias_and_blob_commands(
    cli: Cli, trained_model: TrainedModel, tmp_path: Path
) -> None:
    name = unique()
    cli.json("models", "create", name)
    v = cli.json(
        "versions",
        "register",
        name,
        "--onnx",
        str(trained_model.onnx),
        "--dataset",
        f"train={trained_model.train}",
        "--dataset",
        f"holdout={trained_model.holdout}",
        "--label",
        "target",
        "--param",
        "C=1.0",
        "--metric",
        "auc=0.99",
        "--code-commit",
        "abc123",
        "--code-repo",
        "https://git.example/x",
    )
    assert v["name"] == f"models/{name}/versions/1" and v["version"] == "1"
    assert len(v["artifact"]["sha256"]) == 64
    assert v["signature"]["inputs"][0]["shape"] == ["-1", "30"]
    assert v["lineage"]["parameters"] == {"C": "1.0"} and v["lineage"]["metrics"] == {"auc": 0.99}
    assert v["lineage"]["code"] == {"repository": "https://git.example/x", "commit": "abc123"}
    assert {d["role"] for d in v["lineage"]["datasets"]} == {"train", "holdout"}
    assert v["feature_names"] == trained_model.feature_names
    v2 = cli.json(
        "versions",
        "register",
        name,
        "--onnx",
        str(trained_model.onnx),
        "--no-environment",
        "--feature-names",
        ",".join(trained_model.feature_names),
    )
    assert v2["version"] == "2" and v2["lineage"]["environment"]["packages"] == []
    assert [x["version"] for x in cli.json("versions", "list", name)["versions"]] == ["2", "1"]
    upd = cli.json(
        "versions", "update", name, "2", "--description", "cand", "--set-label", "stage=beta"
    )
    assert upd["labels"] == {"stage": "beta"}
    alias = cli.json("alias", "set", name, "champion", "1", "--reason", "first")
    assert alias["version"] == f"models/{name}/versions/1"
    cli.json("alias", "set", name, "champion", "2", "--reason", "better")
    assert cli.json("versions", "get", name, "@champion")["version"] == "2"
    assert cli.json("alias", "get", name, "champion")["reason"] == "better"
    assert [a["name"] for a in cli.json("alias", "list", name)["aliases"]] == [
        f"models/{name}/aliases/champion"
    ]
    history = cli.json("alias", "history", name, "champion")["events"]
    assert [e["reason"] for e in history] == ["better", "first"]
    out = tmp_path / "back.onnx"
    got = cli.json("versions", "download", name, "@champion", "--out", str(out))
    assert (
        out.read_bytes() == trained_model.onnx.read_bytes()
        and got["sha256"] == v["artifact"]["sha256"]
    )
    code, _, err = cli.run("versions", "archive", name, "2")
    assert code == 3 and "VERSION_HAS_ALIASES" in err
    cli.json("alias", "delete", name, "champion", "--reason", "done")
    assert cli.json("versions", "archive", name, "2")["state"] == "VERSION_STATE_ARCHIVED"
    blob = cli.json("blobs", "upload", str(trained_model.holdout))
    assert cli.json("blobs", "get", blob["sha256"])["size_bytes"] == str(
        trained_model.holdout.stat().st_size
    )
    cli.json("blobs", "download", blob["sha256"], "--out", str(tmp_path / "h.csv"))
    assert (tmp_path / "h.csv").read_bytes() == trained_model.holdout.read_bytes()


def test_operations_commands(cli: Cli, controlplane: RunningControlPlane) -> None:
    from controlplane.services import OperationService
    from controlplane.store import Store
    from modelplane.server import RequestContext

    store = Store.open(controlplane.db_url)
    try:
        ops = OperationService(store)
        op = ops.start(RequestContext(principal="ci"), "evaluation", "models/a/versions/1")
        ops.finish(RequestContext(principal="ci"), op.id)
    finally:
        store.close()
    assert cli.json("operations", "get", op.name)["done"] is True
    assert cli.json("operations", "wait", op.name, "--timeout", "1")["done"] is True
    listed = cli.json("operations", "list", "--target", "models/a/versions/1")
    assert [o["name"] for o in listed["operations"]] == [op.name]


def test_table_output_and_usage_errors(cli: Cli) -> None:
    name = unique()
    code, out, _ = cli.run("models", "create", name, output="table")
    assert code == 0 and name in out
    code, out, _ = cli.run("models", "list", output="table")
    assert code == 0 and name in out
    code, _, err = cli.run("models", "create")
    assert code == 2 and "usage" in err
    code, _, err = cli.run("versions", "register", name, "--onnx", "/no/such/file.onnx")
    assert code == 2 and "no such file" in err
    code, _, err = cli.run("versions", "register", name, "--onnx", __file__, "--metric", "auc=high")
    assert code == 2 and "number" in err


@pytest.mark.parametrize("bad", ["../x", "X", "a b", "models/x", "%2e%2e"])
def test_the_server_decides_validity(cli: Cli, bad: str) -> None:
    code, out, err = cli.run("models", "create", bad)
    assert code == 3 and out == ""
    assert "INVALID_ARGUMENT" in err and "INVALID_NAME" in err


def test_unreachable_server_exits_4(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = main(
        ["--server", f"127.0.0.1:{port}", "--timeout", "2", "--output", "json", "models", "list"]
    )
    out, err = capsys.readouterr()
    assert code == 4 and out == "" and "UNAVAILABLE" in err


def test_table_output_shows_server_text_as_written(cli: Cli) -> None:
    # Square brackets are rich markup: "[/x]" would fail to print and "[ml]" would vanish.
    name = unique()
    description = "weights in [/tmp/x] dir, see [ml] team, [bold]not bold[/bold]"
    code, out, err = cli.run("models", "create", name, "--description", description, output="table")
    assert code == 0, err
    code, out, err = cli.run("models", "list", output="table")
    assert code == 0, err
    assert "[/tmp/x]" in out and "[ml]" in out and "[bold]not bold[/bold]" in out


def test_table_cells_escape_control_characters(capsys: pytest.CaptureFixture[str]) -> None:
    """Server data in a table (a name read out of a model stored before names were checked,
    say) cannot clear the screen or retitle the terminal."""
    from modelplane.cli._output import Printer

    cell = "in\x1b]0;pwned\x07put\x1b[2J\x9b1m\x7f"
    Printer(json_output=False).emit(
        {}, columns=["name"], rows=[[cell], ["tab\there"]], title="t\x1b[31m"
    )
    out = capsys.readouterr().out
    assert not any(ch in out for ch in "\x1b\x07\x9b\x7f"), repr(out)
    assert "in\\x1b]0;pwned\\x07put\\x1b[2J\\x9b1m\\x7f" in out
    assert "t\\x1b[31m" in out


def test_files_that_cannot_be_written_are_usage_errors(
    cli: Cli, trained_model: TrainedModel, tmp_path: Path
) -> None:
    name = unique()
    cli.json("models", "create", name)
    cli.json("versions", "register", name, "--onnx", str(trained_model.onnx))
    missing = tmp_path / "no" / "such" / "folder" / "x"
    for argv in (
        ("model-card", name, "1", "--out", str(missing)),
        ("model-card", name, "1", "--out", str(tmp_path)),
        ("versions", "download", name, "1", "--out", str(missing)),
    ):
        code, out, err = cli.run(*argv)
        assert code == 2 and out == "", (argv, err)
        assert err.startswith("error: ") and "Traceback" not in err, err
        assert str(missing) in err or str(tmp_path) in err
