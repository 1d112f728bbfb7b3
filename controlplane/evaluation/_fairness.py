"""Group fairness of a binary classifier over one protected attribute.

Per group ``g`` (rows whose attribute has one value): ``count``; ``selection_rate``, the share
of rows predicted positive; ``tpr``, the share of truly positive rows predicted positive (None
when the group has no positive row); ``fpr``, the share of truly negative rows predicted
positive (None without a negative row); ``accuracy``.

Disparities, over the groups where the rate is defined (fairlearn's ``between_groups`` method):

* ``demographic_parity_difference``: max minus min selection rate;
* ``demographic_parity_ratio``: min over max selection rate (None when no group selects
  anyone, since 0/0 says nothing);
* ``equal_opportunity_difference``: max minus min TPR (None when fewer than two groups have
  a TPR: nothing is compared);
* ``equalized_odds_difference``: the larger of the TPR and FPR differences that are defined.

These match ``fairlearn.metrics`` whenever every group has both classes; fairlearn instead
counts an undefined rate as 0. Rates and disparities are computed exactly from the group's
counts (as fractions) and rounded to a float once, so 24 of 30 against 18 of 30 selected gives
a ratio of exactly ``0.75`` and a difference of exactly ``0.2``, as a policy's rule reads them.

A group of fewer than :data:`SMALL_GROUP_ROWS` rows is warned about (``GROUP_TOO_SMALL``): its
figures stay in the report. The ``<null>`` group of rows whose attribute is missing is reported
with its figures but is no group of the attribute: it enters no disparity and does not count
toward two groups. Fairness compares groups: with fewer than two (the column missing on every
row, or holding one value), every disparity is undefined (None) and a ``SINGLE_GROUP`` warning
says so, while the group figures stay in the report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from controlplane.evaluation._errors import EvaluationWarning
from controlplane.evaluation._grouping import NULL_GROUP, Groups

#: Groups with fewer rows get a ``GROUP_TOO_SMALL`` warning: one row more or less moves their
#: rates by over 3 points, so a disparity they enter says little.
SMALL_GROUP_ROWS = 30


def _rate(num: int, den: int) -> Fraction | None:
    return Fraction(num, den) if den else None


def _float(value: Fraction | None) -> float | None:
    """The float nearest ``value`` (the one rounding of an exact figure)."""
    return None if value is None else float(value)


@dataclass(frozen=True)
class GroupMetrics:
    """The rates of one group of a protected attribute."""

    group: str
    count: int
    selection_rate: float
    tpr: float | None
    fpr: float | None
    accuracy: float

    def to_dict(self) -> dict[str, Any]:
        """The group's figures as a JSON-ready dictionary."""
        return {
            "count": self.count,
            "selection_rate": self.selection_rate,
            "tpr": self.tpr,
            "fpr": self.fpr,
            "accuracy": self.accuracy,
        }


