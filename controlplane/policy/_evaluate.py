"""Evaluating rules: each rule gets its own outcome, message and the values it read."""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import lark
from celpy import celtypes
from celpy.evaluation import CELEvalError, CELSyntaxError, CELUnsupportedError

from controlplane.policy._compile import NAN_COMPARED, UNDEFINED_QUOTIENT, CompiledRule
from controlplane.policy._convert import to_cel, to_plain
from controlplane.policy._limits import (
    MAX_POLICY_SECONDS,
    BudgetExceeded,
    calls,
    policy_deadline,
)


class Outcome(enum.StrEnum):
    """How one rule came out. Only ``passed`` lets a decision pass."""

    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"


@dataclass(frozen=True)
class RuleResult:
    """One rule's outcome, a message for a person, and the values the rule read.

    ``values`` maps each path the rule reads (``metrics.roc_auc``) to its input value (numbers
    as floats, datetimes as ISO text); ``missing`` lists the paths that were absent.
    """

    index: int
    expression: str
    outcome: Outcome
    message: str
    values: dict[str, Any] = field(default_factory=dict)
    missing: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.outcome is Outcome.PASSED

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "index": self.index,
            "expression": self.expression,
            "outcome": self.outcome.value,
            "message": self.message,
            "values": self.values,
            "missing": list(self.missing),
        }


@dataclass(frozen=True)
class Decision:
    """The rules ANDed: ``allowed`` when every rule passed; ``results`` in rule order."""

    allowed: bool
    results: tuple[RuleResult, ...]

    @property
    def failures(self) -> tuple[RuleResult, ...]:
        """The rules that failed or could not be evaluated."""
        return tuple(r for r in self.results if not r.passed)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {"allowed": self.allowed, "results": [r.to_dict() for r in self.results]}


_MISSING = object()
_TYPE_NAMES = {
    "BoolType": "bool",
    "BytesType": "bytes",
    "DoubleType": "double",
    "DurationType": "duration",
    "IntType": "int",
    "ListType": "list",
    "MapType": "map",
    "NoneType": "null",
    "StringType": "string",
    "TimestampType": "timestamp",
    "UintType": "uint",
}
_CLASS_REPR = re.compile(r"<class '(?:[\w.]*\.)?(\w+)'>")


def _lookup(variables: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = variables
    for part in path:
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _source(rule: CompiledRule, tree: Any) -> str:
    meta = getattr(tree, "meta", None)
    start, end = getattr(meta, "start_pos", None), getattr(meta, "end_pos", None)
    if isinstance(tree, lark.Tree) and start is not None and end is not None:
        return rule.expression[start:end]
    return ""


def _cel_type(value: Any) -> str:
    return _TYPE_NAMES.get(type(value).__name__, type(value).__name__)


#: celpy's repr of a value in an error's details: ``StringType('1')`` → ``'1'``.
_CEL_VALUE = re.compile(r"\b[A-Z][A-Za-z]*Type\(([^()]*)\)")


def _explain(rule: CompiledRule, err: CELEvalError, variables: Mapping[str, Any]) -> str:
    text, kind, details = [*err.args, None, None, None][:3]
    where = f"line {err.line}, column {err.column}" if err.line else "the rule"
    source = _source(rule, err.tree)
    at = f" in {source}" if source else ""
    text = str(text)
    if kind is KeyError and text.startswith("undeclared reference"):
        name = text.split("'")[1] if "'" in text else text
        if any(c.name == name for c in calls(rule.ast)):
            return f"unknown function {name!r} at {where}"
        known = ", ".join(sorted(variables)) or "none"
        return f"unknown variable {name!r} at {where}; the variables are: {known}"
    if kind is KeyError:
        key = details[0] if isinstance(details, tuple) and details else text.rpartition(": ")[2]
        key = key.strip("'") if isinstance(key, str) else key
        return f"no such key {str(key)!r}{at} (at {where})"
    if kind is ZeroDivisionError:
        if details == (UNDEFINED_QUOTIENT,):
            return f"{UNDEFINED_QUOTIENT}{at} (at {where})"
        return f"division by zero{at} (at {where})"
    if text in ("return error for overflow", "match error") and isinstance(details, tuple):
        # celpy's words for any failure of a conversion or of matches(): the cause is in the
        # details ("Invalid duration StringType('1')", "missing ): (").
        detail = details[0] if details else ""
        detail = detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)
        detail = _CEL_VALUE.sub(r"\1", detail)
        what = "invalid regular expression" if text == "match error" else "invalid value"
        return f"{what}{at} (at {where}): {detail}"
    if kind is TypeError and details == (NAN_COMPARED,):
        return (
            f"{NAN_COMPARED}{at} (at {where}): every comparison with NaN is false; compare "
            "with a number"
        )
    if kind is TypeError:
        message = _CLASS_REPR.sub(lambda m: _TYPE_NAMES.get(m.group(1), m.group(1)), text)
        message = message.replace("found no matching overload for", "no operator")
        message = re.sub(r"Token\('RULE', '(\w+)'\)", r"\1", message)
        hint = ""
        if "int" in message and "double" in message:
            hint = "; arithmetic needs operands of one type: write 1.0, not 1"
        return f"type error{at} (at {where}): {message}{hint}"
    return f"{_CLASS_REPR.sub(lambda m: m.group(1), text)}{at} (at {where})"


