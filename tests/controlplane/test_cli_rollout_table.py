"""``rollout status`` and the rollout actions in table mode: a summary of the rollout, its
latest window per arm, the shadow comparison, the guards and the replicas that cannot load
the candidate, read from the same deployment the JSON document describes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelplane import Client
from modelplane.v1 import deployments_pb2 as pb
from tests.controlplane.conftest import RunningControlPlane
from tests.controlplane.test_cli import Cli
from tests.controlplane.test_deployments_api import Sidecar, deployed, latency, report_until


@pytest.fixture
def cli(controlplane: RunningControlPlane, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(controlplane.address, capsys)


def _cells(out: str) -> list[list[str]]:
    """The rows of rich's tables: the cells between the vertical bars."""
    return [
        [c.strip() for c in line.strip().strip("│").split("│")]
        for line in out.splitlines()
        if line.strip().startswith("│")
    ]


def test_status_in_table_mode_summarises_the_latest_window(
    cli: Cli, client: Client, tmp_path: Path
) -> None:
    dep, versions = deployed(client, tmp_path, guards=["candidate.error_rate <= 0.5"])
    code, out, err = cli.run("rollout", "status", dep, output="table")
    assert code == 0, err
    assert ["rollout", "none"] in _cells(out) and "{" not in out

    code, out, err = cli.run(
        "rollout", "start", dep, "--candidate", str(versions[1]), "--strategy", "canary",
        "--steps", "10,100", "--step-duration", "1h", output="table",
    )  # fmt: skip
    assert code == 0, err
    rows = _cells(out)
    assert ["state", "running"] in rows and ["candidate", f"{versions[1]} at 10%"] in rows

    side = Sidecar(client, dep)
    side.report(900, 100, candidate_errors=5, candidate_seconds=0.03,
                unloaded={versions[1]: "out of memory"})  # fmt: skip
    other = Sidecar(client, dep)
    other.report(100, 0)
    d = client.get_deployment(dep)
    ev = d.rollout.evidence
    code, out, err = cli.run("rollout", "status", dep, output="table")
    assert code == 0, err
    rows = _cells(out)
    assert "{" not in out and len(out.splitlines()) < 60, out  # no histogram buckets
    by_arm = {r[0]: r for r in rows if r[0] in ("champion", "candidate") and len(r) == 10}
    champion, candidate = by_arm["champion"], by_arm["candidate"]
    assert champion[1:4] == [str(versions[0]), str(ev.champion.requests), "0"]
    assert candidate[1:4] == [str(versions[1]), "100", "5"]
    assert float(candidate[4]) == pytest.approx(ev.candidate.error_rate, rel=1e-3)
    assert float(candidate[6]) == pytest.approx(ev.candidate.latency_p99 * 1000, rel=1e-3)
    assert float(champion[5]) == pytest.approx(ev.champion.latency_p50 * 1000, rel=1e-3)
    guards = {r[0]: r[1:3] for r in rows if len(r) == 4 and r[0].startswith("candidate.")}
    assert guards["candidate.error_rate <= 0.5"] == ["yes", ""]
    detail = next(r[3] for r in rows if len(r) == 4 and r[0] == "candidate.error_rate <= 0.5")
    assert detail == ev.guards[0].detail and "candidate.error_rate" in detail, detail
    assert next(r for r in rows if "out of memory" in r)[:2] == [side.replica, str(versions[1])]
    assert ["replicas reporting", str(ev.replica_count)] in rows and ev.replica_count == 2
    assert ev.scope == pb.EVIDENCE_SCOPE_WINDOW and "latest window" in out

    # An action prints the same summary; --output json keeps the whole document.
    code, out, err = cli.run("rollout", "pause", dep, "--reason", "look", output="table")
    assert code == 0, err
    assert ["state", "paused"] in _cells(out) and ["reason", "look"] in _cells(out)
    doc = cli.json("rollout", "status", dep)
    assert doc["state"] == "paused" and doc["evidence"]["candidate"]["latency"]["counts"]

    # A shadow rollout's comparison.
    assert cli.run("rollout", "abort", dep, "--reason", "next")[0] == 0
    code, out, err = cli.run(
        "rollout", "start", dep, "--candidate", str(versions[2]), "--strategy", "shadow",
        "--step-duration", "1h", output="table",
    )  # fmt: skip
    assert code == 0, err
    shadow = pb.ShadowSummary(
        version=versions[2], pairs=40, disagreements=10, abs_diff_sum=2.0, dropped=60,
        latency=latency(np.full(40, 0.03)),
    )  # fmt: skip
    Sidecar(client, dep).report(500, shadow=shadow)
    ev = client.get_deployment(dep).rollout.evidence
    code, out, err = cli.run("rollout", "status", dep, output="table")
    assert code == 0, err
    row = next(r for r in _cells(out) if len(r) == 10 and r[0] == str(versions[2]))
    assert row[1] == "40" and float(row[2]) == pytest.approx(0.25)
    assert float(row[3]) == pytest.approx(ev.shadow.mean_abs_diff, rel=1e-3)
    # Dropped copies over copies made, and the shadow's latency.
    assert row[6] == "60" and float(row[7]) == pytest.approx(0.6)
    assert float(row[9]) == pytest.approx(ev.shadow.latency_p99 * 1000, rel=1e-3)
    assert ev.shadow.latency_p99 == pytest.approx(0.03, rel=0.26)


