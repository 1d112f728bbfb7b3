"""Model cards: what a version is for, where it came from, how it measured, and who let it
through, gathered from the registry and rendered as Markdown, HTML or JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controlplane.audit import key_id as key_id_of
from controlplane.audit._canonical import plain
from controlplane.services.evidence import (
    GateInputs,
    check_approval,
    decision_stands,
    gate_inputs,
)
from controlplane.services.gates import counted_approvals, not_comparable
from controlplane.services.governance_names import parse_version_number
from controlplane.services.model_card_render import render_html, render_markdown
from controlplane.services.models import require_model
from controlplane.services.versions import resolve_version
from controlplane.store import Store
from controlplane.store.convert import lineage_to_json
from controlplane.store.governance_repos import Governance
from modelplane.errors import InvalidArgument

FORMATS = {"md": "text/markdown", "html": "text/html", "json": "application/json"}


@dataclass(frozen=True)
class ModelCard:
    """A rendered card."""

    name: str
    format: str
    media_type: str
    content: str


class ModelCardService:
    """Builds model cards."""

    def __init__(self, store: Store, key: Ed25519PrivateKey) -> None:
        self.store = store
        self.key = key
        self.key_id = key_id_of(key)

    def card_data(self, name: str) -> dict[str, Any]:
        """Everything the card shows, as JSON-ready data."""
        model_id, number, alias = parse_version_number(name, allow_alias=True)
        with self.store.read() as tx:
            model = require_model(tx, model_id)
            version = resolve_version(tx, model_id, number, alias)
            number = version.version
            gov = Governance(tx.session)
            latest = gov.latest_evaluation(model_id, number)
            newest = {d.target: d for d in gov.latest_decisions(model_id, number)}
            approvals = gov.approvals(model_id, number)
            targets = set(newest) | {a.target for a in approvals}
            inputs: dict[str, GateInputs] = {t: gate_inputs(tx, version, t) for t in targets}
            current = {t: decision_stands(tx, d, inputs[t]) for t, d in newest.items()}
            earlier = {
                t: not current[t] and not_comparable(d, inputs[t]) for t, d in newest.items()
            }
        # Current as a gate counts it: standing on the evidence as it is now, and validly
        # signed (a record altered in the database is shown, never as current).
        standing = {a.id for i in inputs.values() for a in counted_approvals(self.key, i.approvals)}
        evaluation = None
        if latest is not None:
            report = latest.report
            evaluation = {
                "name": latest.name,
                "dataset_sha256": latest.dataset_sha256,
                "dataset_role": latest.dataset_role,
                "label": latest.label,
                "rows": report.get("rows"),
                "task": report.get("task"),
                "time": latest.create_time,
                "metrics": report.get("metrics") or {},
                "compared_version": latest.compared_version,
                "deltas": latest.deltas,
                "slices": report.get("slices") or {},
                "fairness": report.get("fairness") or {},
                "validation": report.get("validation"),
            }
        card = {
            "model": {
                "name": model.name,
                "description": model.description,
                "intended_use": model.intended_use,
                "limitations": model.limitations,
                "labels": model.labels,
            },
            "version": {
                "name": version.name,
                "description": version.description,
                "state": version.state.value,
                "artifact_sha256": version.artifact.sha256,
                "feature_names": version.feature_names,
                "label_column": version.label_column,
                "labels": version.labels,
                "aliases": version.aliases,
                "created_by": version.created_by,
                "create_time": version.create_time,
            },
            "lineage": lineage_to_json(version.lineage),
            "evaluation": evaluation,
            "gate_decisions": [
                {
                    "name": d.name,
                    "target": d.target,
                    "policy": d.policy,
                    "policy_revision": d.policy_revision,
                    "passed": d.passed,
                    "current": current[d.target],
                    "made_by_earlier_release": earlier[d.target],
                    "evaluation": d.evaluation,
                    "time": d.create_time,
                    "rules": [
                        {
                            "expression": r["expression"],
                            "outcome": r["outcome"],
                            "message": r["message"],
                        }
                        for r in d.results
                    ],
                }
                for d in sorted(newest.values(), key=lambda d: d.target)
            ],
            "approvals": [
                {
                    "name": a.name,
                    "target": a.target,
                    "decision": a.decision,
                    "approver": a.approver,
                    "roles": a.roles,
                    "comment": a.comment,
                    "time": a.create_time,
                    "current": a.id in standing,
                    "signature": _signature_status(self.key, self.key_id, a),
                }
                for a in approvals
            ],
        }
        return plain(card)  # type: ignore[no-any-return]

    def card(self, name: str, fmt: str = "md") -> ModelCard:
        """The card of a version in ``md``, ``html`` or ``json``."""
        fmt = fmt or "md"
        if fmt not in FORMATS:
            raise InvalidArgument(
                f"format {fmt[:20]!r} is not supported; use md, html or json",
                reason="INVALID_FORMAT",
            )
        data = self.card_data(name)
        if fmt == "json":
            content = json.dumps(data, indent=2, sort_keys=True)
        elif fmt == "html":
            content = render_html(data)
        else:
            content = render_markdown(data)
        return ModelCard(data["version"]["name"], fmt, FORMATS[fmt], content)


def _signature_status(key: Ed25519PrivateKey, kid: str, approval: Any) -> str:
    """``valid``, with what :func:`check_approval` notes of a valid signature (``(signed by
    retired key X)``), or ``INVALID:`` and why."""
    ok, message = check_approval(key, kid, approval)
    if ok:
        return "valid" + message.removeprefix("signature valid")
    return f"INVALID: {message}"
