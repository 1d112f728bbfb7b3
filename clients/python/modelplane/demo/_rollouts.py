"""The demo's rollout steps: a managed sidecar, a canary that is promoted, a broken shadow
that is rolled back automatically, and drift that fires the retraining hook."""

from __future__ import annotations

import json
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from modelplane.demo._console import MODEL, STATE, cli, note, say, stop, wait_serving
from modelplane.demo._traffic import Traffic
from modelplane.testing.processes import free_port
from modelplane.v1 import deployments_pb2 as dp

DEPLOYMENT = MODEL
FINAL = {dp.ROLLOUT_STATE_PROMOTED, dp.ROLLOUT_STATE_ROLLED_BACK, dp.ROLLOUT_STATE_ABORTED}


def hooks_file(folder: Path) -> tuple[Path, Path]:
    """The control plane's hook configuration: the deployment's retraining command writes
    the drift event it receives on stdin to a file. Returns (config, the file it writes)."""
    request = folder / "retraining-request.json"
    script = f"import pathlib, sys; pathlib.Path({str(request)!r}).write_text(sys.stdin.read())"
    import sys

    config = folder / "hooks.json"
    config.write_text(
        json.dumps({"deployments": {DEPLOYMENT: {"command": [sys.executable, "-c", script]}}})
    )
    return config, request


def start_sidecar(stack: ExitStack, control_plane: str) -> tuple[str, int, Path]:
    """A sidecar in managed mode following the deployment; returns (address, metrics port,
    prediction-log folder)."""
    port, metrics = free_port(), free_port()
    address = f"127.0.0.1:{port}"
    log_dir = STATE / "predictions"
    argv = cli(
        "sidecar",
        "serve",
        "--control-plane",
        control_plane,
        "--deployment",
        DEPLOYMENT,
        "--listen",
        address,
        "--log-dir",
        str(log_dir),
        "--metrics-listen",
        f"127.0.0.1:{metrics}",
        "--drift-window-rows",
        str(DRIFT_WINDOW_ROWS),
    )
    out = stack.enter_context((STATE / "sidecar.log").open("wb"))
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    stack.callback(stop, proc)
    wait_serving(address, proc, "the sidecar")
    return address, metrics, log_dir


#: Rows per drift window of the demo's sidecar: small enough that, once the drift is injected,
#: a window soon holds only shifted rows (the default of 10,000 would take the demo's traffic
#: half a minute to fill).
DRIFT_WINDOW_ROWS = 2000

#: Rows of shifted traffic the sidecar's window must hold before the demo reads its report.
DRIFT_SHOWN_ROWS = 500

#: How long after a change the demo starts counting answers: the sidecar hears of a change
#: over its watch stream a moment after the control plane makes it.
SETTLE_SECONDS = 0.25


def span_name(r: dp.Rollout) -> str:
    """What the rollout is in now, as the share lines name it: ``step 2 of 3 (50%)``."""
    if r.phase == dp.ROLLOUT_PHASE_CANARY and 0 <= r.step < len(r.steps):
        return f"step {r.step + 1} of {len(r.steps)} ({r.steps[r.step]:g}%)"
    phase = dp.RolloutPhase.Name(r.phase).removeprefix("ROLLOUT_PHASE_").lower()
    return f"the {phase} phase"


def answered_line(traffic: Traffic, since: float, until: float | None = None) -> str:
    """The share of answers per version between two monotonic times, and their number."""
    counts = traffic.answered(since, until)
    total = sum(counts.values())
    if not total:
        return "no answers"
    shares = ", ".join(f"{v} {n / total:.0%}" for v, n in sorted(counts.items()))
    return f"{shares} of {total} answers"


def follow(client: Any, traffic: Traffic, timeout: float) -> dp.Deployment:
    """Print each change of the rollout until it ends and, when a step or phase ends, who
    answered the traffic over it; after the end, who answers in the next second.

    A span's answers are counted from the poll that first saw it (plus the sidecar's moment
    to hear of it) to the last poll that still saw it, so none belong to a neighbouring step.
    """
    deadline = time.monotonic() + timeout
    last: tuple[Any, ...] | None = None
    span, since, until = "", 0.0, 0.0
    while True:
        asked = time.monotonic()
        d = client.get_deployment(DEPLOYMENT)
        r = d.rollout
        key = (r.state, r.phase, r.step)
        if key == last:
            until = asked  # the state was still on when this poll went out
        else:
            if span:
                note(f"            answered over {span}: {answered_line(traffic, since, until)}")
            last, since = key, time.monotonic() + SETTLE_SECONDS
            until = since
            state = dp.RolloutState.Name(r.state).removeprefix("ROLLOUT_STATE_").lower()
            phase = dp.RolloutPhase.Name(r.phase).removeprefix("ROLLOUT_PHASE_").lower()
            span = span_name(r) if r.state not in FINAL else ""
            note(f"{state:<11} phase {phase:<7} candidate {r.candidate_percent:5.1f}% of traffic")
            if r.reason:
                note(f"            reason: {r.reason}")
        if r.state in FINAL:
            time.sleep(SETTLE_SECONDS + 1)
            note(f"            answered in the second after: {answered_line(traffic, since)}")
            return d
        if time.monotonic() > deadline:
            raise SystemExit(f"the rollout did not end within {timeout:.0f}s; see {STATE}/*.log")
        time.sleep(0.25)


