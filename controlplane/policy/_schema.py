"""The types of the values rules read, as :mod:`controlplane.policy._check` checks rules
against them when a policy is written.

A type is a :class:`Scalar` (``double``, ``string``...), a :class:`ListOf`, a :class:`MapOf`
(string keys, any number of them: ``metrics``, ``labels``), a :class:`Record` (a map whose keys
are fixed: ``evaluation``, an approval) or :data:`DYN` (not known until the rule runs). Each
type has a *witness*, a value of it that the checker runs operators and functions on to learn
whether they apply to the type and what type they give (:func:`witness`, :func:`type_of`).

:data:`GATE_SCHEMA` types the variables of a gate policy (see
:func:`controlplane.services.gates.gate_variables`). A value may be absent when the rule runs
(a metric the evaluation did not report, an evaluation field without an evaluation): the
schema says what a value is when present, never that it is present.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from celpy import celtypes

from controlplane.evaluation import CLASSIFICATION_METRICS, REGRESSION_METRICS


@dataclass(frozen=True)
class Scalar:
    """A CEL scalar type, named as CEL names it, with a value of it."""

    name: str
    sample: Any = field(compare=False, repr=False)


@dataclass(frozen=True)
class Dyn:
    """A value whose type is known only when the rule runs."""


@dataclass(frozen=True)
class ListOf:
    """A list whose elements are of one type."""

    element: CelType


@dataclass(frozen=True)
class MapOf:
    """A map from strings to values of one type, with any keys. With ``names``, a key that is
    not one of them is refused when a rule names it (``metrics.roc_acu``); ``kind`` says what
    the keys are, for the message (``metric``)."""

    value: CelType
    names: tuple[str, ...] | None = None
    kind: str = "key"


@dataclass(frozen=True)
class Record:
    """A map with a fixed set of string keys (``fields``); ``name`` says what it is, for
    messages (``evaluation``, ``an approval``)."""

    name: str
    fields: Mapping[str, CelType] = field(hash=False)


CelType = Scalar | Dyn | ListOf | MapOf | Record

DYN = Dyn()
BOOL = Scalar("bool", celtypes.BoolType(True))
INT = Scalar("int", celtypes.IntType(1))
UINT = Scalar("uint", celtypes.UintType(1))
DOUBLE = Scalar("double", celtypes.DoubleType(0.5))
#: "1" converts to an int, uint, double and bool alike, so a conversion of a string variable
#: is not taken for a type error.
STRING = Scalar("string", celtypes.StringType("1"))
BYTES = Scalar("bytes", celtypes.BytesType(b"1"))
TIMESTAMP = Scalar("timestamp", celtypes.TimestampType("2026-01-01T00:00:00Z"))
DURATION = Scalar("duration", celtypes.DurationType("1s"))
NULL = Scalar("null", None)

#: No witness: the type is (or holds) :data:`DYN`.
NO_WITNESS = object()


def witness(t: CelType) -> Any:
    """A CEL value of type ``t``, or :data:`NO_WITNESS`."""
    if isinstance(t, Scalar):
        return t.sample
    if isinstance(t, ListOf):
        element = witness(t.element)
        return NO_WITNESS if element is NO_WITNESS else celtypes.ListType([element])
    if isinstance(t, MapOf):
        value = witness(t.value)
        if value is NO_WITNESS:
            return NO_WITNESS
        return celtypes.MapType({celtypes.StringType("k"): value})
    if isinstance(t, Record):
        fields = {name: witness(f) for name, f in t.fields.items()}
        if any(v is NO_WITNESS for v in fields.values()):
            return NO_WITNESS
        return celtypes.MapType({celtypes.StringType(k): v for k, v in fields.items()})
    return NO_WITNESS


#: Most specific first: a CEL bool is a Python int, a uint an int.
_SCALARS: tuple[tuple[type, Scalar], ...] = (
    (celtypes.BoolType, BOOL),
    (celtypes.UintType, UINT),
    (celtypes.IntType, INT),
    (celtypes.DoubleType, DOUBLE),
    (celtypes.StringType, STRING),
    (celtypes.BytesType, BYTES),
    (celtypes.TimestampType, TIMESTAMP),
    (celtypes.DurationType, DURATION),
    (bool, BOOL),
    (float, DOUBLE),  # celpy's - and * of two doubles
    (int, INT),
    (str, STRING),
    (bytes, BYTES),
)


def _common(types: list[CelType]) -> CelType:
    return types[0] if types and all(t == types[0] for t in types) else DYN


def type_of(value: Any) -> CelType:
    """The type of a CEL value (:data:`DYN` for a list or map of mixed or no elements, and
    for anything else the checker does not follow, such as a type name used as a value)."""
    if value is None:
        return NULL
    for python_type, scalar in _SCALARS:
        if isinstance(value, python_type):
            return scalar
    if isinstance(value, list):
        element = _common([type_of(v) for v in value])
        return ListOf(element) if value else ListOf(DYN)
    if isinstance(value, dict):
        return MapOf(_common([type_of(v) for v in value.values()]))
    return DYN


def describe(t: CelType) -> str:
    """The type as a message names it: ``double``, ``list``, ``map``, ``evaluation``."""
    if isinstance(t, Scalar):
        return t.name
    if isinstance(t, ListOf):
        return "list"
    if isinstance(t, MapOf):
        return "map"
    if isinstance(t, Record):
        return t.name
    return "dyn"


# The gate's variables --------------------------------------------------------------------

#: The metrics an evaluation reports, by name: ``metrics.X`` and ``delta.X`` name one of them.
METRIC_NAMES = (*CLASSIFICATION_METRICS, *REGRESSION_METRICS)
_METRICS = MapOf(DOUBLE, METRIC_NAMES, "metric")

_GROUP = Record(
    "a fairness group",
    {"count": DOUBLE, "selection_rate": DOUBLE, "tpr": DOUBLE, "fpr": DOUBLE, "accuracy": DOUBLE},
)
#: ``fairness[attribute]``: see :class:`controlplane.evaluation.FairnessReport`.
FAIRNESS_REPORT = Record(
    "a fairness report",
    {
        "attribute": STRING,
        "positive_class": STRING,
        "groups": MapOf(_GROUP, kind="group"),
        "demographic_parity_difference": DOUBLE,
        "demographic_parity_ratio": DOUBLE,
        "equal_opportunity_difference": DOUBLE,
        "equalized_odds_difference": DOUBLE,
    },
)
_FEATURE_CHECK = Record(
    "a feature check",
    {
        "name": STRING,
        "kind": STRING,
        "missing_share": DOUBLE,
        "baseline_missing_share": DOUBLE,
        "out_of_range_share": DOUBLE,
        "unseen_categories": ListOf(STRING),
        "unseen_category_share": DOUBLE,
    },
)
#: ``validation``: see :class:`controlplane.evaluation.ValidationReport`.
VALIDATION = Record(
    "validation",
    {
        "passed": BOOL,
        "missing_columns": ListOf(STRING),
        "extra_columns": ListOf(STRING),
        "dtype_changes": ListOf(MapOf(STRING)),
        "features": MapOf(_FEATURE_CHECK, kind="feature"),
        "failures": ListOf(STRING),
        "thresholds": Record(
            "validation thresholds",
            {
                "max_missing_share_increase": DOUBLE,
                "max_out_of_range_share": DOUBLE,
                "max_unseen_category_share": DOUBLE,
            },
        ),
        "baseline": BOOL,
    },
)
#: ``evaluation``: the latest evaluation's facts, and what the gate's target serves.
EVALUATION = Record(
    "evaluation",
    {
        "serving": STRING,
        "name": STRING,
        "dataset_sha256": STRING,
        "dataset_role": STRING,
        "time": TIMESTAMP,
        "compared_version": STRING,
    },
)
#: An element of ``approvals``.
APPROVAL = Record(
    "an approval",
    {
        "principal": STRING,
        "approver": STRING,
        "roles": ListOf(STRING),
        "decision": STRING,
        "comment": STRING,
        "time": TIMESTAMP,
    },
)
_PAIRS = ListOf(ListOf(STRING))
#: ``lineage``: see :func:`controlplane.store.convert.lineage_to_json`. Its ``metrics`` and
#: ``parameters`` are the trainer's own, by any name.
LINEAGE = Record(
    "lineage",
    {
        "training_run_id": STRING,
        "datasets": ListOf(
            Record(
                "a lineage dataset",
                {
                    "role": STRING,
                    "source": STRING,
                    "sha256": STRING,
                    "row_count": DOUBLE,
                    "schema": _PAIRS,
                    "format": STRING,
                },
            )
        ),
        "parameters": MapOf(STRING, kind="parameter"),
        "metrics": MapOf(DOUBLE),
        "code": Record("lineage code", {"repository": STRING, "commit": STRING}),
        "environment": Record(
            "a lineage environment",
            {"python_version": STRING, "platform": STRING, "packages": _PAIRS},
        ),
    },
)
#: The type of each variable of a gate policy.
GATE_SCHEMA: dict[str, CelType] = {
    "metrics": _METRICS,
    "delta": _METRICS,
    "fairness": MapOf(FAIRNESS_REPORT, kind="protected attribute"),
    "validation": VALIDATION,
    "evaluation": EVALUATION,
    "approvals": ListOf(APPROVAL),
    "labels": MapOf(STRING, kind="label"),
    "lineage": LINEAGE,
}
