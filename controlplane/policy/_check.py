"""Checking a compiled rule's types and constants when its policy is written.

A rule that can never yield true or false (one that compares a number with a string, yields a
number, divides by a literal zero, or reads a field its variable does not have) would
otherwise be accepted and make every gate on its target fail, for every model, until someone
fixed it. :func:`check_rule` finds such rules by walking the syntax tree once, every branch
included (both sides of ``||``, ``&&`` and ``?:``, and macro bodies, whatever the inputs would
be), keeping for each expression either its value (it reads no variable) or its type:

* an expression that reads no variable is computed as the rule would compute it; one that
  fails (``1 / 0``, ``duration("1x")``, a regular expression literal that does not compile)
  fails for every input, and is refused;
* an operator, function or method is applied to values of its operands' types (see
  :func:`controlplane.policy._schema.witness`) by the very functions rules run with: one
  that finds no overload for those types (``double >= string``, ``int / double``,
  ``size(double)``) fails whenever it runs, and is refused; what it gives types the
  expression around it;
* a field of a :class:`~controlplane.policy._schema.Record` (``evaluation.datset_role``), or a
  key of a map with known names (``metrics.roc_acu``), that the type does not have is refused,
  naming the close matches;
* a rule whose type is known and is not bool is refused, as are operands of ``!``, ``&&``,
  ``||``, a ``?:`` condition and a macro predicate of a known type other than bool.

Where a type is not known (a computed key of a free-form map, ``dyn()``, a list of mixed
elements) nothing is refused: only what fails for every input is. Whether a key is present
(``metrics.roc_auc`` of a regression) is a matter for the gate, as is any failure that depends
on the values (an int overflowing, a string that does not parse as a timestamp).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import lark
from celpy import celtypes
from celpy.evaluation import CELEvalError, celbytes, celstr

from controlplane.policy._compile import NAN_COMPARED, RULE_FUNCTIONS, CompiledRule, refusal
from controlplane.policy._limits import Problem
from controlplane.policy._references import BINDING_MACROS, BUILTIN_IDENTS, call_args, unwrap
from controlplane.policy._schema import (
    BOOL,
    DOUBLE,
    DURATION,
    DYN,
    INT,
    NO_WITNESS,
    STRING,
    TIMESTAMP,
    UINT,
    CelType,
    Dyn,
    ListOf,
    MapOf,
    Record,
    Scalar,
    describe,
    type_of,
    witness,
)


@dataclass(frozen=True)
class _Value:
    """What the checker knows of an expression: its type and, when it reads no variable,
    its value (``known``)."""

    type: CelType
    known: bool = False
    value: Any = None


_DYN = _Value(DYN)
_BOOL = _Value(BOOL)

_RELATIONS = {
    "relation_lt": "_<_",
    "relation_le": "_<=_",
    "relation_gt": "_>_",
    "relation_ge": "_>=_",
    "relation_eq": "_==_",
    "relation_ne": "_!=_",
    "relation_in": "_in_",
}
_ARITHMETIC = {
    "addition_add": "_+_",
    "addition_sub": "_-_",
    "multiplication_mul": "_*_",
    "multiplication_div": "_/_",
    "multiplication_mod": "_%_",
}
_UNARY = {"unary_not": "!_", "unary_neg": "-_"}
#: What a conversion gives when the value converted does not parse: still that type.
_CONVERSIONS: dict[str, CelType] = {
    "int": INT,
    "uint": UINT,
    "double": DOUBLE,
    "bool": BOOL,
    "string": STRING,
    "timestamp": TIMESTAMP,
    "duration": DURATION,
}
#: Errors that say a function has no overload for its operands' types.
_TYPE_ERRORS = (TypeError, AttributeError)
#: Shown on a type error of ``/`` or ``%`` between an int and a double.
_ONE_NUMBER_TYPE = (
    "/ and % need operands of one number type: write 100.0, not 100, or convert with double()"
)


def _symbol(name: str) -> str:
    """An operator as a rule writes it: ``_>=_`` is ``>=``, ``!_`` is ``!``."""
    return name.strip("_").replace("_", " ")


class _Refused(Exception):
    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


class _Checker:
    def __init__(self, rule: CompiledRule, schema: Mapping[str, CelType]) -> None:
        self.rule = rule
        self.schema = schema

    # Messages ---------------------------------------------------------------------------

    def _source(self, node: lark.Tree) -> str:
        meta = node.meta
        start, end = getattr(meta, "start_pos", None), getattr(meta, "end_pos", None)
        if start is None or end is None:
            return ""
        text = " ".join(self.rule.expression[start:end].split())
        return text if len(text) <= 80 else text[:77] + "..."

    def _refuse(self, node: lark.Tree, message: str, hint: str) -> _Refused:
        line = getattr(node.meta, "line", None) or 1
        column = getattr(node.meta, "column", None) or 1
        return _Refused(Problem(message, hint, line, column))

    def _constant_error(
        self,
        node: lark.Tree,
        error: BaseException | CELEvalError,
        hint: str = "it reads no variable, so it fails for every version; correct the literal",
    ) -> _Refused:
        return self._refuse(node, f"{self._source(node)} fails: {_why(error)}", hint)

    def _type_error(self, node: lark.Tree, name: str, operands: list[_Value]) -> _Refused:
        types = [describe(o.type) for o in operands]
        if name == "_[_]":
            problem = f"{_a(types[0])} cannot be indexed by {_a(types[1])}"
        elif not name.isidentifier():
            problem = f"no operator {_symbol(name)} for ({', '.join(types)})"
        else:
            problem = f"{name}() does not apply to ({', '.join(types)})"
        hint = "these types never match, so the rule would fail for every version"
        if name in ("_/_", "_%_") and {"int", "double"} <= set(types):
            hint = _ONE_NUMBER_TYPE
        elif name in _RELATIONS.values() and "string" in types and {"int", "double"} & set(types):
            hint = "compare numbers with numbers (metrics.roc_auc >= 0.9), strings with strings"
        return self._refuse(node, f"type error in {self._source(node)}: {problem}", hint)

    def _not_bool(self, node: lark.Tree, value: _Value, what: str) -> None:
        if isinstance(value.type, Dyn) or value.type == BOOL:
            return
        raise self._refuse(
            node,
            f"{what}, {self._source(node)}, is {_a(describe(value.type))}, not a bool",
            "write a comparison or a test that is true or false, such as metrics.roc_auc >= 0.9",
        )

    def _unknown_name(
        self, node: lark.Tree, what: str, name: str, known: tuple[str, ...], kind: str
    ) -> _Refused:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        guess = f"did you mean {' or '.join(close)}? " if close else ""
        return self._refuse(
            node,
            f"{what} has no {kind} {name!r}",
            f"{guess}its {kind}s are {', '.join(known)}",
        )

    # Applying operators and functions ---------------------------------------------------

    def _apply(self, node: lark.Tree, name: str, operands: list[_Value]) -> _Value:
        """``name`` (an operator or function of the rule language) applied to ``operands``."""
        function = RULE_FUNCTIONS[name]
        if all(o.known for o in operands):
            try:
                value = function(*(o.value for o in operands))
            except _TYPE_ERRORS as exc:
                if exc.args == (NAN_COMPARED,):
                    raise self._constant_error(node, exc) from None
                raise self._type_error(node, name, operands) from None
            except Exception as exc:  # whatever it raises, the rule errs
                raise self._constant_error(node, exc) from None
            if isinstance(value, CELEvalError):
                raise self._constant_error(node, value)
            return _Value(type_of(value), True, value)
        args = [o.value if o.known else witness(o.type) for o in operands]
        if any(a is NO_WITNESS for a in args):
            return _Value(_CONVERSIONS.get(name, DYN))
        if name == "matches" and operands[1].known:
            # The pattern is a literal: whether it compiles does not depend on the input.
            checked = function(celtypes.StringType(""), operands[1].value)
            if isinstance(checked, CELEvalError):
                raise self._constant_error(
                    node,
                    checked,
                    "its pattern is a literal, so it fails whatever the variables hold; "
                    "correct the pattern",
                )
        try:
            value = function(*args)
        except _TYPE_ERRORS:
            raise self._type_error(node, name, operands) from None
        except Exception:  # depends on the value (overflow, parsing): the gate's
            return _Value(_CONVERSIONS.get(name, DYN))
        if isinstance(value, CELEvalError):
            if len(value.args) > 1 and value.args[1] in _TYPE_ERRORS:
                raise self._type_error(node, name, operands)
            return _Value(_CONVERSIONS.get(name, DYN))
        return _Value(type_of(value))

    # Selecting fields and keys ----------------------------------------------------------

    def _select(self, node: lark.Tree, base: _Value, key: _Value) -> _Value:
        """``base.key`` or ``base[key]``."""
        t = base.type
        if (base.known and key.known) or isinstance(t, Scalar):
            return self._apply(node, "_[_]", [base, key])
        if isinstance(t, Dyn):
            return _DYN
        if isinstance(key.type, Dyn):
            return _Value(_member_type(t))
        if isinstance(t, ListOf):
            if key.type not in (INT, UINT):
                raise self._type_error(node, "_[_]", [base, key])
            return _Value(t.element)
        if key.type != STRING:
            raise self._refuse(
                node,
                f"type error in {self._source(node)}: the keys of "
                f"{self._source(_base_of(node))} are strings, not {_a(describe(key.type))}",
                'write a string key, such as labels["team"]',
            )
        if not key.known:
            return _Value(_member_type(t))
        name = str(key.value)
        if isinstance(t, Record):
            if name not in t.fields:
                raise self._unknown_name(node, t.name, name, tuple(t.fields), "field")
            return _Value(t.fields[name])
        if t.names is not None and name not in t.names:
            raise self._unknown_name(node, self._source(_base_of(node)), name, t.names, t.kind)
        return _Value(t.value)

    # Walking the tree -------------------------------------------------------------------

    def visit(self, node: lark.Tree, scope: Mapping[str, CelType]) -> _Value:
        node = unwrap(node)
        handler = getattr(self, f"_on_{node.data}", None)
        if handler is not None and (node.data != "expr" or len(node.children) == 3):
            return handler(node, scope)  # type: ignore[no-any-return]
        for child in node.children:
            if isinstance(child, lark.Tree):
                self.visit(child, scope)
        return _DYN

    def _on_expr(self, node: lark.Tree, scope: Mapping[str, CelType]) -> _Value:
        condition, yes, no = (self.visit(c, scope) for c in node.children)  # type: ignore[arg-type]
        self._not_bool(node.children[0], condition, "the condition")  # type: ignore[arg-type]
        if condition.known and yes.known and no.known:
            return self._apply(node, "_?_:_", [condition, yes, no])
        return _Value(yes.type if yes.type == no.type else DYN)

    def _logical(self, node: lark.Tree, scope: Mapping[str, CelType], name: str) -> _Value:
        values = []
        for child in node.children:
            assert isinstance(child, lark.Tree)
            value = self.visit(child, scope)
            self._not_bool(child, value, f"the operand of {_symbol(name)}")
            values.append(value)
        return self._apply(node, name, values) if all(v.known for v in values) else _BOOL

    def _on_conditionalor(self, node: lark.Tree, scope: Mapping[str, CelType]) -> _Value:
        return self._logical(node, scope, "_||_")

    def _on_conditionaland(self, node: lark.Tree, scope: Mapping[str, CelType]) -> _Value:
        return self._logical(node, scope, "_&&_")

    def _binary(self, node: lark.Tree, scope: Mapping[str, CelType], names: dict) -> _Value:
        operator, right = node.children
        assert isinstance(operator, lark.Tree) and isinstance(right, lark.Tree)
        left = operator.children[0]
        assert isinstance(left, lark.Tree)
        values = [self.visit(left, scope), self.visit(right, scope)]
        return self._apply(node, names[operator.data], values)

    def _on_relation(self, node: lark.Tree, scope: Mapping[str, CelType]) -> _Value:
        return self._binary(node, scope, _RELATIONS)

    def _on_addition(self, node: lark.Tree, scope: Mapping[str, CelType]) -> _Value:
        return self._binary(node, scope, _ARITHMETIC)

    def _on_multiplication(self, node: lark.Tree, scope: Mapping[str, CelType]) -> _Value:
        return self._binary(node, scope, _ARITHMETIC)

    def _on_unary(self, node: lark.Tree, scope: Mapping[str, CelType]) -> _Value:
        operator, operand = node.children
        assert isinstance(operator, lark.Tree) and isinstance(operand, lark.Tree)
        value = self.visit(operand, scope)
        if operator.data == "unary_not":
            self._not_bool(operand, value, "the operand of !")
        return self._apply(node, _UNARY[operator.data], [value])

    def _on_literal(self, node: lark.Tree, scope: Mapping[str, CelType]) -> _Value:
        token = node.children[0]
        assert isinstance(token, lark.Token)
        text = str(token)
        try:
            value: Any
            if token.type == "FLOAT_LIT":
                value = celtypes.DoubleType(text)
            elif token.type == "INT_LIT":
                value = celtypes.IntType(text)
            elif token.type == "UINT_LIT":
                value = celtypes.UintType(text[:-1])
            elif token.type in ("STRING_LIT", "MLSTRING_LIT"):
                value = celstr(token)
            elif token.type == "BYTES_LIT":
                value = celbytes(token)
            elif token.type == "BOOL_LIT":
                value = celtypes.BoolType(text == "true")
            else:
                value = None
        except ValueError as exc:
            raise self._constant_error(node, exc) from None
        return _Value(type_of(value), True, value)

    def _on_ident(self, node: lark.Tree, scope: Mapping[str, CelType]) -> _Value:
        name = str(node.children[0])
        if name in scope:
            return _Value(scope[name])
        if name in BUILTIN_IDENTS or name not in self.schema:
            return _DYN
        return _Value(self.schema[name])

    _on_dot_ident = _on_ident

    def _on_list_lit(self, node: lark.Tree, scope: Mapping[str, CelType]) -> _Value:
        items = [self.visit(c, scope) for c in call_args(_first_tree(node))]
        if items and all(i.known for i in items):
            value = celtypes.ListType([i.value for i in items])
            return _Value(type_of(value), True, value)
        types = [i.type for i in items]
        return _Value(ListOf(types[0] if types and all(t == types[0] for t in types) else DYN))

    def _on_map_lit(self, node: lark.Tree, scope: Mapping[str, CelType]) -> _Value:
        inits = _first_tree(node)
        parts = [self.visit(c, scope) for c in _map_parts(inits)]
        keys, values = parts[0::2], parts[1::2]
        if parts and all(p.known for p in parts):
            built = celtypes.MapType()
            try:
                for key, value in zip(keys, values, strict=True):
                    if key.value in built:
                        raise ValueError(f"duplicate key {key.value!r}")
                    built[key.value] = value.value
            except (TypeError, ValueError) as exc:
                raise self._constant_error(node, exc) from None
            return _Value(type_of(built), True, built)
        types = [v.type for v in values]
        return _Value(MapOf(types[0] if types and all(t == types[0] for t in types) else DYN))

    def _on_member_dot(self, node: lark.Tree, scope: Mapping[str, CelType]) -> _Value:
        base, field = node.children
        assert isinstance(base, lark.Tree)
        value = self.visit(base, scope)
        if isinstance(value.type, ListOf) and not value.known:
            raise self._refuse(
                node,
                f"type error in {self._source(node)}: a list has no fields",
                "read its elements with [index] or a macro, such as "
                'approvals.exists(a, a.decision == "approve")',
            )
        if isinstance(value.type, Scalar) and not value.known:
            raise self._refuse(
                node,
                f"type error in {self._source(node)}: {_a(value.type.name)} has no fields",
                "select fields of maps only",
            )
        key = celtypes.StringType(str(field))
        return self._select(node, value, _Value(STRING, True, key))

    def _on_member_index(self, node: lark.Tree, scope: Mapping[str, CelType]) -> _Value:
        base, index = node.children
        assert isinstance(base, lark.Tree) and isinstance(index, lark.Tree)
        return self._select(node, self.visit(base, scope), self.visit(index, scope))

    def _on_member_dot_arg(self, node: lark.Tree, scope: Mapping[str, CelType]) -> _Value:
        target, method, *rest = node.children
        assert isinstance(target, lark.Tree)
        args = call_args(rest[0] if rest else None)
        receiver = self.visit(target, scope)
        name = str(method)
        if name in BINDING_MACROS:
            return self._macro(node, name, receiver, args, scope)
        return self._apply(node, name, [receiver, *(self.visit(a, scope) for a in args)])

    def _macro(
        self,
        node: lark.Tree,
        name: str,
        receiver: _Value,
        args: list[lark.Tree],
        scope: Mapping[str, CelType],
    ) -> _Value:
        t = receiver.type
        if isinstance(t, Scalar):
            raise self._refuse(
                node,
                f"type error in {self._source(node)}: {name}() runs over a list or map, not "
                f"{_a(t.name)}",
                "apply it to a list (approvals) or a map (labels)",
            )
        element: CelType = DYN
        if isinstance(t, ListOf):
            element = t.element
        elif isinstance(t, MapOf | Record):
            element = STRING  # a macro over a map runs over its keys
        variable = unwrap(args[0]) if args else None
        inner = dict(scope)
        if variable is not None and variable.data == "ident":
            inner[str(variable.children[0])] = element
        bodies = [self.visit(a, inner) for a in args[1:]]
        predicates = bodies if name != "map" else bodies[:-1]
        for arg, body in zip(args[1:], predicates, strict=False):
            self._not_bool(arg, body, f"the predicate of {name}()")
        if name == "map":
            return _Value(ListOf(bodies[-1].type if bodies else DYN))
        if name == "filter":
            return _Value(ListOf(element))
        return _BOOL

    def _on_ident_arg(self, node: lark.Tree, scope: Mapping[str, CelType]) -> _Value:
        name = str(node.children[0])
        args = call_args(node.children[1] if len(node.children) > 1 else None)
        if name == "has":
            for arg in args:
                self.visit(arg, scope)
            return _BOOL
        values = [self.visit(a, scope) for a in args]
        if name == "dyn":
            return _DYN
        return self._apply(node, name, values)


#: celpy's repr of a value in an error's details: ``StringType('1')`` → ``'1'``.
_CEL_VALUE = re.compile(r"\b[A-Z][A-Za-z]*Type\(([^()]*)\)")


def _why(error: BaseException | CELEvalError) -> str:
    """What went wrong, in words: ``division by zero``, ``no such key 'b'``."""
    kind: Any = type(error)
    details: Any = error.args
    if isinstance(error, CELEvalError):
        text, kind, details = [*error.args, None, None, None][:3]
        if text == "match error":
            detail = details[0] if isinstance(details, tuple) and details else text
            if isinstance(detail, bytes):
                detail = detail.decode(errors="replace")
            return f"invalid regular expression: {detail}"
    detail = " ".join(str(d) for d in details or ()) if isinstance(details, tuple) else details
    detail = _CEL_VALUE.sub(r"\1", str(detail or ""))
    if isinstance(kind, type) and issubclass(kind, ZeroDivisionError):
        return "division by zero"
    if isinstance(kind, type) and issubclass(kind, KeyError):
        key = details[0] if isinstance(details, tuple) and details else detail
        return f"no such key {str(key)!r}"
    if detail == NAN_COMPARED:
        return detail
    if isinstance(kind, type) and issubclass(kind, IndexError):
        return "index out of range"
    if isinstance(kind, type) and issubclass(kind, OverflowError):
        return f"a number out of range ({detail})"
    return f"invalid value ({detail})" if detail else "invalid value"


def _a(noun: str) -> str:
    """``noun`` with its indefinite article, unless it has one: ``an int``, ``a double``."""
    if noun.startswith(("a ", "an ")):
        return noun
    return f"an {noun}" if noun[:1] in "aeiou" else f"a {noun}"


def _first_tree(node: lark.Tree) -> lark.Tree | None:
    return next((c for c in node.children if isinstance(c, lark.Tree)), None)


def _map_parts(node: lark.Tree | None) -> list[lark.Tree]:
    """The key and value expressions of a map literal's ``mapinits``, in order."""
    if isinstance(node, lark.Tree) and node.data == "mapinits":
        return [c for c in node.children if isinstance(c, lark.Tree)]
    return []


