"""Checking an evaluation dataset against the model's features and the baseline profile.

Per feature: ``missing_share`` (nulls, NaN and infinities over all rows, as the profile counts
them), and against the baseline: ``baseline_missing_share``; for numeric features
``out_of_range_share`` (share of the finite values below the baseline min or above its max);
for categorical features ``unseen_categories`` (at most 20 listed, most frequent first) and
``unseen_category_share`` (share of the non-missing values whose category the baseline never
saw). ``dtype_changes`` lists features whose kind (numeric / categorical) differs from the
baseline's; ``missing_columns`` the features (the model's and the baseline's) the dataset
lacks; ``extra_columns`` the columns that are neither features, the label, slices nor protected
attributes.

The check fails (``passed`` is False) on any missing column or kind change, or when a feature's
missing share exceeds its baseline share by more than ``max_missing_share_increase``
(the baseline share is 0 without a baseline), its out-of-range share exceeds
``max_out_of_range_share``, or its unseen-category share exceeds ``max_unseen_category_share``.
Extra columns never fail it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from modelplane.profiles import (
    BaselineProfile,
    CategoricalFeature,
    boolean_spelling,
    category_strings,
    is_categorical_type,
    is_numeric_type,
    numeric_values,
)

_LISTED_CATEGORIES = 20


@dataclass(frozen=True)
class ValidationThresholds:
    """The limits above which data validation fails (shares are fractions of rows)."""

    max_missing_share_increase: float = 0.05
    max_out_of_range_share: float = 0.05
    max_unseen_category_share: float = 0.01


@dataclass(frozen=True)
class FeatureCheck:
    """What the dataset looks like for one feature, next to the baseline."""

    name: str
    kind: str
    missing_share: float
    baseline_missing_share: float | None = None
    out_of_range_share: float | None = None
    unseen_categories: list[str] = field(default_factory=list)
    unseen_category_share: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The check as a JSON-ready dictionary."""
        return asdict(self)


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of data validation; ``failures`` says in words why ``passed`` is False."""

    passed: bool
    missing_columns: list[str]
    extra_columns: list[str]
    dtype_changes: list[dict[str, str]]
    features: dict[str, FeatureCheck]
    failures: list[str]
    thresholds: ValidationThresholds
    baseline: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: features keyed by name, so a policy can read
        ``validation.features["age"].out_of_range_share``."""
        return {
            "passed": self.passed,
            "missing_columns": list(self.missing_columns),
            "extra_columns": list(self.extra_columns),
            "dtype_changes": [dict(d) for d in self.dtype_changes],
            "features": {k: v.to_dict() for k, v in self.features.items()},
            "failures": list(self.failures),
            "thresholds": asdict(self.thresholds),
            "baseline": self.baseline,
        }


def _kind(type_: pa.DataType) -> str:
    if is_numeric_type(type_):
        return "numeric"
    if is_categorical_type(type_):
        return "categorical"
    return str(type_)


def _numeric_check(
    column: pa.ChunkedArray, low: float | None, high: float | None
) -> tuple[float, float | None]:
    values = numeric_values(column)
    finite = values[np.isfinite(values)]
    missing = (len(values) - len(finite)) / len(values)
    if low is None or high is None:
        return missing, None
    outside = np.count_nonzero((finite < low) | (finite > high))
    return missing, (outside / len(finite) if len(finite) else 0.0)


def _categorical_check(
    column: pa.ChunkedArray, known: dict[str, int]
) -> tuple[float, list[str], float]:
    strings = category_strings(column, boolean_spelling(known))
    present = pc.drop_null(strings)
    counts = pc.value_counts(present)
    pairs = zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)
    unseen = sorted(((v, c) for v, c in pairs if v not in known), key=lambda p: (-p[1], p[0]))
    unseen_rows = sum(c for _, c in unseen)
    missing = strings.null_count / len(strings)
    share = unseen_rows / len(present) if len(present) else 0.0
    return missing, [v for v, _ in unseen[:_LISTED_CATEGORIES]], share


