"""Running the model over the dataset in chunks, and reading its outputs as scores and classes.

Classification scores become a probability matrix, decided for the whole matrix at once:

* when every value lies in [0, 1] (within 1e-6), the scores are per-class probabilities:
  they are clipped to [0, 1] and each row is divided by its sum, as scikit-learn's
  ``OneVsRestClassifier.predict_proba`` does with independent sigmoid heads. Rows that sum to
  1 within 1e-3 (a softmax in float16, say) are only tidied; when some row is further from 1
  the report carries a ``PROBABILITIES_RENORMALISED`` warning, and a row of zeros becomes
  uniform;
* otherwise the scores are logits and pass through softmax, with a
  ``SCORES_NOT_PROBABILITIES`` warning.

The rule applies to the matrix, not row by row: one output head is either probabilities or
logits, and a logit row that happened to fall inside [0, 1] must not be renormalised while
its neighbours are softmaxed, which would leave rows on different scales for AUC and
calibration. A single float column stands for the second class of a binary problem: it is its
probability when every value lies in [0, 1] (within 1e-6; clipped), and otherwise its logit (a
decision-function score, as scikit-learn's binary LinearSVC or RidgeClassifier give it through
skl2onnx), which a sigmoid turns into the probability, with a ``SCORES_NOT_PROBABILITIES``
warning. The sigmoid keeps the scores' order, so ranking metrics equal those of the scores
themselves, and the second class is predicted where the score is above 0, as those models
decide; only where a probability rounds to exactly 1 in float64 (a score above about 37, or
below about -37 for the first class's probability) do different scores tie. Non-finite
scores make the output unusable.

Where the graph shows the scores to be a linear or SVM classifier's decision-function values
(``LinearClassifier`` or ``SVMClassifier`` without a post-transform or Platt scaling, up to
ops that only select or reshape them), they are read as logits whatever their range: a
strongly regularised model's margins may all fall inside [0, 1], and read as probabilities
they would be cut at 0.5 instead of 0.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort
import pyarrow as pa

from controlplane.evaluation._errors import EvaluationWarning, invalid
from controlplane.evaluation._inputs import InputPlan, build_feeds
from controlplane.evaluation._model import ModelGraph, OutputPlan, observed_classes

#: Share of the progress scale that inference covers; the metrics take the rest.
INFERENCE_SHARE = 0.9
#: Rows turned into model inputs at once (rounded down to whole model runs): a model run of
#: fewer rows reads a slice of them, so that small runs do not convert each column again.
FEED_ROWS = 65_536
#: How far outside [0, 1] a score may stray and still count as a probability (float rounding).
_PROBABILITY_SLACK = 1e-6
#: How far from 1 a row of probabilities may sum before the report warns about it.
_SUM_TOLERANCE = 1e-3


class RunControl:
    """Stops an evaluation from another thread (a cancel, a time limit, a server stopping).

    :meth:`stop` records why and sets ONNX Runtime's terminate flag, so that a model run in
    progress ends at its next node (a graph looping practically forever included); the
    evaluation then raises the recorded exception, from the model run or from its next
    :meth:`check`.
    """

    def __init__(self) -> None:
        self.run_options = ort.RunOptions()
        self._reason: BaseException | None = None
        self._lock = threading.Lock()

    def stop(self, reason: BaseException) -> None:
        """Stop the evaluation with ``reason`` (the first reason given wins)."""
        with self._lock:
            if self._reason is None:
                self._reason = reason
        self.run_options.terminate = True

    @property
    def stopped(self) -> BaseException | None:
        """Why the evaluation was stopped, or None."""
        with self._lock:
            return self._reason

    def check(self) -> None:
        """Raise the reason the evaluation was stopped, if it was."""
        reason = self.stopped
        if reason is not None:
            raise reason


@dataclass
class RawOutputs:
    """The score output (float64, one row per dataset row) and the label output, if any."""

    scores: np.ndarray
    labels: np.ndarray | None


def run_chunks(
    session: ort.InferenceSession,
    inputs: InputPlan,
    outputs: OutputPlan,
    table: pa.Table,
    chunk_rows: int,
    progress: Callable[[float], None] | None,
    control: RunControl | None = None,
) -> RawOutputs:
    """Run the model over ``table`` in runs of ``chunk_rows`` rows, reporting progress after
    each; ``control`` can stop it, a model run in progress included."""
    names = [outputs.score] + ([outputs.label] if outputs.label else [])
    scores: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    total = table.num_rows
    block_rows = max(FEED_ROWS // chunk_rows, 1) * chunk_rows
    for block_start in range(0, total, block_rows):
        if control is not None:
            control.check()
        block = build_feeds(inputs, table.slice(block_start, block_rows))
        block_len = min(block_rows, total - block_start)
        for offset in range(0, block_len, chunk_rows):
            if control is not None:
                control.check()
            rows = min(chunk_rows, block_len - offset)
            feeds = {k: v[offset : offset + rows] for k, v in block.items()}
            result = _run(session, names, feeds, control, block_start + offset)
            for name, value in zip(names, result, strict=True):
                if not isinstance(value, np.ndarray) or value.shape[:1] != (rows,):
                    raise invalid(
                        "UNUSABLE_MODEL_OUTPUT",
                        f"output {name!r} did not give one entry per row for {rows} rows",
                        output=name,
                    )
            scores.append(np.asarray(result[0], dtype=np.float64))
            if outputs.label:
                labels.append(np.asarray(result[1]).reshape(-1))
            if progress is not None:
                progress(INFERENCE_SHARE * (block_start + offset + rows) / total)
    return RawOutputs(np.concatenate(scores), np.concatenate(labels) if labels else None)


def _run(
    session: ort.InferenceSession,
    names: list[str],
    feeds: dict[str, np.ndarray],
    control: RunControl | None,
    start: int,
) -> list[Any]:
    """One model run over the rows from ``start``; MODEL_RUN_FAILED unless it was stopped."""
    try:
        return session.run(names, feeds, control.run_options if control else None)
    except Exception as err:
        if control is not None:
            control.check()
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise invalid("MODEL_RUN_FAILED", f"the model failed on rows {start}+: {first}") from None


def _unusable(name: str, why: str) -> Exception:
    return invalid("UNUSABLE_MODEL_OUTPUT", f"output {name!r} {why}", output=name)


def probabilities(
    scores: np.ndarray,
    name: str,
    warnings: list[EvaluationWarning],
    *,
    may_be_regression: bool = False,
    margins: bool = False,
) -> np.ndarray:
    """The ``[n, k]`` probability matrix a classifier's score output stands for (see the
    module docstring).

    ``margins`` says that the graph shows the scores to be decision-function values (a linear
    or SVM classifier without a post-transform): they are read as logits whatever their range.

    ``may_be_regression`` says that nothing but the output's name or op made the model a
    classifier: the task was not given and the model has no label output. A single column
    outside [0, 1] is then refused (UNUSABLE_MODEL_OUTPUT, naming both tasks to choose from)
    instead of read as a logit, since it may as well be a regression prediction.
    """
    bad = int(np.count_nonzero(~np.isfinite(scores).reshape(len(scores), -1).all(axis=1)))
    if bad:
        raise _unusable(
            name,
            f"holds NaN or infinite scores on {bad} rows; missing feature values are a "
            "common cause: fill or drop them",
        )
    if scores.ndim == 1 or (scores.ndim == 2 and scores.shape[1] == 1):
        column = scores.reshape(-1)
        if not margins and _within_unit(column):
            p = np.clip(column, 0.0, 1.0)
            return np.column_stack([1.0 - p, p])
        if may_be_regression and not margins:
            raise _unusable(
                name,
                "is one column of values outside [0, 1], so no probability; set the task to "
                "'classification' to read them as the second class's logits (decision-"
                "function scores), or to 'regression' to read them as predictions",
            )
        warnings.append(
            _not_probabilities(
                name,
                "a sigmoid was applied to treat its values as the second class's logits "
                "(decision-function scores)",
            )
        )
        return _softmax(np.column_stack([np.zeros_like(column), column]))
    if scores.ndim != 2:
        raise _unusable(name, f"has {scores.ndim} dimensions; a classifier needs [-1, C]")
    if not margins and _within_unit(scores):
        return _renormalised(np.clip(scores, 0.0, 1.0), name, warnings)
    warnings.append(_not_probabilities(name, "softmax was applied to treat its values as logits"))
    return _softmax(scores)


def _within_unit(scores: np.ndarray) -> bool:
    """Whether every score is a probability, up to float rounding."""
    return bool(
        np.all(scores >= -_PROBABILITY_SLACK) and np.all(scores <= 1.0 + _PROBABILITY_SLACK)
    )


def _not_probabilities(name: str, done: str) -> EvaluationWarning:
    return EvaluationWarning(
        "SCORES_NOT_PROBABILITIES",
        f"output {name!r} does not hold probabilities (values in [0, 1]); {done}",
        "model",
    )


def _softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``[n, k]`` logits, shifted by each row's maximum so that no exp
    overflows; of ``[0, s]`` it is ``[1 - sigmoid(s), sigmoid(s)]``."""
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _renormalised(p: np.ndarray, name: str, warnings: list[EvaluationWarning]) -> np.ndarray:
    """Rows of ``p`` (values in [0, 1]) divided by their sums, warning when some sum is off 1."""
    sums = p.sum(axis=1)
    off = np.abs(sums - 1.0) > _SUM_TOLERANCE
    if np.any(off):
        zero = sums == 0.0
        detail = f"; {int(zero.sum())} rows of zeros were made uniform" if zero.any() else ""
        warnings.append(
            EvaluationWarning(
                "PROBABILITIES_RENORMALISED",
                f"output {name!r} holds per-class probabilities whose rows do not sum to 1 "
                f"(on {int(off.sum())} rows; row sums range from {sums.min():.4g} to "
                f"{sums.max():.4g}, as independent sigmoid heads give); each row was divided "
                f"by its sum{detail}",
                "model",
            )
        )
        p = np.where(zero[:, None], 1.0, p)
        sums = np.where(zero, p.shape[1], sums)
    return p / sums[:, None]


