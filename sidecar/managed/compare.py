"""Mergeable per-window counts of one arm, and of champion/shadow pairs (Numba kernels).

Histograms have fixed layouts, so the same buckets come from every replica and window and
merge by adding counts:

- latency: seconds, 10 buckets per decade on log10 from 10 µs to 100 s;
- probability scores: 50 equal buckets over [0, 1] (a score of exactly 1 is in the last one);
- regression values: 240 equal buckets on the symmetric log ``sign(x) * log10(1 + |x|)`` over
  [-12, 12], i.e. values within ±(10¹² - 1) (``symlog`` on the wire).

Layouts keep their bounds on the scale; the wire form gives them in the value's units, as the
proto's ``Histogram`` says.

The *label rule* turns the first output into a predicted label: argmax over the last axis
for ``[-1, K]`` float scores (K >= 2), ``score >= 0.5`` for ``[-1]``/``[-1, 1]`` probabilities
(an output made by Sigmoid or Softmax, or named ``*prob*``), the value itself for integer
outputs (whose scores then come from a second, float output when there is one). A first
``[-1]``/``[-1, 1]`` float output that is no probability is a classifier's score too when an
integer or boolean column output is named as a label (``*label*``): that output gives the
labels. Which float column is a probability, and which output a label, is the control plane
evaluation's rule too (:mod:`modelplane.output_kinds`). Any other ``[-1]``/``[-1, 1]`` float
output is a regression value: no label; a prediction is correct, and a shadow pair agrees,
while the relative difference stays within the tolerance.

An arm's summary counts predicted labels by value, at most :data:`MAX_LABELS` of them (what
the control plane takes): the most frequent of the window, ties going to the smaller label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numba as nb
import numpy as np

from modelplane.output_kinds import is_label_name, is_probability, output_producers
from modelplane.v1 import deployments_pb2 as dpb
from sidecar.signature import Signature, TensorSpec

Array = np.ndarray[Any, Any]

_LINEAR, _LOG, _SYMLOG = 0, 1, 2


@dataclass(frozen=True)
class Layout:
    """Fixed buckets of a histogram (see the module docstring)."""

    low: float
    high: float
    buckets: int
    mode: int = _LINEAR
    #: Whether a value equal to ``high`` counts in the last bucket (probabilities).
    closed_top: bool = False

    @property
    def log_scale(self) -> bool:
        """Whether the buckets are equal on log10 of the value."""
        return self.mode == _LOG

    def unscaled(self, t: float) -> float:
        """The value whose position on this layout's scale is ``t``."""
        if self.mode == _LOG:
            return float(10.0**t)
        if self.mode == _SYMLOG:
            return math.copysign(10.0 ** abs(t) - 1.0, t)
        return t


LATENCY = Layout(-5.0, 2.0, 70, _LOG)
PROBABILITY = Layout(0.0, 1.0, 50, _LINEAR, closed_top=True)
REGRESSION = Layout(-12.0, 12.0, 240, _SYMLOG)


@nb.njit(cache=True, nogil=True)
def _fill(values, mode, low, high, closed_top, counts, extra):  # pragma: no cover - compiled
    """Count ``values`` into ``counts``; ``extra`` holds underflow, overflow and sum."""
    n = counts.shape[0]
    scale = n / (high - low)
    for i in range(values.shape[0]):
        v = values[i]
        if not math.isfinite(v):
            continue
        extra[2] += v
        if mode == 1:
            if v <= 0.0:
                extra[0] += 1
                continue
            t = math.log10(v)
        elif mode == 2:
            t = math.log10(1.0 + abs(v))
            if v < 0:
                t = -t
        else:
            t = v
        if t < low:
            extra[0] += 1
        elif t >= high:
            if closed_top and t == high:
                counts[n - 1] += 1
            else:
                extra[1] += 1
        else:
            k = int((t - low) * scale)
            if k >= n:
                k = n - 1
            counts[k] += 1


@nb.njit(cache=True, nogil=True)
def _argmax_rows(scores):  # pragma: no cover - compiled
    rows, k = scores.shape
    out = np.empty(rows, dtype=np.int64)
    for i in range(rows):
        best = 0
        value = scores[i, 0]
        for j in range(1, k):
            if scores[i, j] > value:
                value = scores[i, j]
                best = j
        out[i] = best
    return out


