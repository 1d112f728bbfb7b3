"""``modelplane.testing.launch``: children get their limits without a ``preexec_fn``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from modelplane.testing import launch

REPORT = (
    "import json, os, resource, signal, sys\n"
    "limit = resource.getrlimit(resource.RLIMIT_FSIZE)\n"
    "try:\n"
    "    with open(sys.argv[1], 'wb', buffering=0) as fh:\n"
    "        for _ in range(2):  # a short write first, then EFBIG\n"
    "            fh.write(b'x' * 5000)\n"
    "    error = None\n"
    "except OSError as exc:\n"
    "    error = exc.errno\n"
    "print(json.dumps({'limit': limit, 'errno': error, 'pid': os.getpid(),\n"
    "    'cpus': sorted(os.sched_getaffinity(0)),\n"
    "    'xfsz_ignored': signal.getsignal(signal.SIGXFSZ) == signal.SIG_IGN}))\n"
)


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_a_file_size_limit_makes_longer_writes_fail_with_efbig(tmp_path: Path) -> None:
    out = tmp_path / "big.bin"
    done = _run([*launch.prefix(file_size_limit=4096), sys.executable, "-c", REPORT, str(out)])
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["limit"] == [4096, 4096]
    assert seen["errno"] == 27  # EFBIG, not a SIGXFSZ kill
    assert seen["xfsz_ignored"]
    assert out.stat().st_size == 4096


def test_without_settings_the_command_runs_as_it_would(tmp_path: Path) -> None:
    done = _run([*launch.prefix(), sys.executable, "-c", REPORT, str(tmp_path / "f")])
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["errno"] is None
    assert seen["cpus"] == sorted(os.sched_getaffinity(0))


def test_an_affinity_mask_confines_the_command(tmp_path: Path) -> None:
    cpu = max(os.sched_getaffinity(0))
    done = _run([*launch.prefix(cpus=[cpu]), sys.executable, "-c", REPORT, str(tmp_path / "f")])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["cpus"] == [cpu]


def test_the_command_replaces_the_launcher_and_keeps_its_exit_status() -> None:
    proc = subprocess.Popen(
        [*launch.prefix(), sys.executable, "-c", "import os, sys; print(os.getpid()); sys.exit(3)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 3
    assert int(out) == proc.pid  # exec, not a grandchild: signals reach the command


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "no command given"),
        (["--cpus", "0"], "no command given"),
        (["--file-size-limit", "lots", "--", "true"], "invalid int value"),
    ],
)
def test_bad_launch_arguments_are_refused(argv: list[str], message: str) -> None:
    done = _run([sys.executable, "-m", "modelplane.testing.launch", *argv])
    assert done.returncode == 2
    assert message in done.stderr


def test_a_missing_command_is_named() -> None:
    done = _run([*launch.prefix(), "/nonexistent/command"])
    assert done.returncode != 0
    assert "/nonexistent/command" in done.stderr


def test_no_code_here_starts_a_child_with_a_preexec_fn() -> None:
    """Tests, benchmarks and servers all run gRPC; a ``preexec_fn`` would fork them."""
    root = Path(__file__).resolve().parents[2]
    found = [
        f"{path.relative_to(root)}:{number}"
        for top in ("tests", "bench", "controlplane", "sidecar", "clients/python")
        for path in (root / top).rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"preexec_fn\s*=\s*[A-Za-z_(]", line)
    ]
    assert not found, f"use modelplane.testing.launch.prefix instead: {found}"
