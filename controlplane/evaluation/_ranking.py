"""Threshold-free ranking metrics for one binary problem: ROC AUC and average precision.

Both take ``scores`` (higher means more likely positive) and a boolean ``positive`` mask, and
treat tied scores as one threshold, as the ROC and precision-recall curves do.
"""

from __future__ import annotations

import numpy as np


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve, or None when either class is absent.

    Computed as the Mann-Whitney statistic with average ranks for ties: the probability that a
    random positive scores above a random negative, ties counting one half. This equals the
    trapezoidal area under the ROC curve drawn through every distinct threshold.
    """
    n_pos = int(np.count_nonzero(positive))
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts, dtype=np.float64)
    average_rank = upper - (counts - 1) / 2.0
    rank_sum = float(average_rank[inverse][positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Average precision (the step-wise area under the precision-recall curve), or None when
    there is no positive.

    ``AP = sum_k (R_k - R_{k-1}) * P_k`` over the distinct thresholds in decreasing order, where
    ``P_k`` and ``R_k`` are precision and recall when every score at or above threshold ``k``
    is called positive, and ``R_0 = 0``.
    """
    n_pos = int(np.count_nonzero(positive))
    if n_pos == 0:
        return None
    order = np.argsort(-scores, kind="mergesort")
    ranked = scores[order]
    hits = positive[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]
    tp = np.cumsum(hits, dtype=np.float64)[last_of_tie]
    called = (last_of_tie + 1).astype(np.float64)
    precision = tp / called
    recall = tp / n_pos
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))