@nb.njit(cache=True, nogil=True)
def _pairs(a, b, labels_a, labels_b, use_labels, tolerance):  # pragma: no cover - compiled
    """Disagreements and the sum of absolute score differences of paired rows."""
    disagree = 0
    total = 0.0
    for i in range(a.shape[0]):
        diff = abs(a[i] - b[i])
        if math.isfinite(diff):
            total += diff
        if use_labels:
            if labels_a[i] != labels_b[i]:
                disagree += 1
        elif not diff <= tolerance * max(abs(a[i]), abs(b[i])):
            disagree += 1
    return disagree, total


class Hist:
    """A histogram being filled."""

    __slots__ = ("counts", "extra", "layout")

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.counts = np.zeros(layout.buckets, dtype=np.int64)
        self.extra = np.zeros(3, dtype=np.float64)

    def add(self, values: Array) -> None:
        """Count ``values`` (any float array; NaN and infinities are skipped)."""
        values = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
        if values.size:
            lay = self.layout
            _fill(values, lay.mode, lay.low, lay.high, lay.closed_top, self.counts, self.extra)

    @property
    def total(self) -> int:
        """Values counted, underflow and overflow included."""
        return int(self.counts.sum() + self.extra[0] + self.extra[1])

    def to_proto(self) -> Any:
        """The wire form."""
        lay = self.layout
        return dpb.Histogram(
            low=lay.unscaled(lay.low),
            high=lay.unscaled(lay.high),
            log_scale=lay.log_scale,
            symlog=lay.mode == _SYMLOG,
            counts=self.counts.tolist(),
            underflow=int(self.extra[0]),
            overflow=int(self.extra[1]),
            sum=float(self.extra[2]),
        )


def warm_kernels() -> None:
    """Compile (or load from cache) every kernel, so the first window does not wait."""
    for layout in (LATENCY, PROBABILITY, REGRESSION):
        Hist(layout).add(np.array([0.5]))
    _argmax_rows(np.zeros((1, 2), dtype=np.float64))
    empty_i = np.zeros(1, dtype=np.int64)
    _pairs(np.zeros(1), np.zeros(1), empty_i, empty_i, True, 0.1)


def _producer_ops(path: Path | None) -> dict[str, str]:
    """Output name -> op type of the node producing it (empty when unreadable)."""
    if path is None:
        return {}
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return {}
    return output_producers(model.graph)


def _column(spec: TensorSpec) -> bool:
    return spec.rank == 1 or (spec.rank == 2 and spec.tail == (1,))


def _classes(spec: TensorSpec) -> int:
    return spec.tail[0] if spec.rank == 2 and spec.tail is not None else 0


@dataclass(frozen=True)
class OutputRule:
    """How one version's outputs become labels, scores or regression values."""

    label_output: str | None = None
    label_mode: str = ""
    score_output: str | None = None
    score_mode: str = ""
    layout: Layout | None = None

    @property
    def regression(self) -> bool:
        """Whether the version predicts values rather than labels."""
        return self.layout is REGRESSION

    @classmethod
    def of(cls, signature: Signature, path: Path | None = None) -> OutputRule:
        """Apply the label rule to ``signature`` (``path``: the ONNX file, for the ops)."""
        if not signature.outputs:
            return cls()
        first = signature.outputs[0]
        floats = first.dtype.kind == "f"
        if first.dtype.kind in "iub" and _column(first):
            for spec in signature.outputs[1:2]:
                if spec.dtype.kind == "f" and _classes(spec) >= 2:
                    mode = "column1" if _classes(spec) == 2 else "max"
                    return cls(first.name, "value", spec.name, mode, PROBABILITY)
                if spec.dtype.kind == "f" and _column(spec):
                    return cls(first.name, "value", spec.name, "value", PROBABILITY)
            return cls(first.name, "value")
        if floats and _classes(first) >= 2:
            mode = "column1" if _classes(first) == 2 else "max"
            return cls(first.name, "argmax", first.name, mode, PROBABILITY)
        if floats and _column(first):
            op = _producer_ops(path).get(first.name, "")
            if is_probability(first.name, op):
                return cls(first.name, "threshold", first.name, "value", PROBABILITY)
            for spec in signature.outputs[1:]:
                if spec.dtype.kind in "iub" and _column(spec) and is_label_name(spec.name):
                    return cls(spec.name, "value", first.name, "value", PROBABILITY)
            return cls(None, "", first.name, "value", REGRESSION)
        return cls()

    def labels(self, outputs: dict[str, Array]) -> Array | None:
        """Predicted labels (int64, one per row), or None."""
        array = outputs.get(self.label_output) if self.label_output else None
        if array is None or array.ndim == 0:
            return None
        if self.label_mode == "argmax":
            return _argmax_rows(np.ascontiguousarray(array, dtype=np.float64))
        flat = array.reshape(array.shape[0], -1)[:, 0]
        if self.label_mode == "threshold":
            return (flat >= 0.5).astype(np.int64)
        return flat.astype(np.int64)

    def scores(self, outputs: dict[str, Array]) -> Array | None:
        """Scores or regression values (float64, one per row), or None."""
        array = outputs.get(self.score_output) if self.score_output else None
        if array is None or array.ndim == 0:
            return None
        if self.score_mode == "column1":
            return np.asarray(array[:, 1], dtype=np.float64)
        if self.score_mode == "max":
            return np.asarray(array.max(axis=1), dtype=np.float64)
        return np.asarray(array.reshape(array.shape[0], -1)[:, 0], dtype=np.float64)


