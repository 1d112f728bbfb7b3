"""A deployment's drift cooldown is bounded (0 to 366 days) where the control plane takes it,
not only in the SDK, and a duration stored before that bound is served within protobuf's
Duration range, so that clients printing it as JSON keep working. Through real control planes
on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import json_format
from sqlalchemy import update
from sqlmodel import col

from controlplane.rollouts.service import SYSTEM
from controlplane.store import Store
from controlplane.store.deployment_tables import DeploymentRow
from modelplane.errors import InvalidArgument
from modelplane.v1 import deployments_pb2 as pb
from tests.controlplane.test_deployments_api import register_versions
from tests.rollouts.harness import client_and_store

DURATION_MAX = 315_576_000_000


def test_a_cooldown_past_a_year_is_refused_and_a_stored_one_served_in_range(
    tmp_path: Path, db_url: str
) -> None:
    with client_and_store(tmp_path, db_url) as (c, store):
        model_id, versions = register_versions(c, tmp_path, 1)
        dep = f"d-{model_id}"
        request = pb.CreateDeploymentRequest(
            deployment_id=dep,
            deployment=pb.Deployment(model=f"models/{model_id}", champion_version=versions[0]),
        )
        request.deployment.drift_thresholds.cooldown.seconds = 400_000_000_000
        with pytest.raises(InvalidArgument) as err:
            c._call(c.deployments.CreateDeployment, request)
        assert err.value.reason == "INVALID_DRIFT_THRESHOLDS"
        assert "366 days" in err.value.message
        request.deployment.drift_thresholds.cooldown.seconds = 366 * 86400
        c._call(c.deployments.CreateDeployment, request)
        _store_cooldown(store, dep, 4e11)
        served = c.get_deployment(dep)
        assert served.drift_thresholds.cooldown.seconds == DURATION_MAX
        json_format.MessageToJson(served)  # raised SerializeToJsonError before
        listed = [d for d in c.list_deployments() if d.name == f"deployments/{dep}"]
        assert listed and listed[0].drift_thresholds.cooldown.seconds == DURATION_MAX


def _store_cooldown(store: Store, dep: str, seconds: float) -> None:
    """What a control plane that did not bound the cooldown stored."""
    with store.write(SYSTEM, "test") as tx:
        row = tx.session.get(DeploymentRow, dep)
        assert row is not None
        thresholds = {**row.drift_thresholds, "cooldown_seconds": seconds}
        tx.session.exec(
            update(DeploymentRow)
            .where(col(DeploymentRow.id) == dep)
            .values(drift_thresholds=thresholds)
        )
