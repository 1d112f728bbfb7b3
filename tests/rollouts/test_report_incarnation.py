"""A report counted under a deployment that has since been deleted and created again under the
same name is refused (FAILED_PRECONDITION, DEPLOYMENT_REPLACED) and nothing of it is stored:
its records are no evidence about the new deployment, whose generations start over and may
even serve another model. Reports that name the current deployment, and reports of sidecars
that name none, are taken. Through real control planes on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func
from sqlmodel import col, select

from controlplane.store import Store
from controlplane.store.deployment_tables import WindowReportRow
from modelplane.errors import FailedPrecondition
from modelplane.v1 import deployments_pb2 as pb
from tests.controlplane.test_deployments_api import arm, register_versions
from tests.rollouts.harness import Plane, client_and_store

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def plane(tmp_path: Path, db_url: str) -> Iterator[Plane]:
    with client_and_store(tmp_path, db_url) as both:
        yield both


def _stored(store: Store, dep: str) -> int:
    with store.read() as tx:
        query = select(func.count()).where(col(WindowReportRow.deployment_id) == dep)
        return int(tx.session.exec(query).one())


def test_a_report_of_the_deleted_deployment_of_a_name_is_refused(
    plane: Plane, tmp_path: Path
) -> None:
    c, store = plane
    model_id, versions = register_versions(c, tmp_path, 2)
    dep = f"d-{model_id}"
    old = c.create_deployment(dep, model=model_id, champion_version=versions[0])
    c.delete_deployment(dep)
    new = c.create_deployment(dep, model=model_id, champion_version=versions[1])
    assert new.create_time != old.create_time

    def report(sequence: int, created: object | None) -> pb.ReportWindowResponse:
        request = pb.ReportWindowRequest(
            name=f"deployments/{dep}",
            replica="r1",
            sequence=sequence,
            generation=1,
            arms=[arm("champion", versions[0] if created is old.create_time else versions[1], 5)],
        )
        if created is not None:
            request.deployment_create_time.CopyFrom(created)
        return c._call(c.deployments.ReportWindow, request)

    with pytest.raises(FailedPrecondition) as err:
        report(1, old.create_time)
    assert err.value.reason == "DEPLOYMENT_REPLACED"
    assert err.value.metadata["deployment"] == f"deployments/{dep}"
    assert "created at" in err.value.message
    assert _stored(store, dep) == 0
    # The same sequence is not taken as a repeat once the replica reports the new deployment.
    assert report(1, new.create_time).accepted
    # A sidecar that does not say which deployment it counted under is believed.
    assert report(2, None).accepted
    assert _stored(store, dep) == 2
    # The control plane keeps serving the deployment's reports after the refusal.
    assert c.get_deployment(dep).create_time == new.create_time