def validate(
    table: pa.Table,
    features: Sequence[str],
    *,
    known_columns: Sequence[str],
    baseline: BaselineProfile | None,
    thresholds: ValidationThresholds,
    checkpoint: Callable[[], None] | None = None,
) -> ValidationReport:
    """Check ``features`` of a non-empty ``table`` against ``baseline`` (see the module doc).

    ``known_columns`` are the label, slice and protected columns, never reported as extra.
    ``checkpoint`` is called before each feature; what it raises ends the validation (an
    evaluation being stopped).
    """
    expected = list(features)
    if baseline is not None:
        wanted = set(expected)
        expected += [n for n in baseline.feature_names if n not in wanted]
    columns = table.column_names
    present = set(columns)
    skipped = set(expected) | set(known_columns)
    missing_columns = [n for n in expected if n not in present]
    extra = [c for c in columns if c not in skipped]
    failures = [f"column {n!r} is missing" for n in missing_columns]
    changes: list[dict[str, str]] = []
    checks: dict[str, FeatureCheck] = {}
    limits = thresholds
    profiled = set(baseline.feature_names) if baseline is not None else set()
    for name in (n for n in expected if n in present):
        if checkpoint is not None:
            checkpoint()
        column = table.column(name)
        kind = _kind(column.type)
        ref = None
        if baseline is not None and name in profiled:
            ref = baseline.feature(name)
            if ref.kind != kind:
                changes.append({"feature": name, "expected": ref.kind, "actual": kind})
                failures.append(f"feature {name!r} is {kind} but was {ref.kind} in the baseline")
                ref = None
        base_missing = None
        if ref is not None:
            total = ref.count + ref.missing
            base_missing = ref.missing / total if total else 0.0
        if kind == "categorical":
            known = ref.categories if isinstance(ref, CategoricalFeature) else None
            missing, unseen, share = _categorical_check(column, known or {})
            check = FeatureCheck(
                name,
                kind,
                missing,
                base_missing,
                unseen_categories=unseen if known is not None else [],
                unseen_category_share=share if known is not None else None,
            )
        elif kind == "numeric":
            low = getattr(ref, "min", None)
            high = getattr(ref, "max", None)
            missing, outside = _numeric_check(column, low, high)
            check = FeatureCheck(name, kind, missing, base_missing, out_of_range_share=outside)
        else:
            check = FeatureCheck(name, kind, column.null_count / len(column), base_missing)
        checks[name] = check
        failures += _limit_failures(check, limits)
    return ValidationReport(
        passed=not failures,
        missing_columns=missing_columns,
        extra_columns=extra,
        dtype_changes=changes,
        features=checks,
        failures=failures,
        thresholds=thresholds,
        baseline=baseline is not None,
    )


def _limit_failures(check: FeatureCheck, limits: ValidationThresholds) -> list[str]:
    out = []
    base = check.baseline_missing_share or 0.0
    if check.missing_share - base > limits.max_missing_share_increase:
        out.append(
            f"feature {check.name!r}: {check.missing_share:.1%} missing against "
            f"{base:.1%} in the baseline (limit +{limits.max_missing_share_increase:.1%})"
        )
    if (
        check.out_of_range_share is not None
        and check.out_of_range_share > limits.max_out_of_range_share
    ):
        out.append(
            f"feature {check.name!r}: {check.out_of_range_share:.1%} of values outside the "
            f"baseline range (limit {limits.max_out_of_range_share:.1%})"
        )
    if (
        check.unseen_category_share is not None
        and check.unseen_category_share > limits.max_unseen_category_share
    ):
        out.append(
            f"feature {check.name!r}: {check.unseen_category_share:.1%} of values in categories "
            f"the baseline never saw (limit {limits.max_unseen_category_share:.1%})"
        )
    return out
