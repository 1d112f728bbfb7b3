"""Checking, when a model loads, that batching leaves each request's answers as they are.

A signature can say that every input and output is one row per request row and still hide a
model whose rows depend on each other: a second input that is a set of keys per request (an
attention over ``k[m, d]`` beside queries ``q[n, d]``, the two counts merely equal), or an
output that numbers rows across the whole call (NonMaxSuppression's batch index). Stacking two
requests changes such a model's answers, and no row count or shape would show it. So before a
model is served batched, two small sample requests run alone and stacked, and batching stays
off unless each request gets the same answers both ways.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import structlog

from sidecar.signature import Signature, TensorSpec

log = structlog.get_logger("modelplane.sidecar.batch_check")

Run = Callable[[Sequence[str], dict[str, np.ndarray[Any, Any]]], list[np.ndarray[Any, Any]]]

#: Rows of the two sample requests: unequal, so that a model mixing up counts shows it.
SAMPLE_ROWS = (2, 3)
#: Size of every dim after the first that varies (both requests agree on it, as batched
#: requests must).
FREE_DIM = 2
_WORDS = ("a", "bc", "def", "")


def _sample(spec: TensorSpec, rows: int, rng: np.random.Generator) -> np.ndarray[Any, Any]:
    shape = (rows, *(d if d >= 0 else FREE_DIM for d in spec.shape[1:]))
    if spec.datatype == "BYTES":
        return np.array(rng.choice(_WORDS, size=shape), dtype=object)
    if spec.datatype == "BOOL":
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if spec.dtype.kind in "iu":
        # 0 and 1 only: valid as indices into anything, as categories, as counts.
        return rng.integers(0, 2, size=shape).astype(spec.dtype)
    return rng.standard_normal(shape).astype(spec.dtype)


def _close(alone: np.ndarray[Any, Any], stacked: np.ndarray[Any, Any]) -> bool:
    if alone.shape != stacked.shape:
        return False
    if alone.dtype.kind not in "fc":
        return bool(np.array_equal(alone, stacked))
    # Kernels may block a larger batch differently: allow rounding, not different answers.
    loose = alone.dtype.itemsize <= 2
    wide = alone.astype(np.float64)
    finite = wide[np.isfinite(wide)]
    scale = max(float(np.abs(finite).max()) if finite.size else 0.0, 1.0)
    rtol = 1e-2 if loose else 1e-3
    return bool(np.allclose(wide, stacked, rtol=rtol, atol=rtol * 1e-1 * scale, equal_nan=True))


def _by(alone: np.ndarray[Any, Any], stacked: np.ndarray[Any, Any]) -> str:
    """How far apart two float answers of one shape are, for the log (a GPU kernel's rounding
    past the tolerance looks different from answers that mix requests)."""
    if alone.shape != stacked.shape or alone.dtype.kind not in "fc":
        return ""
    with np.errstate(invalid="ignore"):
        gap = np.abs(alone.astype(np.float64) - stacked.astype(np.float64))
    finite = gap[np.isfinite(gap)]
    return f" by up to {float(finite.max()):.3g}" if finite.size else ""


def stacking_changes_answers(signature: Signature, run: Run) -> str | None:
    """Why rows of several requests must not run as one call, found by running sample requests
    alone and stacked through ``run`` (None: the answers agree, or the model could not run the
    samples at all, when the signature decides alone)."""
    if not signature.batchable:
        return signature.unbatchable
    rng = np.random.default_rng(20261128)
    names = list(signature.output_names)
    requests = [{t.name: _sample(t, rows, rng) for t in signature.inputs} for rows in SAMPLE_ROWS]
    try:
        alone = [run(names, feeds) for feeds in requests]
    except Exception as exc:
        log.info(
            "batching check skipped: the model did not run on sample rows",
            error=str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__,
        )
        return None
    stacked_feeds = {
        t.name: np.concatenate([r[t.name] for r in requests]) for t in signature.inputs
    }
    try:
        stacked = run(names, stacked_feeds)
    except Exception as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        return f"the model runs each sample request alone but fails on the two stacked: {first}"
    total = sum(SAMPLE_ROWS)
    for index, name in enumerate(names):
        out = stacked[index]
        if out.ndim == 0 or out.shape[0] != total:
            return (
                f"output {name!r} has {out.shape[0] if out.ndim else 'no'} rows for {total} "
                "stacked input rows: it is not one row per request row"
            )
        lo = 0
        for rows, answers in zip(SAMPLE_ROWS, alone, strict=True):
            if not _close(answers[index], out[lo : lo + rows]):
                return (
                    f"output {name!r}: a request's rows run stacked with another request's "
                    f"differ from the same rows run alone{_by(answers[index], out[lo : lo + rows])}"
                    " (its answers depend on the other rows of the call)"
                )
            lo += rows
    return None
