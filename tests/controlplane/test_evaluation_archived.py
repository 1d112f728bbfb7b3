"""An evaluation of a version archived while it ran (or waited for a worker) stores nothing on
the archived version, as Evaluate refuses to start one on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelplane.errors import FailedPrecondition
from tests.controlplane.conftest import start_controlplane
from tests.controlplane.test_evaluation_control import dataset, register, wait_running


def test_an_evaluation_of_a_version_archived_meanwhile_is_not_stored(
    tmp_path: Path, db_url: str
) -> None:
    data = dataset(tmp_path)
    # One worker, held by a model that never returns: the evaluation of `quick` waits for it.
    cp = start_controlplane(tmp_path, db_url, evaluation_workers=1)
    try:
        with cp.client() as c:
            slow_id, slow = register(c, tmp_path, 10**12)
            quick_id, quick = register(c, tmp_path, 1)
            running = c.evaluate(slow_id, slow, data, label="target", compare_to="-")
            wait_running(c, running.name)
            queued = c.evaluate(quick_id, quick, data, label="target", compare_to="-")
            c.archive_version(quick_id, quick)
            c.cancel_operation(running.name)
            with pytest.raises(FailedPrecondition) as err:
                c.operation_result(queued)
            stored = list(c.list_evaluations(quick_id, quick))
            op = c.get_operation(queued.name)
            with pytest.raises(FailedPrecondition) as again:
                c.evaluate(quick_id, quick, data, label="target", compare_to="-")
    finally:
        cp.handle.stop(0)
    assert err.value.reason == "VERSION_ARCHIVED"
    assert "archived while it was being evaluated" in err.value.message
    assert op.done and op.error.code == "FAILED_PRECONDITION" and not op.HasField("result")
    assert stored == []
    assert again.value.reason == "VERSION_ARCHIVED"