def test_status_titles_a_steps_sum_as_such(cli: Cli, client: Client, tmp_path: Path) -> None:
    """When a step completes, the evidence kept is the whole step's sum that was judged, not
    a window: the table and the document say so, until the next window replaces it."""
    dep, versions = deployed(client, tmp_path)
    client.start_rollout(dep, versions[1], steps=[50, 100], step_duration=0.2, min_requests=10)
    side = Sidecar(client, dep)
    ev = report_until(
        side, lambda d: d.rollout.step == 1, champion=30, candidate=30
    ).rollout.evidence
    assert ev.scope == pb.EVIDENCE_SCOPE_STEP and ev.candidate.requests >= 30
    code, out, err = cli.run("rollout", "status", dep, output="table")
    assert code == 0, err
    assert "last step judged, all its windows" in out and "latest window" not in out
    assert ["step", "2 of 2"] in _cells(out)  # counted from 1, as the reason counts it
    assert cli.json("rollout", "status", dep)["step"] == 1  # the index in --steps
    code, out, err = cli.run("rollout", "events", dep, output="table")
    shown = {r[2]: r[5] for r in _cells(out) if len(r) == 9}
    assert (shown["started"], shown["advanced"]) == ("1", "2"), out
    assert cli.json("rollout", "status", dep)["evidence"]["scope"] == "EVIDENCE_SCOPE_STEP"

    side.report(0, 7)
    ev = client.get_deployment(dep).rollout.evidence
    assert ev.scope == pb.EVIDENCE_SCOPE_WINDOW and ev.candidate.requests == 7
    code, out, err = cli.run("rollout", "status", dep, output="table")
    assert "latest window" in out and "judged" not in out


def test_candidate_requests_this_step_restart_with_a_resume(
    cli: Cli, client: Client, tmp_path: Path
) -> None:
    """A resume restarts the step: its count of candidate requests reads 0 at once, though
    the evidence of the last window stays until the next one."""
    dep, versions = deployed(client, tmp_path)
    client.start_rollout(dep, versions[1], steps=[50, 100], step_duration=3600, min_requests=10)
    side = Sidecar(client, dep)
    side.report(30, 30)
    assert client.get_deployment(dep).rollout.evidence.step_candidate_requests == 30
    client.pause_rollout(dep, reason="look")
    side.report(20, 20)  # counted while paused
    assert client.get_deployment(dep).rollout.evidence.step_candidate_requests == 50
    ev = client.resume_rollout(dep).rollout.evidence
    assert ev.step_candidate_requests == 0 and ev.candidate.requests == 20
    code, out, err = cli.run("rollout", "status", dep, output="table")
    assert code == 0 and ["candidate requests this step", "0"] in _cells(out), err
    side.report(0, 7)
    assert client.get_deployment(dep).rollout.evidence.step_candidate_requests == 7
