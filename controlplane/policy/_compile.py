"""Compiling CEL rules, with positions in every syntax error."""

from __future__ import annotations

import math
import operator
import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import celpy
import lark
from celpy import celtypes
from celpy.evaluation import CELEvalError, base_functions

from controlplane.policy._limits import (
    BudgetRunner,
    Problem,
    bounded_add,
    calls,
    charged,
    cost_problem,
    function_names,
)
from controlplane.policy._literals import escape_problem
from controlplane.policy._references import Reference, references
from controlplane.policy._references import element_fields as element_fields_of
from modelplane.errors import InvalidArgument

#: The variables a gate policy's rules may read.
POLICY_VARIABLES = (
    "metrics",
    "delta",
    "fairness",
    "validation",
    "evaluation",
    "approvals",
    "labels",
    "lineage",
)
#: The fields of each element of the list variables a gate policy's rules may read.
POLICY_ELEMENT_FIELDS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("approvals",): ("principal", "approver", "roles", "decision", "comment", "time"),
}
#: Longest rule accepted, in characters.
MAX_RULE_LENGTH = 4096
#: Deepest syntax tree a rule may have. The evaluator (and the checks below) recurse once or
#: more per level; at this depth a rule still evaluates with room to spare. A parenthesis, list
#: or call adds about 10 levels, each term of a chain (``a + b + ...``, ``a.b.c``) 1 or 2.
#: Every rule an earlier server without this limit could evaluate (30 nested parentheses) is
#: within it.
MAX_RULE_DEPTH = 350

#: ``float``: celpy's ``-`` and ``*`` of two doubles give a plain float.
_NUMBERS = (celtypes.IntType, celtypes.UintType, celtypes.DoubleType, float)


#: Why comparing NaN is an error (see :func:`_compared`).
NAN_COMPARED = "NaN cannot be compared"


def _number(value: Any) -> int | float | None:
    if isinstance(value, celtypes.BoolType) or not isinstance(value, _NUMBERS):
        return None
    return float(value) if isinstance(value, float) else int(value)


def _compared(x: int | float, y: int | float) -> None:
    """An error when either number is NaN (``double("NaN")``, ``double("inf") -
    double("inf")``): in IEEE 754 every comparison with NaN is false and ``!=`` true, so
    ``!(metrics.accuracy < double("NaN"))`` would pass whatever the accuracy. A metric that
    is NaN reaches rules as null (see :mod:`._convert`); a NaN made in the rule errs."""
    if (isinstance(x, float) and math.isnan(x)) or (isinstance(y, float) and math.isnan(y)):
        raise TypeError(NAN_COMPARED)


def _key(key: Any) -> Any:
    """A map key as equality sees it: ``1``, ``1u`` and ``1.0`` alike."""
    number = _number(key)
    return number if number is not None else (type(key), key)


def _equal(a: Any, b: Any) -> bool:
    """CEL's equality: numbers across int, uint and double; null equal to null only; lists and
    maps element by element, with this same equality. Other values of different types raise
    ``TypeError`` as celpy does (the rule errs)."""
    x, y = _number(a), _number(b)
    if x is not None and y is not None:
        _compared(x, y)
        return x == y
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(i, j) for i, j in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        if len(a) != len(b):
            return False
        other = {_key(k): v for k, v in b.items()}
        missing = object()
        return all(
            (v := other.get(_key(k), missing)) is not missing and _equal(value, v)
            for k, value in a.items()
        )
    return bool(base_functions["_==_"](a, b))


def _error(a: Any, b: Any) -> CELEvalError | None:
    """An operand that is an error already (``1 / 0 == 1``): it is the answer."""
    return next((v for v in (a, b) if isinstance(v, CELEvalError)), None)


def _eq(a: Any, b: Any) -> Any:
    error = _error(a, b)
    return error if error is not None else celtypes.BoolType(_equal(a, b))


def _ne(a: Any, b: Any) -> Any:
    error = _error(a, b)
    return error if error is not None else celtypes.BoolType(not _equal(a, b))


def _in(item: Any, container: Any) -> Any:
    if _error(item, container) is not None or not isinstance(container, list):
        return base_functions["_in_"](item, container)
    # As celpy does: elements of another type are skipped, but if none matched, the error
    # of the first is the answer.
    error: TypeError | None = None
    for element in container:
        try:
            if _equal(item, element):
                return celtypes.BoolType(True)
        except TypeError as exc:
            error = error or exc
    if error is not None:
        raise error
    return celtypes.BoolType(False)


def _ordering(name: str, compare: Any) -> Any:
    """``name`` (``_<_``...) comparing numbers across int, uint and double."""
    base = base_functions[name]

    def ordered(a: Any, b: Any) -> Any:
        x, y = _number(a), _number(b)
        if x is not None and y is not None:
            _compared(x, y)
            return celtypes.BoolType(compare(x, y))
        return base(a, b)

    ordered.__name__ = f"ordered{name}"
    return ordered


#: Why ``0.0 / 0.0`` is an error (see :func:`_divide`).
UNDEFINED_QUOTIENT = "0.0 / 0.0 is undefined"


