"""Bounds on what a rule may cost: checked on its syntax tree when it is written, and counted
while it runs.

celpy has no cost budget of its own, and macros (``all``, ``exists``, ``map``...) nested over
list literals multiply: five levels over ten-element lists make 100,000 iterations from 159
characters. So a rule is refused when it is written if its macros nest more than
:data:`MAX_MACRO_NESTING` deep, or if the list and map literals its macros run over would make
more than :data:`MAX_ITERATIONS` iterations; and each evaluation stops after
:data:`MAX_EVALUATION_STEPS` steps, so that a rule over large inputs is bounded too.

A step is a syntax node visited, but an operation on a large value (``in``, ``==``, ``+``,
``matches``, conversions...) is not one step: each call charges the size of the values it is
given (:func:`charged`), one step per element of a list or map, nested ones included, and one
per :data:`CHARS_PER_STEP` characters of a string. ``+`` refuses to build a value over
:data:`MAX_VALUE_SIZE`. A wall-clock deadline backs the count: one evaluation of one rule stops
after :data:`MAX_RULE_SECONDS`, and the rules evaluated under one :func:`policy_deadline`
after :data:`MAX_POLICY_SECONDS` in all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from itertools import chain
from typing import Any

import celpy
import lark
from celpy import celtypes
from celpy.evaluation import Evaluator, base_functions

from controlplane.policy._references import BINDING_MACROS, call_args, unwrap

#: Macros that evaluate their second argument once per element of the receiver.
ITERATING_MACROS = BINDING_MACROS
#: Function-like macros the evaluator handles itself.
CALL_MACROS = frozenset({"has", "dyn"})
#: How deep macros may nest: ``a.all(x, b.exists(y, ...))`` is 2.
MAX_MACRO_NESTING = 2
#: Most iterations the list and map literals of a rule's macros may make (their sizes
#: multiplied along each nesting, summed over the rule).
MAX_ITERATIONS = 1_000
#: Most evaluation steps (syntax nodes visited, macro iterations included) one evaluation of one
#: rule may take (each macro iteration counts :data:`ITERATION_STEPS` more, for the scope it
#: builds); a rule that takes more is reported as an error.
MAX_EVALUATION_STEPS = 50_000
ITERATION_STEPS = 10
#: Longest string that ``+`` may build, and most elements (nested ones included) of a list.
MAX_VALUE_SIZE = 100_000
#: Characters of a string or bytes value that an operation reading it is charged one step for.
CHARS_PER_STEP = 64
#: Longest one evaluation of one rule may run, in seconds: a backstop that the step count
#: reaches first (50,000 steps take under 1 s on a busy 2-core machine), so that whether a rule
#: within its step budget passes never depends on how loaded the server is.
MAX_RULE_SECONDS = 5.0
#: Longest the rules evaluated under one :func:`policy_deadline` may run in all, in seconds.
MAX_POLICY_SECONDS = 15.0


@dataclass(frozen=True)
class Problem:
    """Why a rule is refused, and where (1-based)."""

    message: str
    hint: str
    line: int
    column: int


@dataclass(frozen=True)
class Call:
    """A function or method a rule calls, and where (1-based)."""

    name: str
    method: bool
    line: int
    column: int


def _macro(node: lark.Tree) -> tuple[lark.Tree, list[lark.Tree]] | None:
    """The receiver and arguments of an iterating macro call; None for any other node."""
    if node.data != "member_dot_arg" or str(node.children[1]) not in ITERATING_MACROS:
        return None
    target = node.children[0]
    assert isinstance(target, lark.Tree)
    rest = node.children[2:]
    return target, call_args(rest[0] if rest else None)


def _literal_size(node: lark.Tree) -> int:
    """The number of elements of a list or map literal; 1 for anything else (its size is only
    known when the rule runs, and the evaluation budget bounds it then)."""
    node = unwrap(node)
    if node.data in ("list_lit", "map_lit"):
        for child in node.children:
            if isinstance(child, lark.Tree) and child.data in ("exprlist", "mapinits"):
                count = len([c for c in child.children if isinstance(c, lark.Tree)])
                return count // 2 if child.data == "mapinits" else count
        return 0
    return 1


def _iterations(node: lark.Tree) -> int:
    """How many macro iterations the literals of ``node`` make, at the least."""
    node = unwrap(node)
    macro = _macro(node)
    if macro is not None:
        target, args = macro
        body = sum(_iterations(a) for a in args[1:])
        return _iterations(target) + _literal_size(target) * (1 + body)
    return sum(_iterations(c) for c in node.children if isinstance(c, lark.Tree))


def _deepest(node: lark.Tree, depth: int = 0) -> tuple[int, lark.Tree | None]:
    """The deepest macro nesting under ``node`` and the macro that reaches it."""
    node = unwrap(node)
    macro = _macro(node)
    if macro is not None:
        target, args = macro
        best: tuple[int, lark.Tree | None] = (depth + 1, node)
        for child, level in [(target, depth), *((a, depth + 1) for a in args[1:])]:
            found = _deepest(child, level)
            if found[0] > best[0]:
                best = found
        return best
    best = (depth, None)
    for child in node.children:
        if isinstance(child, lark.Tree):
            found = _deepest(child, depth)
            if found[0] > best[0]:
                best = found
    return best


def cost_problem(ast: lark.Tree) -> Problem | None:
    """Why the rule would cost too much to evaluate, or None."""
    depth, where = _deepest(ast)
    if depth > MAX_MACRO_NESTING and where is not None:
        return Problem(
            f"macros are nested {depth} deep",
            f"at most {MAX_MACRO_NESTING} may nest (each level multiplies the work); "
            "split the rule into several rules",
            where.meta.line,
            where.meta.column,
        )
    iterations = _iterations(ast)
    if iterations > MAX_ITERATIONS:
        return Problem(
            f"the macros over list literals would make {iterations} iterations",
            f"at most {MAX_ITERATIONS}; use shorter lists or fewer nested macros",
            1,
            1,
        )
    return None


def calls(ast: lark.Tree) -> Iterator[Call]:
    """The functions (``size(x)``) and methods (``x.startsWith("a")``) a rule calls, macros
    excluded."""
    for node in ast.iter_subtrees_topdown():
        if node.data == "member_dot_arg":
            name = node.children[1]
            if str(name) not in ITERATING_MACROS:
                yield Call(str(name), True, name.line or 1, name.column or 1)  # type: ignore[union-attr]
        elif node.data == "ident_arg":
            name = node.children[0]
            if str(name) not in CALL_MACROS:
                yield Call(str(name), False, name.line or 1, name.column or 1)  # type: ignore[union-attr]


def function_names(functions: dict[str, Any]) -> frozenset[str]:
    """The names a rule may call: celpy's functions and ``functions``, operators excluded."""
    names = (*base_functions, *functions)
    return frozenset(n for n in names if n.isidentifier() and not n.startswith("_"))


