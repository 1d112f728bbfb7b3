"""The code lineage ``versions register`` records from git: the commit with ``-dirty`` when
tracked files were changed, nothing and no warning outside a repository, and a warning with
git's reason (the version still registered) when a repository is there but git gives nothing
for it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, TrainedModel
from tests.controlplane.test_cli import Cli

GIT = shutil.which("git")
pytestmark = pytest.mark.skipif(GIT is None, reason="needs git")


@pytest.fixture
def cli(controlplane: RunningControlPlane, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(controlplane.address, capsys)


def _git(folder: Path, *argv: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@e", *argv],
        cwd=folder,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def _repo(folder: Path) -> Path:
    folder.mkdir()
    _git(folder, "init", "-q")
    _git(folder, "remote", "add", "origin", "https://git.example/ml/fraud.git")
    (folder / "train.py").write_text("print('v1')\n", encoding="utf-8")
    _git(folder, "add", "train.py")
    _git(folder, "commit", "-qm", "x")
    return folder


def _register(cli: Cli, onnx: Path) -> tuple[dict, str]:  # type: ignore[type-arg]
    name = unique()
    cli.json("models", "create", name)
    code, out, err = cli.run("versions", "register", name, "--onnx", str(onnx), "--no-environment")
    assert code == 0, err
    return json.loads(out)["lineage"]["code"], err


def test_a_clean_tree_records_head(
    cli: Cli, trained_model: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = _repo(tmp_path / "repo")
    (repo / "scratch.txt").write_text("untracked files do not count\n", encoding="utf-8")
    monkeypatch.chdir(repo)
    code, err = _register(cli, trained_model.onnx)
    assert code == {
        "repository": "https://git.example/ml/fraud.git",
        "commit": _git(repo, "rev-parse", "HEAD"),
    }
    assert "warning" not in err


def test_a_changed_tracked_file_marks_the_commit_dirty(
    cli: Cli, trained_model: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = _repo(tmp_path / "repo")
    (repo / "train.py").write_text("print('v2, not committed')\n", encoding="utf-8")
    monkeypatch.chdir(repo)
    code, _ = _register(cli, trained_model.onnx)
    assert code["commit"] == _git(repo, "rev-parse", "HEAD") + "-dirty"


def test_no_repository_records_nothing_without_a_warning(
    cli: Cli, trained_model: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    code, err = _register(cli, trained_model.onnx)
    assert not code.get("commit") and not code.get("repository")
    assert "warning" not in err


def test_a_repository_git_cannot_open_is_a_warning(
    cli: Cli, trained_model: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``.git`` file pointing nowhere (a moved worktree or submodule): git says "not a git
    repository", but there is one, so the empty lineage is not silent."""
    folder = tmp_path / "worktree"
    folder.mkdir()
    (folder / ".git").write_text(f"gitdir: {tmp_path / 'gone'}\n", encoding="utf-8")
    monkeypatch.chdir(folder)
    code, err = _register(cli, trained_model.onnx)
    assert not code.get("commit")
    assert err.count("warning:") == 1 and "not a git repository" in err
    assert "--code-commit" in err


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown")
def test_a_repository_of_dubious_ownership_is_a_warning(
    cli: Cli, trained_model: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = _repo(tmp_path / "repo")
    for path in (repo, *repo.rglob("*")):
        os.lchown(path, 54321, 54321)
    empty_config = tmp_path / "gitconfig"
    empty_config.write_text("", encoding="utf-8")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(empty_config))  # no safe.directory
    monkeypatch.chdir(repo)
    code, err = _register(cli, trained_model.onnx)
    assert not code.get("commit")
    assert err.count("warning:") == 1 and "dubious ownership" in err


def test_git_missing_beside_a_repository_is_a_warning(
    cli: Cli, trained_model: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = _repo(tmp_path / "repo")
    monkeypatch.chdir(repo)
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    code, err = _register(cli, trained_model.onnx)
    assert not code.get("commit")
    assert err.count("warning:") == 1 and "cannot run git" in err


def test_given_code_options_need_no_git(
    cli: Cli, trained_model: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "worktree"
    folder.mkdir()
    (folder / ".git").write_text(f"gitdir: {tmp_path / 'gone'}\n", encoding="utf-8")
    monkeypatch.chdir(folder)
    name = unique()
    cli.json("models", "create", name)
    argv = ["--onnx", str(trained_model.onnx), "--no-environment"]
    code, out, err = cli.run(
        "versions", "register", name, *argv, "--code-commit", "abc", "--code-repo", "r"
    )
    assert code == 0 and "warning" not in err
    assert json.loads(out)["lineage"]["code"] == {"repository": "r", "commit": "abc"}


def test_a_status_git_cannot_give_is_a_warning(
    cli: Cli, trained_model: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A damaged index: git gives the commit but not whether tracked files changed, so the
    commit is recorded as it is, with a warning instead of a silent clean state."""
    repo = _repo(tmp_path / "repo")
    (repo / "train.py").write_text("print('v2, not committed')\n", encoding="utf-8")
    (repo / ".git" / "index").write_bytes(b"not an index")
    monkeypatch.chdir(repo)
    code, err = _register(cli, trained_model.onnx)
    head = _git(repo, "rev-parse", "HEAD")
    assert code["commit"] == head
    assert f"warning: commit {head} recorded without knowing whether tracked files" in err
    assert "index" in err


def test_a_token_in_a_query_string_is_not_recorded(
    cli: Cli, trained_model: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A remote (or --code-repo) with a token in its query string or fragment is recorded
    without them, as the control plane refuses them (CREDENTIALS_IN_URL)."""
    repo = _repo(tmp_path / "repo")
    remote = "https://git.example/ml/fraud.git?access_token=SECRET"
    _git(repo, "remote", "set-url", "origin", remote)
    monkeypatch.chdir(repo)
    code, err = _register(cli, trained_model.onnx)
    assert code["repository"] == "https://git.example/ml/fraud.git"
    assert "SECRET" not in err

    name = unique()
    cli.json("models", "create", name)
    argv = ["--onnx", str(trained_model.onnx), "--no-environment"]
    given = "https://git.example/ml/fraud.git#SECRET"
    status, out, err = cli.run("versions", "register", name, *argv, "--code-repo", given)
    assert status == 0, err
    assert json.loads(out)["lineage"]["code"]["repository"] == "https://git.example/ml/fraud.git"
