"""Gates, enforcement on governed aliases, and signed approvals, through a real control plane
and the CLI; tampering is done on the database file itself."""

from __future__ import annotations

import json
import sqlite3
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from modelplane.cli import main
from modelplane.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, TrainedModel
from tests.controlplane.test_governance_evaluation import register

RISK_RULE = 'approvals.exists(a, "risk" in a.roles && a.decision == "approve")'


def evaluated(cp: RunningControlPlane, trained: TrainedModel) -> tuple[str, int, float]:
    """A version registered by alice and evaluated on the holdout; its roc_auc."""
    model_id = unique()
    with cp.client("alice") as c:
        version = register(c, trained, model_id)
        ev = c.operation_result(c.evaluate(model_id, version, trained.holdout, label="target"))
    return model_id, version, ev.metrics["roc_auc"]


def cli(
    cp: RunningControlPlane,
    capsys: pytest.CaptureFixture[str],
    *argv: str,
    who: str = "alice",
    roles: str = "",
) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["--server", cp.address, "--output", "json", "--as", who, "--roles", roles, *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_gate_with_risk_approval_then_governed_alias(
    controlplane: RunningControlPlane, trained_model: TrainedModel
) -> None:
    model_id, version, auc = evaluated(controlplane, trained_model)
    with controlplane.client("alice") as alice:
        alice.create_policy(
            "prod-gate", target="production", rules=["metrics.roc_auc >= 0.9", RISK_RULE]
        )
        first = alice.evaluate_gate(model_id, version, "production")
        assert not first.passed and first.policy == "policies/prod-gate"
        assert first.policy_revision == 1 and first.evaluation.startswith(
            f"models/{model_id}/versions/{version}/evaluations/"
        )
        assert [r.outcome for r in first.results] == ["passed", "failed"]
        assert first.results[0].values["metrics.roc_auc"] == pytest.approx(auc)
        with pytest.raises(FailedPrecondition) as refused:
            alice.set_alias(model_id, "production", version)
        assert refused.value.reason == "GATE_FAILED"
        with pytest.raises(PermissionDenied) as self_approval:
            alice.with_roles(["risk"]).approve(model_id, version, "production")
        assert self_approval.value.reason == "SELF_APPROVAL"
        # Ungoverned aliases move freely.
        alice.set_alias(model_id, "staging", version)
    with controlplane.client("bob") as bob:
        bob.with_roles(["ml"]).approve(model_id, version, "production", comment="looks fine")
        assert not bob.evaluate_gate(model_id, version, "production").passed
    with controlplane.client("carol") as carol:
        approval = carol.with_roles(["risk"]).approve(model_id, version, "production")
        assert approval.current and approval.roles == ["risk"] and approval.signature
        assert approval.artifact_sha256 == carol.get_version(model_id, version).artifact.sha256
        assert [e.resource for e in approval.evaluations] == [first.evaluation]
        passed = carol.evaluate_gate(model_id, version, "production")
        assert passed.passed and [r.outcome for r in passed.results] == ["passed", "passed"]
        moved = carol.set_alias(model_id, "production", version)
        assert moved.version == f"models/{model_id}/versions/{version}"
        # New evidence: a new evaluation makes the decision and the approval stale.
        carol.operation_result(
            carol.evaluate(model_id, version, trained_model.holdout, label="target")
        )
        with pytest.raises(FailedPrecondition) as stale:
            carol.set_alias(model_id, "production", version, reason="again")
        assert stale.value.reason == "GATE_FAILED" and "evidence changed" in stale.value.message
        assert not carol.evaluate_gate(model_id, version, "production").passed
        assert not any(a.current for a in carol.list_approvals(model_id, version))
        carol.approve(model_id, version, "production")
        assert carol.evaluate_gate(model_id, version, "production").passed
        # A policy update also invalidates the approval it signed.
        carol.update_policy("prod-gate", rules=["metrics.roc_auc >= 0.5", RISK_RULE])
        with pytest.raises(FailedPrecondition):
            carol.set_alias(model_id, "production", version)
        assert not carol.evaluate_gate(model_id, version, "production").passed
        decisions = carol.list_gate_decisions(model_id, version, target="production")
    assert len(decisions) == 6 and decisions[0].policy_revision == 2


def test_ungoverned_target_passes_and_is_recorded(
    controlplane: RunningControlPlane,
    trained_model: TrainedModel,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model_id = unique()
    with controlplane.client() as c:
        version = register(c, trained_model, model_id)
        d = c.evaluate_gate(model_id, version, "staging")
        assert d.passed and d.policy == "" and not d.results and d.evaluation == ""
        assert [x.name for x in c.list_gate_decisions(model_id, version)] == [d.name]
        events = [e.action for e in c.audit_events(resource=d.name)]
        c.create_policy(unique("p"), target="production", rules=[RISK_RULE])
    assert events == ["EvaluateGate"]
    # The CLI passes it too, but says on stderr that nothing was checked, naming the
    # governed target a misspelt one was probably meant to be.
    code, out, err = cli(
        controlplane, capsys, "gate", model_id, str(version), "--target", "prodution"
    )
    assert code == 0 and json.loads(out)["passed"] is True
    (warning,) = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert "no policy governs target 'prodution'" in warning
    assert "passes whatever the version's evidence" in warning
    assert "did you mean 'production'?" in warning


def test_gate_cli_exit_codes_and_rule_values(
    controlplane: RunningControlPlane,
    trained_model: TrainedModel,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model_id, version, auc = evaluated(controlplane, trained_model)
    code, _, _ = cli(
        controlplane,
        capsys,
        "policies",
        "create",
        "g",
        "--target",
        "production",
        "--rule",
        "metrics.roc_auc >= 0.5",
        "--rule",
        RISK_RULE,
    )
    assert code == 0
    code, out, _ = cli(
        controlplane, capsys, "gate", model_id, str(version), "--target", "production"
    )
    doc = json.loads(out)
    assert code == 1 and doc["passed"] is False
    assert doc["results"][0]["values"]["metrics.roc_auc"] == pytest.approx(auc)
    assert doc["results"][1]["outcome"] == "failed"
    code, _, err = cli(
        controlplane,
        capsys,
        "approve",
        model_id,
        str(version),
        "--target",
        "production",
        roles="risk",
    )
    assert code == 3 and "SELF_APPROVAL" in err
    code, out, _ = cli(
        controlplane,
        capsys,
        "approve",
        model_id,
        str(version),
        "--target",
        "production",
        "--comment",
        "ok",
        who="dana",
        roles="risk,audit",
    )
    assert code == 0 and json.loads(out)["roles"] == ["audit", "risk"]
    capsys.readouterr()
    code = main(
        ["--server", controlplane.address, "gate", model_id, str(version), "--target", "production"]
    )
    table = capsys.readouterr().out
    assert code == 0 and "PASSED" in table and "metrics.roc_auc" in table
    code, _, err = cli(controlplane, capsys, "alias", "set", model_id, "production", str(version))
    assert code == 0, err


def test_signatures_verify_and_tampering_is_detected(
    controlplane: RunningControlPlane,
    trained_model: TrainedModel,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model_id, version, _ = evaluated(controlplane, trained_model)
    with controlplane.client("alice") as alice:
        alice.create_policy("p", target="production", rules=[RISK_RULE])
    with controlplane.client("erin") as erin:
        erin.with_roles(["risk"]).approve(model_id, version, "production", comment="signed")
        assert erin.evaluate_gate(model_id, version, "production").passed
        result = erin.verify_version(model_id, version)
    assert result.ok and len(result.checks) == 2
    code, out, _ = cli(controlplane, capsys, "versions", "verify", model_id, str(version))
    assert code == 0 and json.loads(out)["ok"] is True
    db = controlplane.db_url.removeprefix("sqlite:///")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE approvals SET comment = 'forged', approver = 'mallory'")
    code, out, _ = cli(controlplane, capsys, "versions", "verify", model_id, str(version))
    doc = json.loads(out)
    assert code == 1 and doc["ok"] is False
    bad = [c for c in doc["checks"] if not c["ok"]]
    assert len(bad) == 1 and "/approvals/" in bad[0]["resource"]
    assert "signature does not match" in bad[0]["message"]
    with controlplane.client("erin") as erin:
        # A forged approval no longer counts for the gate.
        assert not erin.evaluate_gate(model_id, version, "production").passed
        card = erin.model_card(model_id, version, format="json").content
    forged = json.loads(card)["approvals"][0]
    # Shown with its failed signature, and not as current: the gate does not count it.
    assert "INVALID" in forged["signature"] and forged["current"] is False
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE evaluations SET report = json_set(report, '$.rows', 1)")
    code, out, _ = cli(controlplane, capsys, "versions", "verify", model_id, str(version))
    assert code == 1
    assert any("report does not match" in c["message"] for c in json.loads(out)["checks"])


def test_keys_show_prints_the_server_key(
    controlplane: RunningControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    path = controlplane.artifact_root / "keys" / "signing-key.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    expected = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    code, out, _ = cli(controlplane, capsys, "keys", "show")
    doc = json.loads(out)
    assert code == 0 and doc["pem"] == expected and doc["algorithm"] == "Ed25519"
    capsys.readouterr()
    assert main(["--server", controlplane.address, "keys", "show"]) == 0
    assert expected in capsys.readouterr().out


def test_bad_gate_and_approval_requests(
    controlplane: RunningControlPlane, trained_model: TrainedModel, tmp_path: Path
) -> None:
    model_id = unique()
    with controlplane.client("alice") as alice:
        version = register(alice, trained_model, model_id)
        alice.create_policy(unique("p"), target="production", rules=["true"])
    with controlplane.client("bob") as c:
        c.with_roles(["risk"])
        with pytest.raises(InvalidArgument) as decision:
            c.approve(model_id, version, "production", decision="maybe")
        assert decision.value.reason == "INVALID_DECISION"
        with pytest.raises(NotFound) as missing:
            c.approve(model_id, 42, "production")
        assert missing.value.reason == "VERSION_NOT_FOUND"
        with pytest.raises(InvalidArgument) as target:
            c.approve(model_id, version, "Not A Target")
        assert target.value.reason in ("INVALID_TARGET", "INVALID_NAME")
        with pytest.raises(InvalidArgument):
            c.approve(model_id, version, "")
        with pytest.raises(NotFound):
            c.evaluate_gate("nobody", 1, "production")
        with pytest.raises(InvalidArgument):
            c.evaluate_gate(model_id, version, "deployments/")
        with pytest.raises(InvalidArgument):
            c.approve(model_id, "@champion", "production")
        with pytest.raises(NotFound):
            c.verify_version(model_id, 9)
        with pytest.raises(NotFound):
            c.list_approvals("nobody", 1)
        rejected = c.approve(model_id, version, "production", decision="reject", comment="no")
        assert rejected.decision == "reject"
        assert c.list_approvals(model_id, version)[0].name == rejected.name


def test_gate_and_approval_on_each_backend(
    controlplane_any: RunningControlPlane, trained_model: TrainedModel
) -> None:
    model_id, version, _ = evaluated(controlplane_any, trained_model)
    target, policy = unique("prod"), unique("p")
    with controlplane_any.client("alice") as alice:
        alice.create_policy(policy, target=target, rules=["metrics.roc_auc >= 0.5", RISK_RULE])
        assert not alice.evaluate_gate(model_id, version, target).passed
    with controlplane_any.client("rita") as rita:
        rita.with_roles(["risk"]).approve(model_id, version, target)
        assert rita.evaluate_gate(model_id, version, target).passed
        rita.set_alias(model_id, target, version)
        assert rita.verify_version(model_id, version).ok
        # A description change keeps the revision, and the decision stands.
        assert rita.update_policy(policy, description="revised").revision == 1
        rita.set_alias(model_id, target, version, reason="again")
        rita.update_policy(policy, rules=["metrics.roc_auc >= 0.6", RISK_RULE])
        with pytest.raises(FailedPrecondition):
            rita.set_alias(model_id, target, version)
        assert rita.get_policy(policy, revision=1).description == ""


def test_signing_key_setting_is_used(tmp_path: Path) -> None:
    from controlplane.audit import key_id, load_or_create_signing_key
    from tests.controlplane.conftest import start_controlplane

    path = tmp_path / "elsewhere" / "key.pem"
    expected = key_id(load_or_create_signing_key(path))
    cp = start_controlplane(tmp_path, f"sqlite:///{tmp_path / 'cp.db'}", signing_key=str(path))
    try:
        with cp.client() as c:
            assert c.public_key().key_id == expected
    finally:
        cp.handle.stop(0)
    assert not (tmp_path / "artifacts" / "keys").exists()