def _base_of(node: lark.Tree) -> lark.Tree:
    base = node.children[0]
    assert isinstance(base, lark.Tree)
    return base


def _member_type(t: ListOf | MapOf | Record) -> CelType:
    """The type of an element or value of ``t`` read by a key known only when the rule runs."""
    if isinstance(t, ListOf):
        return t.element
    if isinstance(t, MapOf):
        return t.value
    types = list(t.fields.values())
    return types[0] if all(x == types[0] for x in types) else DYN


def check_rule(rule: CompiledRule, schema: Mapping[str, CelType]) -> None:
    """Refuse ``rule`` (INVALID_ARGUMENT, ``INVALID_POLICY_RULE``, with its line and column)
    when, read against the variable types of ``schema``, it can never yield true or false:
    see the module docstring."""
    checker = _Checker(rule, schema)
    try:
        try:
            result = checker.visit(rule.ast, {})
        except RecursionError:
            return  # compile_rule bounds the depth; what cannot be checked is left to the gate
        if not isinstance(result.type, Dyn) and result.type != BOOL:
            raise checker._refuse(
                rule.ast,
                f"the rule yields {_a(describe(result.type))}, not a bool",
                "a rule must be true or false: compare the value, such as metrics.roc_auc >= 0.9",
            )
    except _Refused as refused:
        raise refusal(rule.expression, rule.index, refused.problem) from None
