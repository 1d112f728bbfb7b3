"""Training the demo's models and writing its datasets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Candidate:
    """One trained model: its ONNX file, parameters and holdout score."""

    onnx: Path
    params: dict[str, str]
    holdout_auc: float


@dataclass
class Trained:
    """What the demo trains: the candidates, the data files, and the rows its client traffic
    sends with their labels (-1 for a training row, whose label is never sent back)."""

    candidates: dict[str, Candidate]
    train: Path
    holdout: Path
    x_traffic: Any
    y_traffic: Any


def train(folder: Path) -> Trained:
    """Three classifiers on the same split, exported to ONNX, and the data as files.

    ``v1`` is a regularised logistic regression, ``v2`` gradient-boosted trees, and ``v3`` a
    logistic regression fitted to inverted labels: a broken build that loads and answers
    fine but disagrees with the champion on almost every row.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    from skl2onnx import to_onnx
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_breast_cancer()
    names = [n.replace(" ", "_") for n in data.feature_names]
    x = data.data.astype(np.float32)
    rows = np.arange(len(x))
    x_tr, x_te, y_tr, y_te, in_train, _ = train_test_split(
        x, data.target, rows, test_size=0.3, random_state=7
    )
    models = {
        "v1": (
            make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000)),
            {"C": "0.05"},
            y_tr,
        ),
        "v2": (
            GradientBoostingClassifier(n_estimators=150, max_depth=2, random_state=0),
            {"n_estimators": "150", "max_depth": "2"},
            y_tr,
        ),
        "v3": (
            make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000)),
            {"C": "0.05", "labels": "inverted by mistake"},
            1 - y_tr,
        ),
    }
    candidates: dict[str, Candidate] = {}
    for key, (clf, params, labels) in models.items():
        clf.fit(x_tr, labels)
        auc = float(roc_auc_score(y_te, clf.predict_proba(x_te)[:, 1]))
        final = clf.steps[-1][1] if hasattr(clf, "steps") else clf
        onx = to_onnx(clf, x_tr[:1], options={id(final): {"zipmap": False}}, target_opset=17)
        path = folder / f"{key}.onnx"
        path.write_bytes(onx.SerializeToString())
        candidates[key] = Candidate(path, params, auc)

    def table(xs: np.ndarray[Any, Any], ys: np.ndarray[Any, Any]) -> pa.Table:
        cols = {n: xs[:, i].astype(np.float64) for i, n in enumerate(names)}
        cols["diagnosis"] = ys.astype(np.int64)
        return pa.table(cols)

    pq.write_table(table(x_tr, y_tr), folder / "train.parquet")
    pacsv.write_csv(table(x_te, y_te), folder / "holdout.csv")
    # Live traffic: every row of the data set, shuffled, as patients from the population the
    # training data (and so the baseline) was drawn from. Replaying only the 171 holdout rows
    # made a drift window of thousands of rows a large sample from a distribution a little off
    # the training data's: the KS test called most features drifted with no drift at all.
    # Ground truth comes back only for the patients the models never saw (-1: none), so that
    # live accuracy measures what the holdout measures instead of scoring training rows.
    order = np.random.default_rng(7).permutation(len(x))
    labels = data.target.astype(np.int64)
    labels[in_train] = -1
    return Trained(
        candidates, folder / "train.parquet", folder / "holdout.csv", x[order], labels[order]
    )
