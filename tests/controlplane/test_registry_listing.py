"""Registry lists and writes on both backends: filtered lists ordered by time that must scan
past their first chunk, the model's etag moving when a version is registered, and updates
without an etag under concurrency."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest

from modelplane import Client
from modelplane.errors import Aborted
from modelplane.testing import onnx_models
from modelplane.v1 import registry_pb2
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane

T = TypeVar("T")

#: More models than one scan chunk (64 rows), with matches far enough apart that every step
#: from one match to the next crosses a chunk.
MODELS = 160
PICKED = (3, 80, 150)


def _pages(c: Client, filter: str, order_by: str, page_size: int) -> tuple[list[str], int]:
    """Every model name the list gives, page by page, and how many pages it took (at most 20:
    a list that keeps handing out tokens fails the test instead of running on)."""
    names: list[str] = []
    token = ""
    for pages in range(1, 21):
        request = registry_pb2.ListModelsRequest(
            filter=filter, order_by=order_by, page_size=page_size, page_token=token
        )
        response = c.registry.ListModels(request, metadata=c._metadata, timeout=10)
        names += [m.name for m in response.models]
        token = response.next_page_token
        if not token:
            return names, pages
    raise AssertionError(f"{order_by!r}: still a next_page_token after 20 pages: {names}")


@pytest.mark.parametrize("page_size", [1, 2])
def test_filtered_lists_ordered_by_time_scan_past_the_first_chunk(
    controlplane_any: RunningControlPlane, page_size: int
) -> None:
    tag = uuid.uuid4().hex[:10]
    prefix = unique("chunk")
    with controlplane_any.client() as c:
        for i in range(MODELS):
            c.create_model(f"{prefix}-{i:03d}", labels={"pick": tag if i in PICKED else "no"})
        picked = [f"models/{prefix}-{i:03d}" for i in PICKED]
        for order in ("create_time", "update_time", "create_time desc", "update_time desc"):
            names, pages = _pages(c, f"labels.pick={tag}", order, page_size)
            expected = picked[::-1] if order.endswith("desc") else picked
            assert names == expected, order
            assert pages <= len(picked) // page_size + 1, order


def test_filtered_list_matching_nothing_ends_without_a_token(
    controlplane_any: RunningControlPlane,
) -> None:
    prefix = unique("none")
    with controlplane_any.client() as c:
        for i in range(MODELS):
            c.create_model(f"{prefix}-{i:03d}", labels={"pick": "no"})
        for order in ("create_time", "create_time desc", "update_time desc"):
            names, pages = _pages(c, f"labels.pick=nothing-{uuid.uuid4().hex[:8]}", order, 1)
            assert (names, pages) == ([], 1), order


def test_registering_a_version_moves_the_model_etag(
    controlplane_any: RunningControlPlane, tmp_path: Path
) -> None:
    model_id = unique()
    path = onnx_models.save(onnx_models.mlp(4, (8,), seed=0), tmp_path / "m.onnx")
    with controlplane_any.client() as c:
        before = c.create_model(model_id)
        c.register_version(model_id, path)
        after = c.get_model(model_id)
        assert after.latest_version == 1
        assert after.etag != before.etag
        assert after.update_time.ToDatetime() > before.update_time.ToDatetime()
        with pytest.raises(Aborted) as err:
            c.update_model(model_id, etag=before.etag, description="stale")
        assert err.value.reason == "ETAG_MISMATCH"
        # The etag read after the registration is the current one.
        assert c.update_model(model_id, etag=after.etag, description="fresh").description == (
            "fresh"
        )


def _race(calls: list[Callable[[], T]]) -> list[T | BaseException]:
    """Run every call on a thread of its own, released together; each one's result or error."""
    start = threading.Barrier(len(calls))
    out: list[T | BaseException] = [RuntimeError("did not finish")] * len(calls)

    def run(i: int) -> None:
        start.wait()
        try:
            out[i] = calls[i]()
        except BaseException as exc:
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def _assert_all_applied(updated: list[Any], stored_etag: str) -> None:
    """Every update succeeded, each on top of the one before (ten revisions, ten etags), and
    the stored etag is one of theirs."""
    assert [r for r in updated if isinstance(r, BaseException)] == []
    etags = {r.etag for r in updated}
    assert len(etags) == len(updated)
    assert stored_etag in etags


def test_concurrent_updates_without_an_etag_all_apply(
    controlplane_any: RunningControlPlane, tmp_path: Path
) -> None:
    model_id = unique()
    path = onnx_models.save(onnx_models.mlp(4, (8,), seed=0), tmp_path / "m.onnx")
    with controlplane_any.client() as setup:
        setup.create_model(model_id)
        setup.register_version(model_id, path)
    clients = [controlplane_any.client() for _ in range(10)]
    try:
        for c in clients:  # connected before the race, so that the calls meet at the server
            c.get_model(model_id)
        for round in range(3):
            models = _race(
                [
                    partial(c.update_model, model_id, description=f"{round} {i}")
                    for i, c in enumerate(clients)
                ]
            )
            _assert_all_applied(models, clients[0].get_model(model_id).etag)
            versions = _race(
                [
                    partial(c.update_version, model_id, 1, description=f"{round} {i}")
                    for i, c in enumerate(clients)
                ]
            )
            _assert_all_applied(versions, clients[0].get_version(model_id, 1).etag)
    finally:
        for c in clients:
            c.close()
