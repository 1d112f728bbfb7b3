"""Concurrent CreateModel calls for one id: one creates the model, every other is refused
with ALREADY_EXISTS (MODEL_EXISTS), whether it saw the winner's row or lost the insert race
to it (on PostgreSQL, two transactions can both find no row and both insert)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from modelplane.errors import AlreadyExists
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane

CALLERS = 8


def test_concurrent_creates_of_one_model_are_refused_with_model_exists(
    controlplane_any: RunningControlPlane,
) -> None:
    clients = [controlplane_any.client() for _ in range(CALLERS)]
    try:
        for c in clients:
            c.list_models_page(page_size=1)  # connected before the race starts
        for _ in range(10):
            model_id = unique()
            start = threading.Barrier(CALLERS)

            def create(i: int, model_id: str = model_id, start: threading.Barrier = start) -> str:
                start.wait()
                try:
                    clients[i].create_model(model_id)
                except AlreadyExists as exc:
                    return exc.reason
                return "OK"

            with ThreadPoolExecutor(CALLERS) as pool:
                outcomes = sorted(pool.map(create, range(CALLERS)))
            assert outcomes == ["MODEL_EXISTS"] * (CALLERS - 1) + ["OK"], outcomes
    finally:
        for c in clients:
            c.close()