def _divide(a: Any, b: Any) -> Any:
    """``/``, but ``0.0 / 0.0`` is an error rather than a number (NaN in IEEE 754, +inf in
    celpy): either compares false with 2.0, so a ratio rule such as
    ``candidate.error_rate / champion.error_rate <= 2.0`` would evaluate to false whenever
    both rates are 0 (and roll a healthy candidate back). Any other double over 0.0 is
    infinite with IEEE 754's sign (celpy's is always +inf); ints and uints divide as in celpy
    (by 0, an error). Operands of two number types are a type error, as CEL defines (celpy
    would floor-divide an int by a double: ``int(x) / 100.0`` gave 0 for 70)."""
    _same_number_type(a, b)
    if isinstance(a, celtypes.DoubleType) and isinstance(b, celtypes.DoubleType) and b == 0.0:
        if a == 0.0:
            raise ZeroDivisionError(UNDEFINED_QUOTIENT)
        return celtypes.DoubleType(math.copysign(math.inf, b) * a)
    return operator.truediv(a, b)


_NUMBER_TYPES = (celtypes.IntType, celtypes.UintType, celtypes.DoubleType)


def _same_number_type(a: Any, b: Any) -> None:
    """TypeError (CEL's "no matching overload") for numbers of two types: CEL converts none
    implicitly in arithmetic."""
    numbers = isinstance(a, _NUMBER_TYPES) and isinstance(b, _NUMBER_TYPES)
    if numbers and type(a) is not type(b):
        raise TypeError(f"no such overload: {type(a).__name__} and {type(b).__name__}")


def _modulo(a: Any, b: Any) -> Any:
    """``%``, with operands of one number type only (see :func:`_divide`)."""
    _same_number_type(a, b)
    return base_functions["_%_"](a, b)


#: Numbers compare and equal across int, uint and double, as the current CEL specification
#: defines; null is equal to null only, lists and maps element by element; ``+`` is bounded;
#: ``0.0 / 0.0`` is an error.
_FUNCTIONS: dict[str, Any] = {
    "_==_": _eq,
    "_!=_": _ne,
    "_in_": _in,
    "_<_": _ordering("_<_", operator.lt),
    "_<=_": _ordering("_<=_", operator.le),
    "_>_": _ordering("_>_", operator.gt),
    "_>=_": _ordering("_>=_", operator.ge),
    "_+_": bounded_add(base_functions["_+_"]),
    "_/_": _divide,
    "_%_": _modulo,
}
#: The functions and methods a rule may call.
FUNCTION_NAMES = function_names(_FUNCTIONS)
#: The operators, functions and methods rules run with, by name, without the charging of
#: evaluation steps (the checks of :mod:`controlplane.policy._check` apply them outside any
#: evaluation).
RULE_FUNCTIONS: dict[str, Any] = {**base_functions, **_FUNCTIONS}
#: Operators that read into their operands (``+`` charges what it builds itself).
_CHARGED = frozenset({"_==_", "_!=_", "_in_", "_<_", "_<=_", "_>_", "_>=_"})
#: What rules run with: these operators charge the size of their operands to the evaluation's
#: budget (see :func:`controlplane.policy._limits.charged`).
_PROGRAM_FUNCTIONS = {
    name: charged(function) if name in _CHARGED else function
    for name, function in RULE_FUNCTIONS.items()
}
_CALLABLE = (
    ", ".join(sorted(n for n in FUNCTION_NAMES if not n.startswith("get")))
    + ", the get... methods of timestamps and durations (getFullYear, getHours...), and the "
    "macros all, exists, exists_one, map, filter and has"
)

_lock = threading.Lock()
_environment: celpy.Environment | None = None


def _env() -> celpy.Environment:
    # Built on first use: the constructor raises the interpreter's recursion limit.
    global _environment
    if _environment is None:
        _environment = celpy.Environment(runner_class=BudgetRunner)
    return _environment


@dataclass(frozen=True, eq=False)
class CompiledRule:
    """A parsed rule, ready to evaluate many times; ``refs`` are the paths it reads."""

    expression: str
    index: int
    refs: tuple[Reference, ...]
    program: celpy.Runner
    ast: lark.Tree

    @property
    def references(self) -> tuple[str, ...]:
        """The variable paths the rule reads, written the CEL way."""
        return tuple(r.text for r in self.refs)


def _invalid(index: int, message: str, line: int, column: int) -> InvalidArgument:
    return InvalidArgument(
        f"rule {index}: {message}",
        reason="INVALID_POLICY_RULE",
        metadata={"rule_index": str(index), "line": str(line), "column": str(column)},
    )


def refusal(expression: str, index: int, problem: Problem) -> InvalidArgument:
    """The INVALID_ARGUMENT (``INVALID_POLICY_RULE``) refusing rule ``index`` of a policy for
    ``problem``, with its line and column and the rule's line pointing at them."""
    line, column = problem.line, problem.column
    message = f"{problem.message} at line {line}, column {column}; {problem.hint}"
    return _invalid(index, message + _pointer(expression, line, column), line, column)


#: Characters of a rule's line shown on each side of the column an error points at.
POINTER_CONTEXT = 60


