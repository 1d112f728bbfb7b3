"""The end-to-end walkthrough behind ``make demo``, on the embedded SQLite default.

It trains three classifiers on scikit-learn's bundled breast-cancer data (the third one
deliberately broken), starts a control plane, registers the versions with lineage and a
baseline profile, evaluates, gates and approves v1 with two principals, serves a deployment
from a managed sidecar, rolls v2 out as a canary that walks to promotion, tries v3 in shadow
and watches the guards roll it back, injects drift and sees the retraining hook fire, verifies
the audit chain, and prints where the state, logs, metrics and model cards are.

Run it with ``python -m modelplane.demo`` (``make demo``).
"""

from modelplane.demo._main import main

__all__ = ["main"]
