"""A gate leaves out a standing approval whose signature does not verify (signed by a key the
server no longer has, or its record altered by hand), and the explanation of each rule that
reads ``approvals`` and did not pass names every one left out and why, as ``modelplane gate``
prints it; the decision itself is unchanged. Real control planes on real SQLite files, the CLI,
and approval rows altered with sqlite3."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from modelplane.cli import main
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, TrainedModel, start_controlplane
from tests.controlplane.test_governance_evaluation import register
from tests.controlplane.test_governance_gates import RISK_RULE
from tests.controlplane.test_signing_keys import approved_under_an_old_key

TWO_APPROVALS = 'size(approvals.filter(a, a.decision == "approve")) >= 2'
LABELLED = 'labels.team == "risk"'
NONE_REJECTED = '!approvals.exists(a, a.decision == "reject")'


def _gate_json(
    cp: RunningControlPlane, capsys: pytest.CaptureFixture[str], model_id: str, v: int, t: str
) -> tuple[int, dict[str, Any]]:
    """``modelplane --output json gate``: its exit code and the decision it printed."""
    capsys.readouterr()
    server = ["--server", cp.address, "--as", "ops", "--output", "json"]
    code = main([*server, "gate", model_id, str(v), "--target", t])
    out = capsys.readouterr().out
    return code, json.loads(out)


def _messages(decision: dict[str, Any]) -> list[str]:
    results = decision["results"]
    assert isinstance(results, list)
    return [r["message"] for r in results]


def _alter(db_file: Path, approval_id: str, **values: str) -> None:
    """Change columns of the approval row ``approval_id`` by hand, as an operator with the
    database file could."""
    with sqlite3.connect(db_file) as conn:
        sets = ", ".join(f"{column} = ?" for column in values)
        changed = conn.execute(
            f"UPDATE approvals SET {sets} WHERE id = ?",
            [*values.values(), approval_id],
        )
        assert changed.rowcount == 1


def test_an_approval_signed_by_a_key_the_server_lacks_is_named_in_the_failed_rule(
    tmp_path: Path, trained_model: TrainedModel, capsys: pytest.CaptureFixture[str]
) -> None:
    with (
        approved_under_an_old_key(tmp_path, trained_model) as (cp, made),
        cp.client("rita") as rita,
    ):
        assert rita.evaluate_gate(made.model_id, made.version, made.target).passed
    # Restarted with a new key and without --verification-keys: rita's approval stands on the
    # evidence but its signature cannot be checked, so it does not count.
    cp = start_controlplane(tmp_path, made.db, signing_key=str(made.new_key))
    try:
        code, decision = _gate_json(cp, capsys, made.model_id, made.version, made.target)
        assert code == 1 and decision["passed"] is False
        (message,) = _messages(decision)
        assert message.startswith("evaluated to false")
        assert (
            f"approval {made.approval.name} by rita (approve, roles risk) not counted: signed "
            f"by key {made.old_id}, not this server's key {made.new_id}" in message
        )
        assert "--verification-keys" in message
        # `versions verify` lists the same approval, failing for the same reason.
        with cp.client("rita") as rita:
            checks = {
                c.resource: c for c in rita.verify_version(made.model_id, made.version).checks
            }
        check = checks[made.approval.name]
        assert not check.ok and check.message in message
        # The table `modelplane gate` prints carries it too.
        capsys.readouterr()
        server = ["--server", cp.address, "--as", "ops"]
        code = main([*server, "gate", made.model_id, str(made.version), "--target", made.target])
        out = capsys.readouterr().out
        assert code == 1 and "not counted" in out and made.old_id in out
    finally:
        cp.handle.stop(0)


def test_an_altered_approval_is_named_in_each_failed_rule_that_reads_approvals(
    tmp_path: Path, trained_model: TrainedModel, capsys: pytest.CaptureFixture[str]
) -> None:
    db_file = tmp_path / "cp.db"
    cp = start_controlplane(tmp_path, f"sqlite:///{db_file}")
    try:
        model_id, target = unique(), unique("prod")
        with cp.client("alice") as alice:
            version = register(alice, trained_model, model_id)
            alice.create_policy(
                unique("p"), target=target, rules=[RISK_RULE, TWO_APPROVALS, LABELLED, "true"]
            )
        with cp.client("bob") as bob:
            approval = bob.with_roles(["risk", "ml"]).approve(model_id, version, target)
        code, before = _gate_json(cp, capsys, model_id, version, target)
        # Rule 2 fails with bob's approval counted: nothing is left out, nothing is said.
        assert code == 1 and [r["outcome"] for r in before["results"]] == [
            "passed",
            "failed",
            "error",
            "passed",
        ]
        assert "not counted" not in json.dumps(before)

        # The comment edited by hand: the signature no longer matches the record.
        _alter(db_file, approval.name.rpartition("/")[2], comment="edited by hand")
        code, after = _gate_json(cp, capsys, model_id, version, target)
        assert code == 1 and after["passed"] is False
        outcomes = [r["outcome"] for r in after["results"]]
        assert outcomes == ["failed", "failed", "error", "passed"]
        why = (
            f"approval {approval.name} by bob (approve, roles ml, risk) not counted: the "
            "signature does not match the record (record altered)"
        )
        risk, two, labelled, true = _messages(after)
        assert risk == f"evaluated to false; {why}"
        assert two == f"evaluated to false; {why}"
        # A rule that does not read approvals, or that passed, is not explained by them.
        assert "not counted" not in labelled and true == "passed"
        with cp.client("alice") as alice:
            checks = {c.resource: c for c in alice.verify_version(model_id, version).checks}
        assert not checks[approval.name].ok
        assert checks[approval.name].message in risk
    finally:
        cp.handle.stop(0)


def test_a_left_out_reject_and_a_rule_that_errs_name_it_too(
    tmp_path: Path, trained_model: TrainedModel, capsys: pytest.CaptureFixture[str]
) -> None:
    """An approver's latest decision is a reject whose record was altered: it is left out (so
    ``NONE_REJECTED`` passes, as before), and a rule that errs reading ``approvals`` names it."""
    db_file = tmp_path / "cp.db"
    cp = start_controlplane(tmp_path, f"sqlite:///{db_file}")
    try:
        model_id, target = unique(), unique("prod")
        errs = 'approvals[0].decision == "approve"'
        with cp.client("alice") as alice:
            version = register(alice, trained_model, model_id)
            alice.create_policy(unique("p"), target=target, rules=[errs, NONE_REJECTED])
        with cp.client("carol") as carol:
            rejected = carol.approve(model_id, version, target, decision="reject", comment="no")
        _alter(db_file, rejected.name.rpartition("/")[2], roles='["risk"]')
        code, decision = _gate_json(cp, capsys, model_id, version, target)
        assert code == 1
        outcomes = [r["outcome"] for r in decision["results"]]
        assert outcomes == ["error", "passed"]
        first, second = _messages(decision)
        assert first.endswith(
            f"; approval {rejected.name} by carol (reject, roles risk) not counted: the "
            "signature does not match the record (record altered)"
        )
        assert second == "passed"
    finally:
        cp.handle.stop(0)


def test_a_passed_decision_whose_approvals_no_longer_verify_does_not_move_the_alias(
    tmp_path: Path, trained_model: TrainedModel
) -> None:
    """The decision's digest covers the approvals as recorded, which a key change leaves
    as they were: the alias must still not move on approvals this server can no longer
    verify. A decision that counted none of them (no approval needed) still stands."""
    from modelplane.errors import FailedPrecondition

    with (
        approved_under_an_old_key(tmp_path, trained_model) as (cp, made),
        cp.client("rita") as rita,
    ):
        assert rita.evaluate_gate(made.model_id, made.version, made.target).passed
        open_target = unique("open")
        rita.create_policy(unique("p"), target=open_target, rules=["true"])
        assert rita.evaluate_gate(made.model_id, made.version, open_target).passed
    cp = start_controlplane(tmp_path, made.db, signing_key=str(made.new_key))
    try:
        with cp.client("ops") as ops:
            with pytest.raises(FailedPrecondition) as refused:
                ops.set_alias(made.model_id, made.target, made.version)
            error = refused.value
            assert error.reason == "GATE_FAILED"
            assert "counted approvals that no longer count" in error.message
            assert f"approval {made.approval.name} by rita" in error.message
            assert f"signed by key {made.old_id}" in error.message
            assert ops.get_model(made.model_id) is not None
            # The open target counted no approval: its decision stands.
            ops.set_alias(made.model_id, open_target, made.version)
    finally:
        cp.handle.stop(0)
    # With the old key's public half given as a verification key, the decision stands again.
    from cryptography.hazmat.primitives import serialization

    from controlplane.audit import load_or_create_signing_key

    public = load_or_create_signing_key(tmp_path / "old.pem").public_key()
    (made.retired / "old.pem").write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    cp = start_controlplane(
        tmp_path, made.db, signing_key=str(made.new_key), verification_keys=str(made.retired)
    )
    try:
        with cp.client("ops") as ops:
            ops.set_alias(made.model_id, made.target, made.version)
    finally:
        cp.handle.stop(0)
