"""Models, data and waiting for the end-to-end rollout tests (processes and traffic come from
:mod:`modelplane.testing.processes` and :mod:`modelplane.testing.traffic`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from controlplane.store import Store
from modelplane import Client
from modelplane.testing.onnx_models import mlp, save
from tests.controlplane.conftest import start_controlplane

FEATURES = 8
#: A client of a control plane, and a store on its database.
Plane = tuple[Client, Store]


@contextlib.contextmanager
def client_and_store(tmp: Path, db_url: str) -> Iterator[Plane]:
    """A client of a control plane of its own on ``db_url``, and a store on its database."""
    running = start_controlplane(tmp, db_url)
    store = Store.open(db_url)
    try:
        with running.client() as c:
            yield c, store
    finally:
        running.handle.stop(0)
        store.close()


def register(client: Client, tmp: Path, model: str, **kinds: Any) -> dict[str, int]:
    """Create ``model`` and register one version per keyword: a dict of ``mlp`` keyword
    arguments, or an ONNX model; returns key → version number."""
    client.create_model(model)
    out = {}
    for key, spec in kinds.items():
        onnx_model = mlp(FEATURES, (16,), 2, **spec) if isinstance(spec, dict) else spec
        path = save(onnx_model, tmp / f"{model}-{key}.onnx")
        out[key] = client.register_version(model, path, capture_env=False).version
    return out


def rows(n: int, seed: int = 0) -> np.ndarray[Any, Any]:
    """``n`` feature rows like the ones the models were built for."""
    return np.random.default_rng(seed).standard_normal((n, FEATURES)).astype(np.float32)


def start_held_canary(client: Client, deployment: str, candidate: int) -> None:
    """Start a canary of ``candidate`` at 50% whose step never completes (an hour and a million
    requests) and whose guard always passes: it holds until the test moves it."""
    client.start_rollout(
        deployment,
        candidate,
        strategy="canary",
        steps=[50, 100],
        step_duration=3600,
        min_requests=10**6,
        guards=["candidate.error_rate <= 1"],
    )


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail saying ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