#: The most predicted labels one arm's summary carries (the control plane refuses a report
#: with more, and keeps as many when it merges reports).
MAX_LABELS = 1024
#: The most distinct labels one arm counts in a window, of which its summary reports the
#: :data:`MAX_LABELS` most frequent: labels first seen after that many are left out.
MAX_COUNTED_LABELS = 16 * MAX_LABELS

#: Status codes counted as the arm's errors (the server or model failed, not the caller).
ERROR_CODES = frozenset(
    {"INTERNAL", "UNKNOWN", "UNAVAILABLE", "DATA_LOSS", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}
)
#: A failure of the model on valid input is the version's error too.
ERROR_REASONS = frozenset({"MODEL_EXECUTION_FAILED", "PREDICTION_LOG_FAILED"})


class ArmCounts:
    """One arm's counts in one window."""

    def __init__(self, arm: str, version: int, layout: Layout | None) -> None:
        self.arm = arm
        self.version = version
        self.requests = 0
        self.errors = 0
        self.rows = 0
        self.latency = Hist(LATENCY)
        self.scores = Hist(layout) if layout is not None else None
        self.labels: dict[int, int] = {}
        #: Rows whose predicted label the summary left out (set by :meth:`to_proto`; see
        #: :meth:`top_labels`).
        self.labels_left_out = 0
        self._unheld = 0
        self.labeled = 0
        self.correct = 0

    def add_requests(self, latencies: list[float], codes: list[str], reasons: list[str]) -> None:
        """Count answered and failed requests. A caller's bad input refused before the model
        ran (any other code) is left out: it says nothing of the version, and counted it would
        dilute the error rate and the latency the guards judge, and make up ``min_requests``."""
        kept: list[float] = []
        for latency, code, reason in zip(latencies, codes, reasons, strict=True):
            if code in ERROR_CODES or reason in ERROR_REASONS:
                self.errors += 1
            elif code != "OK":
                continue
            self.requests += 1
            kept.append(latency)
        self.latency.add(np.asarray(kept, dtype=np.float64))

    def add_rows(self, rows: int, labels: Array | None, scores: Array | None) -> None:
        """Count successfully answered rows with their labels and scores."""
        self.rows += rows
        if scores is not None and self.scores is not None:
            self.scores.add(scores)
        if labels is not None and labels.size:
            values, counts = np.unique(labels, return_counts=True)
            held = self.labels
            for value, count in zip(values.tolist(), counts.tolist(), strict=True):
                if value in held:
                    held[value] += count
                elif len(held) < MAX_COUNTED_LABELS:
                    held[value] = count
                else:
                    self._unheld += count

    def top_labels(self) -> dict[int, int]:
        """The label counts the summary carries: all of them up to :data:`MAX_LABELS`
        labels, else the :data:`MAX_LABELS` most frequent (ties: the smaller label), as the
        control plane keeps when it merges reports. A window counts at most
        :data:`MAX_COUNTED_LABELS` distinct labels, in the order it sees them: rows of labels
        first seen after that are left out too."""
        if len(self.labels) <= MAX_LABELS:
            return dict(self.labels)
        ranked = sorted(self.labels.items(), key=lambda kv: (-kv[1], kv[0]))
        return dict(sorted(ranked[:MAX_LABELS]))

    def to_proto(self) -> Any:
        """The wire form (drift is added by the caller)."""
        summary = dpb.ArmSummary(
            arm=self.arm,
            version=self.version,
            requests=self.requests,
            errors=self.errors,
            rows=self.rows,
            latency=self.latency.to_proto(),
            labeled=self.labeled,
            correct=self.correct,
        )
        if self.scores is not None:
            summary.scores.CopyFrom(self.scores.to_proto())
        top = self.top_labels()
        for label, count in top.items():
            summary.label_counts[label] = count
        self.labels_left_out = self._unheld + sum(self.labels.values()) - sum(top.values())
        return summary


