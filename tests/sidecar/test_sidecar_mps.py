"""``--cuda-mps``: when the workers get an MPS daemon, and the private daemon's lifecycle.

NVIDIA's ``nvidia-cuda-mps-control`` is stood in for by a small program that behaves as the
real one does at its interface (``-d`` starts a daemon, commands arrive on stdin, the folders
come from ``CUDA_MPS_PIPE_DIRECTORY`` and ``CUDA_MPS_LOG_DIRECTORY``) and records what it was
asked. The real daemon is exercised on a GPU machine (``test_sidecar_cuda.py``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from modelplane.errors import FailedPrecondition
from sidecar import mps
from sidecar.settings import SidecarSettings

_FAKE = """#!{python}
import json, os, sys
pipe = os.environ["CUDA_MPS_PIPE_DIRECTORY"]
record = {record!r}
def note(what):
    with open(record, "a") as f:
        f.write(json.dumps({{"call": what, "pipe": pipe,
                            "log": os.environ.get("CUDA_MPS_LOG_DIRECTORY")}}) + "\\n")
if sys.argv[1:] == ["-d"]:
    note("start")
    if {fail_start}:
        sys.stderr.write("An instance of this daemon is already running\\n")
        sys.exit(1)
    open(os.path.join(pipe, "control"), "w").close()
    sys.exit(0)
command = sys.stdin.read().strip()
note(command)
if not os.path.exists(os.path.join(pipe, "control")):
    sys.stderr.write("Cannot find MPS control daemon process\\n")
    sys.exit(1)
if command == "quit":
    os.remove(os.path.join(pipe, "control"))
"""


def _fake_control(tmp_path: Path, fail_start: bool = False) -> tuple[Path, Path]:
    """A stand-in control program in its own bin folder; returns (folder, record file)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "calls.jsonl"
    program = bin_dir / mps.CONTROL
    program.write_text(
        _FAKE.format(python=sys.executable, record=str(record), fail_start=fail_start)
    )
    program.chmod(0o755)
    return bin_dir, record


def _calls(record: Path) -> list[dict[str, str]]:
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines()]


@pytest.fixture(autouse=True)
def _no_driver_tools(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Neither this machine's PATH nor its driver folder offers the control program, and no
    daemon is named by the environment, unless a test says so."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(mps, "_DRIVER_BIN", str(empty))
    monkeypatch.delenv(mps.PIPE_VAR, raising=False)
    monkeypatch.setattr(mps.tempfile, "tempdir", str(tmp_path))


@pytest.mark.parametrize(
    ("setting", "on_gpu", "count"),
    [("off", True, 4), ("on", True, 1), ("auto", False, 4), ("on", False, 4)],
)
def test_no_daemon_when_off_single_worker_or_no_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: mps.Mps, on_gpu: bool, count: int
) -> None:
    bin_dir, record = _fake_control(tmp_path)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert mps.for_workers(setting, on_gpu, count) == (None, "off")
    assert _calls(record) == []


def test_a_daemon_the_environment_names_is_used_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir, record = _fake_control(tmp_path)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv(mps.PIPE_VAR, str(tmp_path / "operator-pipe"))
    assert mps.for_workers("on", True, 4) == (None, "external")
    assert _calls(record) == []  # nothing started: the workers inherit the variable


def test_auto_without_the_tools_runs_time_sliced() -> None:
    assert mps.find_control() is None
    assert mps.for_workers("auto", True, 4) == (None, "off")


def test_on_without_the_tools_refuses_to_start() -> None:
    with pytest.raises(FailedPrecondition) as err:
        mps.for_workers("on", True, 4)
    assert err.value.reason == "CUDA_MPS_UNAVAILABLE"
    assert "nvidia-cuda-mps-control is not installed" in err.value.message
    assert "--cuda-mps auto|off" in err.value.message


def test_the_driver_folder_is_searched_when_path_lacks_the_tools(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir, _ = _fake_control(tmp_path)
    monkeypatch.setattr(mps, "_DRIVER_BIN", str(bin_dir))
    assert mps.find_control() == str(bin_dir / mps.CONTROL)


def test_a_private_daemon_gets_its_own_folders_and_quits_at_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir, record = _fake_control(tmp_path)
    monkeypatch.setenv("PATH", str(bin_dir))
    daemon, use = mps.for_workers("auto", True, 3)
    assert use == "private" and daemon is not None
    folder = daemon.folder
    assert folder.parent == tmp_path and folder.name.startswith("modelplane-mps-")
    assert daemon.env == {mps.PIPE_VAR: str(folder / "pipe"), mps.LOG_VAR: str(folder / "log")}
    calls = _calls(record)
    assert [c["call"] for c in calls] == ["start", "get_server_list"]
    assert {(c["pipe"], c["log"]) for c in calls} == {(str(folder / "pipe"), str(folder / "log"))}
    daemon.stop()
    assert [c["call"] for c in _calls(record)][-1] == "quit"
    assert not folder.exists()


@pytest.mark.parametrize("setting", ["auto", "on"])
def test_a_daemon_that_does_not_start_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: mps.Mps
) -> None:
    bin_dir, record = _fake_control(tmp_path, fail_start=True)
    monkeypatch.setenv("PATH", str(bin_dir))
    if setting == "on":
        with pytest.raises(FailedPrecondition) as err:
            mps.for_workers(setting, True, 2)
        assert "already running" in err.value.message
        assert err.value.reason == "CUDA_MPS_UNAVAILABLE"
    else:
        assert mps.for_workers(setting, True, 2) == (None, "off")
    assert _calls(record)[0]["call"] == "start"
    assert not list(tmp_path.glob("modelplane-mps-*"))


def test_settings_take_only_auto_on_off() -> None:
    assert SidecarSettings(model=Path("m.onnx")).cuda_mps == "auto"
    with pytest.raises(ValidationError, match="cuda_mps"):
        SidecarSettings(model=Path("m.onnx"), cuda_mps="sometimes")  # type: ignore[arg-type]
