"""Retraining hooks against real HTTP servers and real commands: a call has a deadline in all,
redirects are not followed, commands see no settings variables, and the hook threads never
keep the process from exiting."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from controlplane.rollouts.hooks import HookRunner
from modelplane.testing.processes import alive
from tests.hook_support import HookLog, drip, tcp_server


@pytest.fixture
def runner() -> Iterator[HookRunner]:
    hooks = HookRunner({}, timeout=10)
    yield hooks
    hooks.close()


def test_a_webhook_answering_byte_by_byte_is_cut_off_at_the_timeout(hook_log: HookLog) -> None:
    runner = HookRunner({}, timeout=0.5)
    header = b"HTTP/1.1 200 OK\r\nX-Pad: "
    with tcp_server(lambda conn: drip(conn, header)) as port:
        try:
            runner.fire("fraud", f"http://127.0.0.1:{port}/hook", {"drifted": ["x"]})
            failed = hook_log.wait_for("retraining webhook failed")
            assert failed["deployment"] == "fraud"
            assert failed["error"] == "no answer within 0.5s"
        finally:
            runner.close()


class _Redirecting(BaseHTTPRequestHandler):
    hits: list[tuple[str, str]] = []

    def do_POST(self) -> None:
        self.hits.append(("POST", self.path))
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(302)
        self.send_header("Location", "/elsewhere")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self.hits.append(("GET", self.path))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


def test_a_redirected_webhook_is_a_failed_delivery(runner: HookRunner, hook_log: HookLog) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Redirecting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/hook"
        runner.fire("fraud", url, {"drifted": ["x"]})
        warned = hook_log.wait_for("retraining webhook redirected; redirects are not followed")
        assert warned["status"] == 302 and warned["location"] == "/elsewhere"
        assert _Redirecting.hits == [("POST", "/hook")]
    finally:
        server.shutdown()
        server.server_close()


def test_a_command_gets_the_event_but_no_settings_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELPLANE_DB_URL", "postgresql://cp:s3cret@db/cp")
    monkeypatch.setenv("HOOK_TEST_KEPT", "yes")
    out = tmp_path / "env.json"
    script = (
        "import json, os, sys\n"
        "with open(sys.argv[1] + '.new', 'w') as f:\n"
        "    json.dump(dict(os.environ), f)\n"
        "os.replace(sys.argv[1] + '.new', sys.argv[1])\n"
    )
    hooks = HookRunner({"fraud": [sys.executable, "-c", script, str(out)]}, timeout=30)
    try:
        hooks.fire("fraud", "", {"drifted": ["x"]})
        deadline = time.monotonic() + 30
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        env = json.loads(out.read_text())
    finally:
        hooks.close()
    assert json.loads(env["MODELPLANE_DRIFT_EVENT"]) == {"drifted": ["x"]}
    assert env["HOOK_TEST_KEPT"] == "yes"
    assert [k for k in env if k.startswith("MODELPLANE_")] == ["MODELPLANE_DRIFT_EVENT"]


def test_a_command_past_its_timeout_is_killed_with_its_children(
    tmp_path: Path, hook_log: HookLog
) -> None:
    pid_file = tmp_path / "child.pid"
    script = f"sleep 600 & echo $! > {pid_file}.new; mv {pid_file}.new {pid_file}; wait"
    hooks = HookRunner({"fraud": ["sh", "-c", script]}, timeout=0.5)
    child = 0
    try:
        hooks.fire("fraud", "", {})
        failed = hook_log.wait_for("retraining command failed")
        child = int(pid_file.read_text())
        deadline = time.monotonic() + 30
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(child)  # the shell's child did not outlive the hook
        assert failed["error"] == "still running after 0.5s; killed"
    finally:
        hooks.close()
        if child and alive(child):
            os.kill(child, signal.SIGKILL)


def test_hooks_still_running_never_keep_the_process_from_exiting() -> None:
    header = b"HTTP/1.1 200 OK\r\nX-Pad: "
    with tcp_server(lambda conn: drip(conn, header)) as port:
        code = (
            "from controlplane.rollouts.hooks import HookRunner\n"
            "import time\n"
            "r = HookRunner({}, timeout=600.0)\n"
            "for i in range(6):\n"
            f"    r.fire('d', 'http://127.0.0.1:{port}/hook', {{'i': i}})\n"
            "time.sleep(0.3)\n"
            "r.close()\n"
        )
        proc = subprocess.run([sys.executable, "-c", code], timeout=60, capture_output=True)
        assert proc.returncode == 0, proc.stderr


def test_a_commands_output_is_not_held_only_the_end_of_its_stderr_is_logged(
    tmp_path: Path, hook_log: HookLog
) -> None:
    """A chatty command writes its stdout nowhere (the server would hold all of it in memory
    to drop it), and a failing one has the end of its stderr hook_log."""
    where = tmp_path / "stdout"
    script = (
        "import os, sys\n"
        "with open(sys.argv[1] + '.new', 'w') as f:\n"
        "    f.write(os.readlink('/proc/self/fd/1'))\n"
        "os.replace(sys.argv[1] + '.new', sys.argv[1])\n"
        "sys.stdout.write('x' * 300_000)\n"
        "sys.stderr.write('no model to retrain\\n')\n"
        "sys.exit(3)\n"
    )
    hooks = HookRunner({"fraud": [sys.executable, "-c", script, str(where)]}, timeout=30)
    try:
        hooks.fire("fraud", "", {})
        failed = hook_log.wait_for("retraining command exited non-zero")
    finally:
        hooks.close()
    assert where.read_text().strip() == "/dev/null"
    assert failed["code"] == 3 and failed["stderr"].strip() == "no model to retrain"


def test_a_command_flooding_its_stderr_is_not_held_in_memory() -> None:
    """Hundreds of megabytes on stderr cost the server a few hundred bytes: only the end is
    kept. Run in a process of its own, whose peak resident memory (VmHWM, which unlike
    ru_maxrss does not count the forking parent's) is read back."""
    code = (
        "import json\n"
        "from controlplane.rollouts import hooks\n"
        "class Keep:\n"
        "    events = []\n"
        "    def warning(self, event, **fields):\n"
        "        self.events.append({'event': event, **fields})\n"
        "    info = warning\n"
        "hooks.log = keep = Keep()\n"
        "script = \"head -c 400000000 /dev/zero >&2; printf 'the end' >&2; exit 3\"\n"
        "hooks.HookRunner({}, timeout=120)._run('d', ['sh', '-c', script], b'{}')\n"
        "status = open('/proc/self/status').read().split('VmHWM:')[1]\n"
        "peak = int(status.split()[0]) * 1024\n"
        "print(json.dumps({'events': keep.events, 'peak': peak}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], timeout=120, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    [failed] = got["events"]
    assert failed["event"] == "retraining command exited non-zero" and failed["code"] == 3
    assert failed["stderr"].endswith("the end") and len(failed["stderr"]) == 500
    assert got["peak"] < 200 * 1024 * 1024, got["peak"]