class ShadowCounts:
    """Champion answers paired with the shadow's answers to the same rows, and the shadow's
    latency, in one window."""

    def __init__(self, version: int, layout: Layout | None) -> None:
        self.version = version
        self.pairs = 0
        self.disagreements = 0
        self.abs_diff_sum = 0.0
        self.errors = 0
        self.dropped = 0
        self.champion = Hist(layout) if layout is not None else None
        self.shadow = Hist(layout) if layout is not None else None
        self.latency = Hist(LATENCY)

    def add_latencies(self, record: Any) -> None:
        """Count the latency of each copy the shadow run ``record`` (a
        :class:`~sidecar.observers.BatchRecord`) answered: its share of the session call that
        answered it, ``compute_s`` times the copy's rows over the call's rows (equal shares
        when the call had no rows).

        The shadow worker runs up to 64 queued copies in one call, where the champion answers
        each request in a batch about as large as the concurrency: charged the whole call,
        every copy of a candidate as fast as the champion would read many times slower than
        the champion's requests, and a latency guard would roll it back. A share is the
        candidate's compute time for the copy's rows; it leaves out what a served request
        spends besides (its decoding, its wait in the batcher, a small call's cost beyond its
        rows), so it reads at or below the champion's latency of an equally fast version. The
        copy's wait in the shadow queue is left out too: the worker rests there under its CPU
        budget, which says nothing of the version."""
        counts = record.row_counts
        rows = sum(counts)
        seconds = float(record.compute_s)
        shares = [
            seconds * n / rows if rows > 0 else seconds / len(counts)
            for n, status in zip(counts, record.status, strict=True)
            if status == "OK"
        ]
        if shares:
            self.latency.add(np.asarray(shares, dtype=np.float64))

    def add_pairs(
        self,
        champion: tuple[Array | None, Array | None],
        shadow: tuple[Array | None, Array | None],
        tolerance: float,
    ) -> None:
        """Compare (labels, scores) of the champion with the shadow's for the same rows.

        Labels, when both sides have them, decide disagreement (else the scores within the
        tolerance); score differences and histograms count only rows that both sides scored:
        a side without scores adds no score part at all.
        """
        (la, sa), (lb, sb) = champion, shadow
        use_labels = la is not None and lb is not None and len(la) == len(lb)
        use_scores = sa is not None and sb is not None and len(sa) == len(sb)
        if use_labels and use_scores and len(la) != len(sa):  # type: ignore[arg-type]
            use_scores = False
        if not use_labels and not use_scores:
            return
        if not use_scores:
            self.pairs += len(la)  # type: ignore[arg-type]
            self.disagreements += int(np.count_nonzero(np.asarray(la) != np.asarray(lb)))
            return
        n = len(sa)  # type: ignore[arg-type]
        empty = np.zeros(n, dtype=np.int64)
        disagree, diff = _pairs(
            np.ascontiguousarray(sa, dtype=np.float64),
            np.ascontiguousarray(sb, dtype=np.float64),
            la if use_labels else empty,
            lb if use_labels else empty,
            use_labels,
            tolerance,
        )
        self.pairs += n
        self.disagreements += int(disagree)
        self.abs_diff_sum += float(diff)
        if self.champion is not None and self.shadow is not None:
            self.champion.add(sa)  # type: ignore[arg-type]
            self.shadow.add(sb)  # type: ignore[arg-type]

    def to_proto(self) -> Any:
        """The wire form."""
        summary = dpb.ShadowSummary(
            version=self.version,
            pairs=self.pairs,
            disagreements=self.disagreements,
            abs_diff_sum=self.abs_diff_sum,
            errors=self.errors,
            dropped=self.dropped,
        )
        if self.champion is not None and self.shadow is not None:
            summary.champion_scores.CopyFrom(self.champion.to_proto())
            summary.shadow_scores.CopyFrom(self.shadow.to_proto())
        if self.latency.total:
            # Only when a copy was answered: the control plane counts the copies answered by
            # their latencies (for the dropped rate), and by ``pairs`` without a histogram.
            summary.latency.CopyFrom(self.latency.to_proto())
        return summary


def correct(predicted: float | int, truth: float | int, regression: bool, tolerance: float) -> bool:
    """Whether a prediction matches its ground truth (regression: within the tolerance)."""
    if not regression:
        return int(predicted) == int(truth)
    return abs(float(predicted) - float(truth)) <= tolerance * max(
        abs(float(predicted)), abs(float(truth))
    )
