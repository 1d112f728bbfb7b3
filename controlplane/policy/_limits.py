"""Bounds on what a rule may cost: checked on its syntax tree when it is written, and counted
while it runs.

celpy has no cost budget of its own, and macros (``all``, ``exists``, ``map``...) nested over
list literals multiply: five levels over ten-element lists make 100,000 iterations from 159
characters. So a rule is refused when it is written if its macros nest more than
:data:`MAX_MACRO_NESTING` deep, or if the list and map literals its macros run over would make
more than :data:`MAX_ITERATIONS` iterations; and each evaluation stops after
:data:`MAX_EVALUATION_STEPS` steps, so that a rule over large inputs is bounded too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
#: Longest list or string that ``+`` may build.
MAX_VALUE_SIZE = 100_000


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
    """An evaluation took more than :data:`MAX_EVALUATION_STEPS` steps or built a value over
    :data:`MAX_VALUE_SIZE`."""


class _CountingEvaluator(Evaluator):
    """celpy's interpreter, counting the nodes it visits (macro bodies included, as their
    sub-evaluators share the count) and stopping at the budget."""

    def __init__(self, ast: lark.Tree, activation: Any, steps: list[int]) -> None:
        super().__init__(ast, activation=activation)
        self._steps = steps

    def _step(self, steps: int = 1) -> None:
        self._steps[0] += steps
        if self._steps[0] > MAX_EVALUATION_STEPS:
            raise BudgetExceeded(f"it took more than {MAX_EVALUATION_STEPS} evaluation steps")

    def visit(self, tree: lark.Tree) -> Any:
        self._step()
        return super().visit(tree)

    def visit_children(self, tree: lark.Tree) -> list[Any]:
        self._step()
        return super().visit_children(tree)

    def evaluate(self, context: Any = None) -> celtypes.Value:
        if context:  # a macro's iteration: a new scope
            self._step(ITERATION_STEPS)
        return super().evaluate(context)

    def sub_evaluator(self, ast: lark.Tree) -> Evaluator:
        return _CountingEvaluator(ast, self.activation, self._steps)


class BudgetRunner(celpy.InterpretedRunner):
    """A runner whose every evaluation stops after :data:`MAX_EVALUATION_STEPS` steps."""

    def evaluate(self, context: Any) -> celtypes.Value:
        evaluator = _CountingEvaluator(self.ast, self.new_activation(), [0])
        return evaluator.evaluate(context)


def bounded_add(add: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """``+`` that refuses to build a list or string longer than :data:`MAX_VALUE_SIZE`
    (repeated ``x + x`` in chained macros doubles a value each time)."""

    def plus(a: Any, b: Any) -> Any:
        # celpy's lists, strings and bytes are Python's; ``+`` of two lists gives a plain list.
        sized = (list, str, bytes)
        if isinstance(a, sized) and isinstance(b, sized) and len(a) + len(b) > MAX_VALUE_SIZE:
            raise BudgetExceeded(f"it built a list or string longer than {MAX_VALUE_SIZE}")
        return add(a, b)

    return plus