class BudgetExceeded(Exception):
    """An evaluation did too much work: more than :data:`MAX_EVALUATION_STEPS` steps, a value
    over :data:`MAX_VALUE_SIZE`, or longer than its deadline."""


class _Budget:
    """The steps one evaluation of one rule has taken, and when it must stop."""

    __slots__ = ("deadline", "late", "steps")

    def __init__(self, deadline: float, late: str) -> None:
        self.steps = 0
        self.deadline = deadline
        self.late = late

    def charge(self, steps: int) -> None:
        self.steps += steps
        if self.steps > MAX_EVALUATION_STEPS:
            raise BudgetExceeded(f"it took more than {MAX_EVALUATION_STEPS} evaluation steps")
        if time.monotonic() > self.deadline:
            raise BudgetExceeded(self.late)

    def left(self) -> int:
        return MAX_EVALUATION_STEPS - self.steps


_budget: ContextVar[_Budget | None] = ContextVar("policy_budget", default=None)
_policy_deadline: ContextVar[tuple[float, float] | None] = ContextVar(
    "policy_deadline", default=None
)
_END = object()
_TEXT = (str, bytes)
_SEQUENCES = (list, tuple)


def measure(value: Any, limit: int) -> int:
    """The size of ``value`` in steps: one for it, one for each element of a list or map
    (keys and values, nested ones included), one per :data:`CHARS_PER_STEP` characters of a
    string or bytes. Stops counting past ``limit``, so that it costs no more than that."""
    total = 0
    stack: list[Iterator[Any]] = [iter((value,))]
    while stack:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
            continue
        total += 1
        # Tuples of classes, not unions or ABCs: this loop runs once per element.
        if isinstance(item, _SEQUENCES):
            stack.append(iter(item))
        elif isinstance(item, _TEXT):
            total += len(item) // CHARS_PER_STEP
        elif isinstance(item, dict):
            stack.append(chain.from_iterable(item.items()))
        if total > limit:
            break
    return total


#: Functions whose cost does not grow with their arguments: not charged for their size.
FLAT_FUNCTIONS = frozenset({"size", "type", "dyn"})


def _charge(steps: int) -> None:
    budget = _budget.get()
    if budget is not None:
        budget.charge(steps)


