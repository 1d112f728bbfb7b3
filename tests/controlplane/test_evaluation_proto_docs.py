"""The API's description of task detection (``EvaluateRequest.task`` in evaluation.proto, copied
into every generated client) names each part of the rule the evaluation applies
(:mod:`modelplane.output_kinds`): the ops whose output is a probability, the ``prob`` name,
and a label output."""

from __future__ import annotations

import re
from pathlib import Path

from modelplane.output_kinds import PROBABILITY_OPS, column_is_classifier

PROTO = Path(__file__).resolve().parents[2] / "protos" / "modelplane" / "v1" / "evaluation.proto"


def field_comment(proto: str, message: str, declaration: str) -> str:
    """The ``//`` comment lines right above ``declaration`` inside ``message``, joined."""
    body = proto[proto.index(f"message {message} {{") :]
    lines = body[: body.index(declaration)].rstrip().splitlines()
    comment: list[str] = []
    for line in reversed(lines):
        if not line.strip().startswith("//"):
            break
        comment.insert(0, line.strip().removeprefix("//").strip())
    return " ".join(comment)


def test_the_task_comment_states_the_rule_the_evaluation_applies() -> None:
    comment = field_comment(PROTO.read_text(), "EvaluateRequest", "string task = 10;")
    for op in sorted(PROBABILITY_OPS):
        assert column_is_classifier("score", op, [])
        assert op in comment
    assert column_is_classifier("output_prob", "", [])
    assert re.search(r"name contains `prob`", comment)
    assert column_is_classifier("score", "", ["predicted_label"])
    assert re.search(r"contains\s+`label`", comment)
    assert not column_is_classifier("score", "Add", ["count"])
    assert "regressor's prediction otherwise" in comment
