"""Replicas that cannot load the candidate are listed in the rollout's evidence
(``unloaded_replicas``, in GetDeployment and ``rollout status``), and ``rollout events`` lists
the rollout's events: through a real control plane (gRPC on loopback, SQLite) fed synthetic
window reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelplane import Client
from modelplane.v1 import deployments_pb2 as pb
from tests.conftest import unique
from tests.controlplane.test_cli import Cli
from tests.controlplane.test_deployments_api import Sidecar, deployed
from tests.rollouts.test_unloaded_candidate import WHY

pytestmark = pytest.mark.timeout(120)


def _listed(d: pb.Deployment) -> list[tuple[str, int, str]]:
    return [(u.replica, u.version, u.error) for u in d.rollout.evidence.unloaded_replicas]


def test_get_deployment_lists_a_replica_while_it_reports_the_candidate_unloaded(
    c: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dep, versions = deployed(c, tmp_path)
    candidate = versions[1]
    c.start_rollout(dep, candidate, steps=[50, 100], step_duration=600)
    bad, ok = Sidecar(c, dep, "pod-bad"), Sidecar(c, dep, "pod-ok")
    assert _listed(c.get_deployment(dep)) == []

    bad.report(champion=4, unloaded={candidate: WHY})
    first = c.get_deployment(dep).rollout.evidence.unloaded_replicas
    assert [(u.replica, u.version, u.error) for u in first] == [("pod-bad", candidate, WHY)]
    since = first[0].first_report_time.ToDatetime()
    assert first[0].last_report_time.ToDatetime() == since

    # Another replica's report keeps it listed; its own next report keeps its first time.
    ok.report(champion=10, candidate=10)
    assert _listed(c.get_deployment(dep)) == [("pod-bad", candidate, WHY)]
    bad.report(champion=4, unloaded={candidate: WHY})
    again = c.get_deployment(dep).rollout.evidence.unloaded_replicas[0]
    assert again.first_report_time.ToDatetime() == since
    assert again.last_report_time.ToDatetime() > since

    cli = Cli(c.address, capsys)
    doc = cli.json("rollout", "status", dep)
    assert [(u["replica"], u["version"], u["error"]) for u in doc["unloaded_replicas"]] == [
        ("pod-bad", candidate, WHY)
    ]
    assert (
        doc["unloaded_replicas"][0]["first_report_time"]
        == first[0].first_report_time.ToJsonString()
    )
    assert doc["evidence"]["unloaded_replicas"][0]["replica"] == "pod-bad"
    code, out, err = cli.run("rollout", "status", dep, output="table")
    assert code == 0, err
    assert "replicas that cannot load the candidate" in out
    row = next(line for line in out.splitlines() if "pod-bad" in line)
    assert WHY in row and first[0].first_report_time.ToJsonString() in row

    # The event that recorded it carries the same list in its evidence.
    events = list(c.list_rollout_events(dep))
    unloaded = next(e for e in events if e.action == "candidate_unloaded")
    assert [u.replica for u in unloaded.evidence.unloaded_replicas] == ["pod-bad"]

    # A report without the version clears it.
    bad.report(champion=4, candidate=4)
    assert _listed(c.get_deployment(dep)) == []
    assert cli.json("rollout", "status", dep)["unloaded_replicas"] == []


def test_rollout_events_lists_the_events_newest_first(
    c: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dep, versions = deployed(c, tmp_path)
    candidate = versions[1]
    c.start_rollout(dep, candidate, steps=[50, 100], step_duration=600)
    bad = Sidecar(c, dep, "pod-bad")
    bad.report(champion=4, unloaded={candidate: WHY})
    bad.report(champion=4, unloaded={candidate: WHY})
    bad.report(champion=4, candidate=4)
    c.pause_rollout(dep, reason="look first")
    c.abort_rollout(dep, reason="not today")
    expected = ["aborted", "paused", "candidate_loaded", "candidate_unloaded", "started"]

    cli = Cli(c.address, capsys)
    events = cli.json("rollout", "events", dep)["events"]
    assert [e["action"] for e in events] == expected
    times = [e["time"] for e in events]
    assert times == sorted(times, reverse=True)
    assert {e["rollout"] for e in events} == {c.get_deployment(dep).rollout.id}
    unloaded = events[3]
    assert unloaded["state"] == "running" and unloaded["phase"] == "canary"
    assert unloaded["actor"] == "modelplane"
    assert "pod-bad" in unloaded["reason"] and WHY in unloaded["reason"]
    assert unloaded["evidence"]["unloaded_replicas"][0]["replica"] == "pod-bad"
    assert events[1]["reason"] == "look first" and events[1]["state"] == "paused"
    assert events[0]["state"] == "aborted" and events[0]["actor"] == "alice"

    # Small pages give the same list; --limit keeps the newest.
    paged = cli.json("rollout", "events", dep, "--page-size", "1")["events"]
    assert [e["action"] for e in paged] == expected
    limited = cli.json("rollout", "events", dep, "--limit", "2")["events"]
    assert [e["action"] for e in limited] == expected[:2]

    code, out, err = cli.run("rollout", "events", dep, output="table")
    assert code == 0, err
    lines = out.splitlines()
    order = [next(i for i, line in enumerate(lines) if f" {a} " in line) for a in expected]
    assert order == sorted(order), out
    assert "pod-bad" in out and "not today" in out

    code, out, err = cli.run("rollout", "events", unique("missing"))
    assert code == 3 and "NOT_FOUND" in err and out == ""
    code, _, err = cli.run("rollout", "events", dep, "--page-size", "-1")
    assert code == 2 and "--page-size" in err
    code, _, err = cli.run("rollout", "events", "Not_A_Name")
    assert code == 3 and "INVALID_ARGUMENT" in err


def test_rollout_events_of_a_deployment_without_rollouts_is_empty(
    c: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dep, _ = deployed(c, tmp_path)
    cli = Cli(c.address, capsys)
    assert cli.json("rollout", "events", dep) == {"events": []}
    assert json.loads(cli.run("rollout", "status", dep)[1])["unloaded_replicas"] == []
