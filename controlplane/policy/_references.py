"""What a rule reads: the variable paths found by walking its CEL syntax tree.

A path is a top-level variable followed by the field selections and string-literal indexes
applied to it, as far as they can be known without evaluating: ``fairness["sex"].dpr`` gives
``("fairness", "sex", "dpr")``; ``metrics[name]`` gives ``("metrics",)``; for
``approvals.exists(a, ...)`` the path is ``("approvals",)`` and ``a`` (a variable bound by the
macro) is not a reference. ``has(metrics.x)`` refers to ``metrics.x``.
"""

from __future__ import annotations

import re
from collections.abc import Container, Iterator, Mapping
from dataclasses import dataclass

import lark

#: Macros whose first argument binds a variable over the receiver's elements.
BINDING_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})
#: Identifiers CEL itself defines (type names usable as values).
BUILTIN_IDENTS = frozenset(
    {"bool", "bytes", "double", "duration", "int", "list", "map", "null_type", "string",
     "timestamp", "type", "uint", "google"}
)  # fmt: skip
#: Nodes that only wrap their single child.
_WRAPPERS = frozenset(
    {"expr", "conditionalor", "conditionaland", "relation", "addition", "multiplication",
     "unary", "member", "primary", "paren_expr"}
)  # fmt: skip
_SIMPLE_STRING = re.compile(r"""^(?:"([^"\\\n]*)"|'([^'\\\n]*)')$""")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Reference:
    """One variable path a rule reads, with where it starts in the rule text (1-based)."""

    path: tuple[str, ...]
    line: int
    column: int

    @property
    def text(self) -> str:
        """The path written the CEL way: ``fairness.sex.dpr`` or ``labels["team-a"]``."""
        head, *rest = self.path
        return head + "".join(f".{p}" if _IDENT.match(p) else f"[{p!r}]" for p in rest)


def unwrap(node: lark.Tree) -> lark.Tree:
    """``node`` without the grammar's single-child wrappers around it."""
    while node.data in _WRAPPERS and len(node.children) == 1:
        child = node.children[0]
        if not isinstance(child, lark.Tree):
            break
        node = child
    return node


def _string_literal(node: lark.Tree) -> str | None:
    node = unwrap(node)
    if node.data != "literal" or not node.children:
        return None
    token = node.children[0]
    if not isinstance(token, lark.Token) or token.type != "STRING_LIT":
        return None
    match = _SIMPLE_STRING.match(str(token))
    if match is None:
        return None
    return match.group(1) if match.group(1) is not None else match.group(2)


def _static_path(node: lark.Tree, bound: Container[str]) -> tuple[str, ...] | None:
    node = unwrap(node)
    if node.data in ("ident", "dot_ident"):
        name = str(node.children[0])
        if name in bound or name in BUILTIN_IDENTS:
            return None
        return (name,)
    if node.data == "member_dot":
        base, field = node.children
        assert isinstance(base, lark.Tree)
        prefix = _static_path(base, bound)
        return None if prefix is None else (*prefix, str(field))
    if node.data == "member_index":
        base, index = node.children
        assert isinstance(base, lark.Tree) and isinstance(index, lark.Tree)
        key = _string_literal(index)
        prefix = _static_path(base, bound)
        return None if prefix is None or key is None else (*prefix, key)
    return None


def call_args(node: lark.Tree | lark.Token | None) -> list[lark.Tree]:
    """The argument expressions of a call, given its ``exprlist`` node (none without)."""
    if isinstance(node, lark.Tree) and node.data == "exprlist":
        return [c for c in node.children if isinstance(c, lark.Tree)]
    return []


@dataclass(frozen=True)
class ElementField:
    """A field read from the elements of a list: ``approvals.exists(a, a.principal == "x")``
    gives ``items=("approvals",)`` and ``field="principal"``."""

    items: tuple[str, ...]
    field: str
    line: int
    column: int


def _list_path(
    node: lark.Tree, bound: Mapping[str, tuple[str, ...] | None]
) -> tuple[str, ...] | None:
    """The static path of the list variable ``node`` is, or is a ``filter`` of (its elements
    are that variable's elements); None otherwise."""
    node = unwrap(node)
    if node.data == "member_dot_arg":
        target, method, *_ = node.children
        assert isinstance(target, lark.Tree)
        return _list_path(target, bound) if str(method) == "filter" else None
    return _static_path(node, bound)


def _element_of(
    node: lark.Tree, bound: Mapping[str, tuple[str, ...] | None]
) -> tuple[str, ...] | None:
    """The static path of the list variable ``node`` is an element of: a variable a macro
    bound over it (``a`` in ``approvals.exists(a, ...)``), or a position in it
    (``approvals[0]``); None otherwise."""
    node = unwrap(node)
    if node.data == "ident":
        return bound.get(str(node.children[0]))
    if node.data == "member_index":
        base, index = node.children
        assert isinstance(base, lark.Tree) and isinstance(index, lark.Tree)
        if _string_literal(index) is None:
            return _list_path(base, bound)
    return None


def _walk(
    node: lark.Tree, bound: Mapping[str, tuple[str, ...] | None]
) -> Iterator[Reference | ElementField]:
    """What ``node`` reads. ``bound`` maps each variable a macro bound to the path of the list
    it runs over (None when that is not a static path)."""
    node = unwrap(node)
    path = _static_path(node, bound)
    if path is not None:
        yield Reference(path, node.meta.line, node.meta.column)
        return
    if node.data in ("member_dot", "member_index"):
        # A field of a list variable's element: ``a.principal``, ``a["principal"]``,
        # ``approvals[0].principal``.
        base, selector = node.children
        assert isinstance(base, lark.Tree)
        items = _element_of(base, bound)
        field = (
            str(selector) if node.data == "member_dot" else _string_literal(selector)  # type: ignore[arg-type]
        )
        if items is not None and field is not None:
            yield ElementField(items, field, node.meta.line, node.meta.column)
            yield from _walk(base, bound)
            return
    if node.data == "member_dot_arg":
        target, method, *rest = node.children
        args = call_args(rest[0] if rest else None)
        assert isinstance(target, lark.Tree)
        yield from _walk(target, bound)
        if str(method) in BINDING_MACROS and args:
            variable = unwrap(args[0])
            inner = dict(bound)
            if variable.data == "ident":
                inner[str(variable.children[0])] = _list_path(target, bound)
            for arg in args[1:]:
                yield from _walk(arg, inner)
            return
        for arg in args:
            yield from _walk(arg, bound)
        return
    if node.data == "member_index":
        # A computed index: the base is read whole, and the index expression on its own.
        for child in node.children:
            if isinstance(child, lark.Tree):
                yield from _walk(child, bound)
        return
    for child in node.children:
        if isinstance(child, lark.Tree):
            yield from _walk(child, bound)


def element_fields(ast: lark.Tree) -> tuple[ElementField, ...]:
    """Fields a rule reads from the elements of a list variable through a macro's bound
    variable (``all``, ``exists``, ``exists_one``, ``map``, ``filter``)."""
    return tuple(f for f in _walk(ast, {}) if isinstance(f, ElementField))


def references(ast: lark.Tree) -> tuple[Reference, ...]:
    """The distinct variable paths of a parsed rule, in order of first appearance."""
    seen: dict[tuple[str, ...], Reference] = {}
    for ref in _walk(ast, {}):
        if isinstance(ref, Reference):
            seen.setdefault(ref.path, ref)
    return tuple(seen.values())