def _charge_values(values: tuple[Any, ...]) -> None:
    budget = _budget.get()
    if budget is None:
        return
    for value in values:
        budget.charge(measure(value, budget.left()))


def charged(function: Callable[..., Any]) -> Callable[..., Any]:
    """The operator ``function``, charging the current evaluation the size of its operands
    (see :func:`measure`) before it runs: comparing or searching a value costs in proportion
    to it. (Functions and methods are charged by the evaluator itself.)"""

    def run(*args: Any) -> Any:
        _charge_values(args)
        return function(*args)

    run.__name__ = getattr(function, "__name__", "function")
    return run


def bounded_add(add: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """``+`` that refuses to build a string longer than :data:`MAX_VALUE_SIZE` or a list of
    more elements (nested ones included; repeated ``x + x`` in chained macros doubles a value
    each time), and charges the size of what it builds."""

    def plus(a: Any, b: Any) -> Any:
        # celpy's lists, strings and bytes are Python's; ``+`` of two lists gives a plain list.
        if isinstance(a, list) and isinstance(b, list):
            size = measure(a, MAX_VALUE_SIZE) + measure(b, MAX_VALUE_SIZE)
        elif isinstance(a, str | bytes) and isinstance(b, str | bytes):
            size = len(a) + len(b)
        else:
            _charge_values((a, b))
            return add(a, b)
        if size > MAX_VALUE_SIZE:
            raise BudgetExceeded(f"it built a list or string longer than {MAX_VALUE_SIZE}")
        _charge(size if isinstance(a, list) else 2 + size // CHARS_PER_STEP)
        return add(a, b)

    plus.__name__ = "plus"
    return plus


class _CountingEvaluator(Evaluator):
    """celpy's interpreter, counting the nodes it visits (macro bodies included, as their
    sub-evaluators share the count) and stopping at the budget."""

    def __init__(self, ast: lark.Tree, activation: Any, budget: _Budget) -> None:
        super().__init__(ast, activation=activation)
        self._budget = budget

    def visit(self, tree: lark.Tree) -> Any:
        self._budget.charge(1)
        return super().visit(tree)

    def visit_children(self, tree: lark.Tree) -> list[Any]:
        self._budget.charge(1)
        return super().visit_children(tree)

    def evaluate(self, context: Any = None) -> celtypes.Value:
        if context:  # a macro's iteration: a new scope
            self._budget.charge(ITERATION_STEPS)
        return super().evaluate(context)

    def sub_evaluator(self, ast: lark.Tree) -> Evaluator:
        return _CountingEvaluator(ast, self.activation, self._budget)

    def _charge_values(self, values: Any) -> None:
        if isinstance(values, list | tuple):
            for value in values:
                self._budget.charge(measure(value, self._budget.left()))

    def function_eval(self, name_token: lark.Token, exprlist: Any = None) -> Any:
        # Functions and methods are charged here rather than wrapped in the function table:
        # the table's type names (``double``, ``string``) are values too (``type(x) == int``).
        if name_token.value not in FLAT_FUNCTIONS:
            self._charge_values(exprlist)
        return super().function_eval(name_token, exprlist)

    def method_eval(self, object: Any, method_ident: lark.Token, exprlist: Any = None) -> Any:
        if method_ident.value not in FLAT_FUNCTIONS:
            self._charge_values([object, *(exprlist if isinstance(exprlist, list) else ())])
        return super().method_eval(object, method_ident, exprlist)


@contextmanager
def policy_deadline(seconds: float = MAX_POLICY_SECONDS) -> Iterator[None]:
    """Evaluations in this block stop once ``seconds`` have passed since it began, in all."""
    token = _policy_deadline.set((time.monotonic() + seconds, seconds))
    try:
        yield
    finally:
        _policy_deadline.reset(token)


class BudgetRunner(celpy.InterpretedRunner):
    """A runner whose every evaluation stops after :data:`MAX_EVALUATION_STEPS` steps (the
    size of the values its operations read included) or :data:`MAX_RULE_SECONDS`, or at the
    enclosing :func:`policy_deadline`."""

    def evaluate(self, context: Any) -> celtypes.Value:
        deadline = time.monotonic() + MAX_RULE_SECONDS
        budget = _Budget(deadline, f"it ran longer than {MAX_RULE_SECONDS:g} s")
        shared = _policy_deadline.get()
        if shared is not None and shared[0] < deadline:
            budget = _Budget(shared[0], f"the rules ran longer than {shared[1]:g} s in all")
        token = _budget.set(budget)
        try:
            evaluator = _CountingEvaluator(self.ast, self.new_activation(), budget)
            return evaluator.evaluate(context)
        finally:
            _budget.reset(token)