def _pointer(expression: str, line: int, column: int) -> str:
    """The rule's line with a caret under ``column``; a long line is cut to a window around
    it (error messages travel in gRPC metadata, which holds about 16 KiB in all)."""
    lines = expression.splitlines() or [""]
    text = lines[min(max(line, 1), len(lines)) - 1]
    at = max(column - 1, 0)
    start = max(at - POINTER_CONTEXT, 0)
    end = at + POINTER_CONTEXT
    shown = ("…" if start else "") + text[start:end] + ("…" if end < len(text) else "")
    return f"\n  {shown}\n  {' ' * (at - start + (1 if start else 0))}^"


def _too_deep(ast: lark.Tree) -> lark.Tree | None:
    """The first node found below :data:`MAX_RULE_DEPTH` levels, or None (iteratively: a
    tree too deep for recursion is what this looks for)."""
    stack = [(ast, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_RULE_DEPTH:
            return node
        stack.extend((c, depth + 1) for c in node.children if isinstance(c, lark.Tree))
    return None


def compile_rule(
    expression: str,
    *,
    index: int = 0,
    variables: Collection[str] | None = None,
    element_fields: Mapping[tuple[str, ...], Collection[str]] | None = None,
) -> CompiledRule:
    """Parse one CEL rule.

    ``index`` is the rule's position in its policy (for messages). With ``variables``, a rule
    that reads any other top-level name is refused; with ``element_fields`` (list variable →
    the fields of its elements), so is a rule that reads another field of such an element
    through a macro (``approvals.exists(a, a.principl == "x")``). Raises ``InvalidArgument``
    with reason ``INVALID_POLICY_RULE`` and metadata ``rule_index``, ``line`` and ``column``
    (1-based). A rule that calls an unknown function, or whose macros nest too deep or run over
    too many literal elements (see :mod:`controlplane.policy._limits`), is refused too.
    """
    if not isinstance(expression, str) or not expression.strip():
        raise _invalid(index, "the rule is empty; write a CEL expression", 1, 1)
    if len(expression) > MAX_RULE_LENGTH:
        raise _invalid(
            index, f"the rule is {len(expression)} characters long; at most {MAX_RULE_LENGTH}", 1, 1
        )

    def refuse(problem: str, hint: str, line: int, column: int) -> InvalidArgument:
        return refusal(expression, index, Problem(problem, hint, line, column))

    deep_hint = (
        f"its syntax tree may be at most {MAX_RULE_DEPTH} levels deep (a parenthesis, list or "
        "call adds about 10, each term of a chain such as a + b + c 1 or 2); use fewer "
        "parentheses or split the rule into several rules"
    )
    try:
        # The parser is not recursive; the program, and every check after this, are.
        with _lock:
            env = _env()
            ast = env.compile(expression)
        deepest = _too_deep(ast)
        if deepest is not None:
            # Not every node has a position (tokens here have none): the first below it that has.
            placed = (t.meta for t in deepest.iter_subtrees_topdown())
            at = next((m for m in placed if getattr(m, "line", None)), None)
            line, column = (at.line, at.column) if at is not None else (1, 1)
            raise refuse("the rule is nested too deeply", deep_hint, line, column)
        with _lock:
            program = env.program(ast, functions=_PROGRAM_FUNCTIONS)
    except celpy.CELParseError as exc:
        line, column = exc.line or 1, exc.column or 1
        raise _invalid(
            index,
            f"syntax error at line {line}, column {column}" + _pointer(expression, line, column),
            line,
            column,
        ) from None
    except RecursionError:
        raise refuse("the rule is nested too deeply", deep_hint, 1, 1) from None
    refs = references(ast)

    for call in calls(ast):
        if call.name not in FUNCTION_NAMES:
            kind = "method" if call.method else "function"
            raise refuse(
                f"unknown {kind} {call.name!r}",
                f"rules may call {_CALLABLE}",
                call.line,
                call.column,
            )
    problem = escape_problem(ast) or cost_problem(ast)
    if problem is not None:
        raise refuse(problem.message, problem.hint, problem.line, problem.column)
    if variables is not None:
        for ref in refs:
            if ref.path[0] not in variables:
                raise refuse(
                    f"unknown variable {ref.path[0]!r}",
                    f"rules may read {', '.join(variables)}",
                    ref.line,
                    ref.column,
                )
    if element_fields is not None:
        for item in element_fields_of(ast):
            known = element_fields.get(item.items)
            if known is not None and item.field not in known:
                raise refuse(
                    f"{'.'.join(item.items)} elements have no field {item.field!r}",
                    f"they have {', '.join(known)}",
                    item.line,
                    item.column,
                )
    return CompiledRule(expression, index, refs, program, ast)


def compile_rules(
    expressions: Sequence[str],
    *,
    variables: Collection[str] | None = None,
    element_fields: Mapping[tuple[str, ...], Collection[str]] | None = None,
) -> list[CompiledRule]:
    """Compile a policy's rules in order (``index`` is each rule's position)."""
    return [
        compile_rule(e, index=i, variables=variables, element_fields=element_fields)
        for i, e in enumerate(expressions)
    ]