def _evaluate_one(
    rule: CompiledRule, activation: Mapping[str, Any], variables: Mapping[str, Any]
) -> RuleResult:
    values: dict[str, Any] = {}
    missing: list[str] = []
    for ref in rule.refs:
        value = _lookup(variables, ref.path)
        if value is _MISSING:
            missing.append(ref.text)
        else:
            values[ref.text] = to_plain(value)

    def result(outcome: Outcome, message: str) -> RuleResult:
        return RuleResult(rule.index, rule.expression, outcome, message, values, tuple(missing))

    unknown = next((r for r in rule.refs if r.path[0] not in variables), None)
    if unknown is not None:
        known = ", ".join(sorted(variables)) or "none"
        return result(
            Outcome.ERROR,
            f"unknown variable {unknown.path[0]!r} at line {unknown.line}, column "
            f"{unknown.column}; the variables are: {known}",
        )
    try:
        value = rule.program.evaluate(dict(activation))
    except CELEvalError as err:
        return result(Outcome.ERROR, _explain(rule, err, variables))
    except (CELSyntaxError, CELUnsupportedError) as err:
        return result(Outcome.ERROR, f"the rule cannot be evaluated: {err.args[0]}")
    except RecursionError:
        return result(Outcome.ERROR, "the rule recursed too deeply")
    except OverflowError as err:
        # celpy lets this one through: int() or uint() of an infinite double (x / 0.0).
        return result(
            Outcome.ERROR,
            f"a number is out of range: {err} (an int() or uint() of an infinite double, such "
            "as the result of dividing by 0.0?)",
        )
    except BudgetExceeded as err:
        return result(
            Outcome.ERROR,
            f"the rule did too much work and was stopped: {err} for these inputs; write it "
            "with fewer or shallower macros, over smaller values",
        )
    if isinstance(value, CELEvalError):
        return result(Outcome.ERROR, _explain(rule, value, variables))
    if not isinstance(value, celtypes.BoolType):
        return result(Outcome.ERROR, f"the rule must yield a bool; it yielded a {_cel_type(value)}")
    if value:
        return result(Outcome.PASSED, "passed")
    shown = ", ".join(f"{k}={v!r}" for k, v in values.items() if not isinstance(v, list | dict))
    return result(Outcome.FAILED, "evaluated to false" + (f" with {shown}" if shown else ""))


def evaluate_rules(rules: Iterable[CompiledRule], variables: Mapping[str, Any]) -> Decision:
    """Evaluate every rule against ``variables`` (name → Python value).

    The rules are ANDed, but each is evaluated and reported on its own: a rule that errs (a
    missing key, a type mismatch) is reported with outcome ``error`` and a message, and counts
    as not passed; it never raises. Values are converted by :func:`to_cel` (numbers as
    doubles). Raises ``InvalidArgument`` (``INVALID_POLICY_INPUT``) only for an input value
    that has no CEL form. Each rule's evaluation is bounded (see
    :mod:`controlplane.policy._limits`), and all of them together stop after
    :data:`MAX_POLICY_SECONDS`: a rule stopped so has outcome ``error``.
    """
    activation = {name: to_cel(value, name) for name, value in variables.items()}
    with policy_deadline(MAX_POLICY_SECONDS):
        results = tuple(_evaluate_one(rule, activation, variables) for rule in rules)
    return Decision(all(r.passed for r in results), results)