def evidence_line(d: dp.Deployment) -> str:
    """The headline figures of the latest evidence."""
    e = d.rollout.evidence
    parts = []
    for arm in (e.champion, e.candidate):
        if arm.requests:
            p99 = f"{1000 * arm.latency_p99:.2f} ms" if arm.HasField("latency_p99") else "-"
            acc = f", accuracy {arm.accuracy:.3f}" if arm.HasField("accuracy") else ""
            parts.append(f"{arm.arm} v{arm.version}: {arm.requests} req, p99 {p99}{acc}")
    if e.shadow.pairs:
        parts.append(
            f"shadow v{e.shadow.version}: {e.shadow.pairs} pairs, disagreement "
            f"{e.shadow.disagreement_rate:.1%}"
        )
    return "; ".join(parts)


def rollouts(alice: Any, address: str, sc_address: str, traffic: Traffic) -> None:
    """Canary v2 to promotion, then v3 in shadow to automatic rollback."""
    say("Rolling out v2 as a canary: steps 10% → 50% → 100%, 4 s and 30 requests each")
    d = alice.start_rollout(
        DEPLOYMENT, 2, strategy="canary", steps=[10, 50, 100], min_requests=30, step_duration=4
    )
    for guard in d.rollout.effective_guards:
        note(f"guard: {guard}")
    d = follow(alice, traffic, timeout=90)
    note(evidence_line(d))
    note(f"champion now v{d.champion_version}")

    say("Trying v3 (fitted to inverted labels) in shadow: it sees a copy of every request")
    d = alice.start_rollout(
        DEPLOYMENT,
        3,
        strategy="shadow",
        shadow_fraction=1.0,
        guards=["shadow.disagreement_rate <= 0.05"],
    )
    for guard in d.rollout.effective_guards:
        note(f"guard: {guard}")
    d = follow(alice, traffic, timeout=60)
    note(evidence_line(d))
    note(f"clients saw {traffic.errors} failed requests out of {traffic.sent + traffic.errors}")


def drift_report(sc_address: str) -> Any:
    """The sidecar's report on its open drift window."""
    import grpc

    from modelplane.v1 import sidecar_pb2, sidecar_pb2_grpc

    with grpc.insecure_channel(sc_address) as ch:
        return sidecar_pb2_grpc.SidecarAdminServiceStub(ch).GetDriftReport(
            sidecar_pb2.GetDriftReportRequest(), timeout=10
        )


def report_line(report: Any, scaled: int | None = None) -> str:
    """A drift report's rows (``scaled``: how many of the latest were scaled), drifted share
    and largest PSIs."""
    rows = f"{report.row_count} rows"
    if scaled is not None:
        rows += f" (the last {min(scaled, report.row_count)} scaled)"
    share = f"{report.drifted_share:.0%}" if report.HasField("drifted_share") else "-"
    worst = sorted((f for f in report.features if f.HasField("psi")), key=lambda f: -f.psi)[:3]
    largest = ", ".join(f"{f.name} {f.psi:.2f}" for f in worst) or "-"
    return f"{rows}, {share} of features drifted (PSI >= 0.2 or KS p < 0.05); largest PSI {largest}"


def drift(alice: Any, sc_address: str, traffic: Traffic, request: Path) -> None:
    """Shift the live features until drift crosses the deployment's threshold."""
    say("Injecting drift: every feature of the live traffic scaled by 1.6")
    note(f"before the shift, the sidecar's drift window: {report_line(drift_report(sc_address))}")
    sent = traffic.sent
    traffic.shift = 1.6
    deadline = time.monotonic() + 60
    while not request.exists() and time.monotonic() < deadline:
        time.sleep(0.25)
    if not request.exists():
        traffic.shift = 1.0
        raise SystemExit(f"the retraining hook did not fire within 60s; see {STATE}/*.log")
    # The control plane judges the short windows the sidecar reports, so the hook may fire
    # while the sidecar's own open window still holds rows from before the shift: keep the
    # shift on until a window holds shifted rows only, enough of them to judge.
    deadline = time.monotonic() + 60
    while True:
        during = drift_report(sc_address)
        scaled = traffic.sent - sent
        only_shifted = DRIFT_SHOWN_ROWS <= during.row_count <= scaled
        if only_shifted or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    traffic.shift = 1.0
    note(f"with the shift, the sidecar's drift window: {report_line(during, scaled)}")
    event = json.loads(request.read_text())
    for arm in event["arms"]:
        share = arm.get("drifted_share")
        note(
            f"drift event on the {arm['arm']} (v{arm['version']}, {arm['rows']} rows merged by "
            f"the control plane): {'; '.join(arm['crossed'])}"
            + (f", {share:.0%} of features at PSI >= 0.2" if share is not None else "")
        )
    note(f"retraining hook fired with the drift event: {request}")
    note(f"  {json.dumps(event)[:200]}...")
    events = [e for e in alice.list_rollout_events(DEPLOYMENT) if e.action == "drift"]
    note(f"audited drift events on deployments/{DEPLOYMENT}: {len(events)}")