#: Rows without tied scores a binary model must have, all of them labelled with the less
#: probable class, before its score columns are read in the reverse order.
_REVERSED_MIN_ROWS = 20


def _columns_reversed(proba: np.ndarray, predicted: np.ndarray, labels: np.ndarray) -> bool:
    """Whether a binary model's label output names the less probable column's class on every
    row without tied scores (at least ``_REVERSED_MIN_ROWS`` of them): its score columns are
    in the reverse order of its classes."""
    untied = proba[:, 0] != proba[:, 1]
    if int(np.count_nonzero(untied)) < _REVERSED_MIN_ROWS:
        return False
    argmin = np.argmin(proba[untied], axis=1)
    return bool(np.all(predicted[argmin] == labels[untied]))


def resolve_classes(
    graph: ModelGraph,
    proba: np.ndarray,
    labels: np.ndarray | None,
    given: Sequence[Any] | None,
    warnings: list[EvaluationWarning],
) -> list[Any]:
    """The class labels in probability-column order.

    A binary model whose label output is the less probable class on every row without tied
    scores has its two columns of ``proba`` swapped in place (SCORE_COLUMNS_REVERSED).

    In order of preference: ``given``; the graph's class table; the classes read off the label
    output of this run; ``0..k-1`` when the model has no label output, or when its integer
    labels agree with the column index wherever seen. A boolean label output gives
    ``[False, True]`` unless the run shows the columns the other way round. CLASSES_UNKNOWN
    otherwise.
    """
    k = proba.shape[1]
    if given is not None:
        if len(given) != k:
            raise invalid(
                "CLASSES_MISMATCH",
                f"{len(given)} classes were given but the model scores {k}",
            )
        return [v.item() if isinstance(v, np.generic) else v for v in given]
    if labels is None:
        return list(range(k))
    argmax = np.argmax(proba, axis=1)
    if labels.dtype.kind == "b":
        classes = observed_classes(labels, argmax, k) or ([False, True] if k == 2 else None)
    else:
        classes = graph.classes(k) or observed_classes(labels, argmax, k)
        if classes is None and labels.dtype.kind in "iu" and np.all(labels == argmax):
            classes = list(range(k))
    if classes is None:
        # Two columns may be one score column read as a binary classifier's, when the model
        # is a regressor whose integer output was taken for its labels.
        other = "; if the model is a regressor, set the task to 'regression'" if k == 2 else ""
        raise invalid(
            "CLASSES_UNKNOWN",
            f"cannot tell which class each of the model's {k} probability columns stands for; "
            f"pass the class labels in column order{other}",
        )
    predicted = np.asarray(classes, dtype=labels.dtype if labels.dtype.kind != "O" else object)
    if k == 2 and _columns_reversed(proba, predicted, labels):
        warnings.append(
            EvaluationWarning(
                "SCORE_COLUMNS_REVERSED",
                f"on every one of the rows without tied scores the model's label output is the "
                f"less probable class: its score columns stand for {classes[1]!r} then "
                f"{classes[0]!r} (as skl2onnx exports a binary SVC without probabilities), "
                "and were swapped",
                "model",
            )
        )
        proba[:] = proba[:, ::-1].copy()
        argmax = 1 - argmax
    disagree = int(np.count_nonzero(predicted[argmax] != labels))
    if disagree:
        warnings.append(
            EvaluationWarning(
                "LABEL_OUTPUT_DISAGREES",
                f"on {disagree} rows the model's label output is not the most probable class "
                "(tied probabilities or a decision threshold); metrics use the most probable "
                "class",
                "model",
            )
        )
    return classes