@dataclass(frozen=True)
class FairnessReport:
    """Per-group rates and the disparities between groups for one protected attribute."""

    attribute: str
    positive_class: str
    groups: list[GroupMetrics]
    demographic_parity_difference: float | None
    demographic_parity_ratio: float | None
    equal_opportunity_difference: float | None
    equalized_odds_difference: float | None
    warnings: list[EvaluationWarning] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: groups keyed by name, so a policy can read ``groups["f"].tpr``."""
        return {
            "attribute": self.attribute,
            "positive_class": self.positive_class,
            "groups": {g.group: g.to_dict() for g in self.groups},
            "demographic_parity_difference": self.demographic_parity_difference,
            "demographic_parity_ratio": self.demographic_parity_ratio,
            "equal_opportunity_difference": self.equal_opportunity_difference,
            "equalized_odds_difference": self.equalized_odds_difference,
        }


def _spread(values: list[Fraction | None]) -> Fraction | None:
    """The largest difference between the groups' rates, over the groups where the rate is
    defined: undefined when fewer than two are (nothing is compared, and a difference of 0
    would pass every rule as if the groups agreed)."""
    defined = [v for v in values if v is not None]
    return max(defined) - min(defined) if len(defined) >= 2 else None


def _single_group(attribute: str, names: list[str], scope: str) -> EvaluationWarning:
    values = [n for n in names if n != NULL_GROUP]
    if not values:
        what = "is missing on every row"
    else:
        besides = " besides missing values" if NULL_GROUP in names else ""
        what = f"holds one value ({values[0]!r}){besides}"
    return EvaluationWarning(
        "SINGLE_GROUP",
        f"protected attribute {attribute!r} {what}: fairness compares two groups or more, so "
        "its disparities are undefined",
        scope,
    )


def fairness_report(
    attribute: str,
    groups: Groups,
    y_positive: np.ndarray,
    pred_positive: np.ndarray,
    positive_class: str,
    checkpoint: Callable[[], None] | None = None,
) -> FairnessReport:
    """Group rates and disparities for boolean truth and prediction masks of the positive class;
    ``checkpoint`` is called before each group, and what it raises ends the computation (an
    evaluation being stopped)."""
    scope = f"fairness:{attribute}"
    warnings: list[EvaluationWarning] = []
    per_group = []
    selection: list[Fraction] = []
    tprs: list[Fraction | None] = []
    fprs: list[Fraction | None] = []
    for name, rows in zip(groups.names, groups.rows, strict=True):
        if checkpoint is not None:
            checkpoint()
        yt = y_positive[rows]
        yp = pred_positive[rows]
        n_pos = int(np.count_nonzero(yt))
        n_neg = len(rows) - n_pos
        selection.append(Fraction(int(np.count_nonzero(yp)), len(rows)))
        tprs.append(_rate(int(np.count_nonzero(yp & yt)), n_pos))
        fprs.append(_rate(int(np.count_nonzero(yp & ~yt)), n_neg))
        per_group.append(
            GroupMetrics(
                group=name,
                count=len(rows),
                selection_rate=float(selection[-1]),
                tpr=_float(tprs[-1]),
                fpr=_float(fprs[-1]),
                accuracy=float(Fraction(int(np.count_nonzero(yp == yt)), len(rows))),
            )
        )
        if len(rows) < SMALL_GROUP_ROWS:
            warnings.append(
                EvaluationWarning(
                    "GROUP_TOO_SMALL",
                    f"group {name!r} has {len(rows)} row{'s' * (len(rows) != 1)}, fewer than "
                    f"{SMALL_GROUP_ROWS}: its rates, and the disparities they enter, rest on "
                    "too few rows to compare reliably",
                    scope,
                )
            )
        if n_pos == 0 or n_neg == 0:
            missing = "positive" if n_pos == 0 else "negative"
            warnings.append(
                EvaluationWarning(
                    "GROUP_SINGLE_CLASS",
                    f"group {name!r} has no {missing} row; its "
                    f"{'TPR' if n_pos == 0 else 'FPR'} is undefined and left out of the "
                    "disparities",
                    scope,
                )
            )
    dp_difference = dp_ratio = eo_difference = odds_difference = None
    if sum(name != NULL_GROUP for name in groups.names) < 2:
        warnings.append(_single_group(attribute, groups.names, scope))
    else:
        # Rows whose attribute is missing are no group of the attribute: their figures are
        # reported, and they enter no disparity.
        compared = [i for i, name in enumerate(groups.names) if name != NULL_GROUP]
        selected = [selection[i] for i in compared]
        top, bottom = max(selected), min(selected)
        tpr_diff = _spread([tprs[i] for i in compared])
        fpr_diff = _spread([fprs[i] for i in compared])
        odds = [d for d in (tpr_diff, fpr_diff) if d is not None]
        dp_difference = top - bottom
        dp_ratio = bottom / top if top > 0 else None
        eo_difference = tpr_diff
        odds_difference = max(odds) if odds else None
    return FairnessReport(
        attribute=attribute,
        positive_class=positive_class,
        groups=per_group,
        demographic_parity_difference=_float(dp_difference),
        demographic_parity_ratio=_float(dp_ratio),
        equal_opportunity_difference=_float(eo_difference),
        equalized_odds_difference=_float(odds_difference),
        warnings=warnings,
    )
