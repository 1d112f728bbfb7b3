"""A real control plane for managed-sidecar tests, in the test's own process on SQLite: the
test registers versions of the ``artifacts`` models, creates deployment ``fraud``, moves it
with real rollouts, and reads back the window reports the control plane stored.

Tests import the fixtures they use (``real_plane``, ``real_managed``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sidecar_helpers import managed_sidecars

from controlplane.domain.deployments import WindowReport
from controlplane.store import Store
from controlplane.store.deployment_repos import Deployments
from modelplane import Client
from tests.controlplane.conftest import RunningControlPlane, start_controlplane
from tests.rollouts.harness import wait_for

NAME = "fraud"
#: Guards that always pass: a rollout started with them holds until the test moves it.
HOLD_CANARY = ["candidate.error_rate <= 1"]
HOLD_SHADOW = ["shadow.error_rate <= 1"]


@dataclass
class RealPlane:
    """A running control plane, a client of it, and a store on its database."""

    running: RunningControlPlane
    client: Client
    store: Store
    tmp: Path

    @property
    def address(self) -> str:
        return self.running.address

    def register(
        self, models: dict[int, bytes], model: str = NAME, trains: dict[int, Any] | None = None
    ) -> None:
        """Create ``model`` and register ``models`` (number -> ONNX bytes, numbered 1, 2, ...)
        as its versions of those numbers; ``trains`` (number -> pyarrow table) gives a version
        a ``train`` dataset, of which the control plane builds the version's baseline."""
        import pyarrow.parquet as pq

        self.client.create_model(model)
        for number in sorted(models):
            path = self.tmp / f"{model}-v{number}.onnx"
            path.write_bytes(models[number])
            datasets = {}
            if trains and number in trains:
                datasets["train"] = self.tmp / f"{model}-v{number}-train.parquet"
                pq.write_table(trains[number], datasets["train"])
            got = self.client.register_version(
                model, path, datasets=datasets, capture_env=False
            ).version
            assert got == number, f"version {number} was registered as {got}"

    def deploy(
        self,
        models: dict[int, bytes],
        champion: int = 1,
        name: str = NAME,
        trains: dict[int, Any] | None = None,
    ) -> None:
        """Register ``models`` (with ``trains``, see :meth:`register`) and create deployment
        ``name`` serving ``champion``."""
        self.register(models, name, trains)
        self.client.create_deployment(name, model=name, champion_version=champion)

    def canary(self, candidate: int, percent: float, name: str = NAME) -> str:
        """Start a canary of ``candidate`` whose first step gives it ``percent`` and never ends
        (an hour and a million requests, guards that pass); returns the rollout's id."""
        steps = [percent] if percent >= 100 else [percent, 100.0]
        return self._held(name, candidate, "canary", HOLD_CANARY, steps=steps)

    def shadow(self, candidate: int, fraction: float, name: str = NAME) -> str:
        """Start a shadow rollout of ``candidate`` copying ``fraction`` of requests that holds
        until the test moves it; returns the rollout's id."""
        return self._held(name, candidate, "shadow", HOLD_SHADOW, shadow_fraction=fraction)

    def _held(
        self, name: str, candidate: int, strategy: str, guards: list[str], **settings: Any
    ) -> str:
        """Start a rollout that waits an hour and a million requests, under guards that pass."""
        d = self.client.start_rollout(
            name,
            candidate,
            strategy=strategy,
            step_duration=3600,
            min_requests=10**6,
            guards=guards,
            **settings,
        )
        return str(d.rollout.id)

    @property
    def reports(self) -> list[WindowReport]:
        """Every window report the control plane stored for ``fraud``, in arrival order."""
        return self.reports_of(NAME)

    def reports_of(self, name: str) -> list[WindowReport]:
        """Every window report the control plane stored for deployment ``name``, in arrival
        order."""
        later = datetime.now(UTC) + timedelta(days=1)
        with self.store.read() as tx:
            stored = Deployments(tx.session).reports_before(name, later)
        return sorted(stored, key=lambda r: r.id)

    def wait_reports(
        self,
        predicate: Callable[[list[WindowReport]], Any],
        timeout: float = 20.0,
        name: str = NAME,
    ) -> list[WindowReport]:
        """Wait until ``predicate(stored reports of name)`` holds; returns the reports."""
        out: list[list[WindowReport]] = []

        def holds() -> bool:
            out[:] = [self.reports_of(name)]
            return bool(predicate(out[0]))

        wait_for(holds, timeout, "the stored reports to satisfy the condition", interval=0.1)
        return out[0]


@pytest.fixture
def real_plane(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RealPlane]:
    """A control plane on SQLite asking for reports every 0.3 s; a test parametrizing it
    indirectly passes settings of its own (``{"regression_tolerance": 0.01}``)."""
    settings: dict[str, Any] = {"report_interval_seconds": 0.3, **getattr(request, "param", {})}
    running = start_controlplane(tmp_path, f"sqlite:///{tmp_path / 'cp.db'}", **settings)
    store: Store | None = None
    try:
        store = Store.open(running.db_url, migrate=False)
        with running.client() as client:
            yield RealPlane(running, client, store, tmp_path)
    finally:
        running.handle.stop(0)
        if store is not None:
            store.close()


@pytest.fixture
def real_managed(real_plane: RealPlane, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start in-process managed sidecars of deployment ``fraud`` on ``real_plane``:
    ``real_managed(log_settings=None, **settings)``; all stop at teardown, which fails when
    the control plane refused (or the sidecar dropped) any of their reports."""
    with managed_sidecars(real_plane.address, tmp_path) as factory:
        yield factory
        started = list(factory.handles)
    # The tests read the reports the control plane stored; one it refused would be missing
    # from them without a trace, and a check on it could not fail.
    for h in started:
        assert h.reporter.refused == 0 and h.reporter.dropped == 0, (
            f"reports refused {h.reporter.refused_codes}, dropped {h.reporter.dropped}"
        )
