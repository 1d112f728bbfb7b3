"""The one way this package reports bad input, and the warning entries it records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelplane.errors import InvalidArgument


def invalid(reason: str, message: str, **metadata: object) -> InvalidArgument:
    """An ``InvalidArgument`` with an UPPER_SNAKE ``reason`` and short string metadata."""
    return InvalidArgument(
        message, reason=reason, metadata={k: str(v)[:200] for k, v in metadata.items()}
    )


@dataclass(frozen=True)
class EvaluationWarning:
    """Something a reader of the report should know: a metric left undefined, a fallback taken.

    ``code`` is UPPER_SNAKE; ``scope`` says where it applies (``overall``,
    ``slice:<column>=<value>``, ``fairness:<attribute>``, ``model``, or ``compare`` for the
    comparison with another version); ``metric`` names the metric it concerns, or is empty.
    """

    code: str
    message: str
    scope: str = "overall"
    metric: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The warning as a JSON-ready dictionary."""
        return {
            "code": self.code,
            "message": self.message,
            "scope": self.scope,
            "metric": self.metric,
        }
