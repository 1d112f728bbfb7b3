"""Policies through a real control plane: CRUD, revisions, one policy per target, rule errors
with positions, stale etags, and the CLI."""

from __future__ import annotations

import json

import pytest

from modelplane.cli import main
from modelplane.errors import Aborted, AlreadyExists, InvalidArgument, NotFound
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane


def test_policy_lifecycle_keeps_old_revisions(controlplane: RunningControlPlane) -> None:
    pid, target = unique("p"), unique("prod")
    with controlplane.client() as c:
        created = c.create_policy(
            pid, target=target, rules=["metrics.roc_auc >= 0.9"], description="first"
        )
        assert created.name == f"policies/{pid}" and created.revision == 1
        assert created.created_by == "alice" and created.etag
        updated = c.update_policy(
            pid, etag=created.etag, rules=["metrics.roc_auc >= 0.95", "validation.passed"]
        )
        assert updated.revision == 2 and list(updated.rules)[1] == "validation.passed"
        assert updated.description == "first" and updated.etag != created.etag
        old = c.get_policy(pid, revision=1)
        assert list(old.rules) == ["metrics.roc_auc >= 0.9"] and old.revision == 1
        assert c.get_policy(pid).revision == 2
        with pytest.raises(Aborted) as stale:
            c.update_policy(pid, etag=created.etag, description="late")
        assert stale.value.reason == "ETAG_MISMATCH"
        assert pid in [p.name.split("/")[1] for p in c.list_policies()]
        with pytest.raises(Aborted):
            c.delete_policy(pid, etag=created.etag)
        c.delete_policy(pid, etag=updated.etag)
        with pytest.raises(NotFound) as gone:
            c.get_policy(pid)
        assert gone.value.reason == "POLICY_NOT_FOUND"
        events = [e.action for e in c.audit_events(resource=f"policies/{pid}")]
    assert events == ["CreatePolicy", "UpdatePolicy", "DeletePolicy"]


def test_bad_policies_are_refused(controlplane: RunningControlPlane) -> None:
    pid, target = unique("p"), unique("prod")
    with controlplane.client() as c:
        with pytest.raises(InvalidArgument) as syntax:
            c.create_policy(pid, target=target, rules=["metrics.roc_auc >= 0.9", "metrics.x >"])
        assert syntax.value.reason == "INVALID_POLICY_RULE"
        assert syntax.value.metadata["rule_index"] == "1"
        assert syntax.value.metadata["line"] == "1" and "column" in syntax.value.metadata
        with pytest.raises(InvalidArgument) as unknown:
            c.create_policy(pid, target=target, rules=["secrets.key == 1"])
        assert "unknown variable" in unknown.value.message
        with pytest.raises(InvalidArgument) as empty:
            c.create_policy(pid, target=target, rules=[])
        assert empty.value.reason == "EMPTY_POLICY"
        with pytest.raises(InvalidArgument) as name:
            c.create_policy("Bad_Id", target=target, rules=["true"])
        assert name.value.reason == "INVALID_NAME"
        for bad in ("", "a/b/c", "models/x", "Prod"):
            with pytest.raises(InvalidArgument):
                c.create_policy(pid, target=bad, rules=["true"])
        c.create_policy(pid, target=target, rules=["true"])
        with pytest.raises(AlreadyExists) as dup:
            c.create_policy(pid, target=unique("t"), rules=["true"])
        assert dup.value.reason == "POLICY_EXISTS"
        with pytest.raises(AlreadyExists) as bound:
            c.create_policy(unique("p"), target=target, rules=["true"])
        assert bound.value.reason == "TARGET_HAS_POLICY"
        with pytest.raises(InvalidArgument):
            c.update_policy(pid, rules=["metrics.("])
        with pytest.raises(InvalidArgument) as mask:
            c.update_policy(pid)
        assert mask.value.reason == "INVALID_UPDATE_MASK"
        with pytest.raises(NotFound):
            c.update_policy(unique("p"), rules=["true"])
        with pytest.raises(NotFound):
            c.get_policy(pid, revision=7)
        with pytest.raises(InvalidArgument):
            c.get_policy("policies/x/y")
        assert c.get_policy(pid).revision == 1
        deployment = c.create_policy(
            unique("p"), target=f"deployments/{unique('d')}", rules=["1 < 2"]
        )
        assert deployment.target.startswith("deployments/")


def test_policies_cli(
    controlplane: RunningControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    pid, target = unique("p"), unique("prod")
    base = ["--server", controlplane.address, "--output", "json", "policies"]

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([*base, *argv])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = run(
        "create",
        pid,
        "--target",
        target,
        "--rule",
        "metrics.f1 > 0.5",
        "--rule",
        "validation.passed",
    )
    assert code == 0 and json.loads(out)["revision"] == "1"
    code, out, _ = run("update", pid, "--rule", "metrics.f1 > 0.6")
    assert code == 0 and json.loads(out)["rules"] == ["metrics.f1 > 0.6"]
    code, out, _ = run("get", pid, "--revision", "1")
    assert json.loads(out)["rules"] == ["metrics.f1 > 0.5", "validation.passed"]
    code, out, _ = run("list")
    assert f"policies/{pid}" in [p["name"] for p in json.loads(out)["policies"]]
    code, _, err = run("create", unique("p"), "--target", unique("t"), "--rule", "metrics.f1 >")
    assert code == 3 and "INVALID_POLICY_RULE" in err and "column" in err
    code, _, err = run("update", pid)
    assert code == 2
    code, _, _ = run("delete", pid)
    assert code == 0
    code, _, err = run("get", pid)
    assert code == 3 and "POLICY_NOT_FOUND" in err
