"""Server-side evaluation: run a registered ONNX model over a labelled dataset on CPU and report
metrics, per-slice metrics, group fairness and data validation, in JSON-ready form for storage
and for policies.

:func:`evaluate` does one evaluation; :func:`compare` gives metric deltas between two
evaluations on the same dataset. Metric definitions are in the docstrings of
``_classification``, ``_regression``, ``_fairness`` and ``_validation``.
"""

from controlplane.dataset_size import check_dataset_size
from controlplane.evaluation._classification import (
    CLASSIFICATION_METRICS,
    ECE_EDGES,
    classification_metrics,
    expected_calibration_error,
)
from controlplane.evaluation._engine import MAX_SLICES, TASKS, evaluate
from controlplane.evaluation._errors import EvaluationWarning
from controlplane.evaluation._fairness import FairnessReport, GroupMetrics
from controlplane.evaluation._grouping import NULL_GROUP, OTHER_GROUP
from controlplane.evaluation._predict import RunControl
from controlplane.evaluation._ranking import average_precision, roc_auc
from controlplane.evaluation._regression import REGRESSION_METRICS, regression_metrics
from controlplane.evaluation._report import EvaluationReport, SliceReport, compare
from controlplane.evaluation._validation import FeatureCheck, ValidationReport, ValidationThresholds

__all__ = [
    "CLASSIFICATION_METRICS",
    "ECE_EDGES",
    "MAX_SLICES",
    "NULL_GROUP",
    "OTHER_GROUP",
    "REGRESSION_METRICS",
    "TASKS",
    "EvaluationReport",
    "EvaluationWarning",
    "FairnessReport",
    "FeatureCheck",
    "GroupMetrics",
    "RunControl",
    "SliceReport",
    "ValidationReport",
    "ValidationThresholds",
    "average_precision",
    "check_dataset_size",
    "classification_metrics",
    "compare",
    "evaluate",
    "expected_calibration_error",
    "regression_metrics",
    "roc_auc",
]
