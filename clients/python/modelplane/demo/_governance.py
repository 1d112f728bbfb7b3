"""The demo's governance step: policy, server-side evaluation, gate, approvals."""

from __future__ import annotations

from typing import Any

from modelplane.demo._console import MODEL, STATE, note, say
from modelplane.demo._training import Trained


def govern(address: str, alice: Any, trained: Trained, version: int) -> None:
    """A release policy, an evaluation of ``version`` on the server, its gate before and
    after an approval by a second principal, and the governed alias move."""
    from modelplane import Client, PermissionDenied

    say("Governance: a release policy for the production alias (as ops-admin)")
    rules = [
        "metrics.roc_auc >= 0.95",
        'evaluation.dataset_role == "holdout"',
        'approvals.exists(a, "risk" in a.roles && a.decision == "approve")',
    ]
    with Client(address, principal="ops-admin") as admin:
        admin.create_policy("production-release", target="production", rules=rules)
    for rule in rules:
        note(f"rule: {rule}")

    say(f"Evaluating v{version} on the holdout data, on the server (as alice)")
    op = alice.evaluate(MODEL, version, trained.holdout, label="diagnosis")
    evaluation = alice.operation_result(op)
    shown = ("roc_auc", "accuracy", "f1", "log_loss", "ece")
    note(", ".join(f"{k} {evaluation.metrics[k]:.4f}" for k in shown if k in evaluation.metrics))
    note(f"{evaluation.name} (operation {op.name})")

    say("Gate for production before any approval")
    decision = alice.evaluate_gate(MODEL, version, "production")
    for r in decision.results:
        note(f"[{r.outcome}] {r.expression}")
    note(f"passed: {decision.passed}")

    say("Approvals: the author may not approve her own version; bob (role risk) does")
    try:
        alice.with_roles(["risk"]).approve(MODEL, version, "production", comment="looks good")
    except PermissionDenied as exc:
        note(f"alice refused: {exc.reason}")
    with Client(address, principal="bob") as bob:
        approval = bob.with_roles(["risk"]).approve(
            MODEL, version, "production", comment="holdout metrics reviewed"
        )
    note(f"bob approved, signed by key {approval.key_id[:16]}...")
    decision = alice.evaluate_gate(MODEL, version, "production")
    note(f"gate passed: {decision.passed}")
    alice.set_alias(MODEL, "production", version, reason="gate passed, risk approved")
    note(f"production now: {alice.get_version(MODEL, '@production').name}")
    card = alice.model_card(MODEL, version, format="md")
    path = STATE / "model-card.md"
    path.write_text(card.content)
    note(f"model card: {path}")
