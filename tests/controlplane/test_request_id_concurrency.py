"""A request sent again while it is still running (a client retry racing the original) answers
what the original did, on both backends: the request id is reserved before it is looked up.
Also: errors of the store and of dataset reading that bad input, not a fault, causes."""

from __future__ import annotations

import io
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from controlplane.store import Store
from controlplane.store.tables import AliasRow
from modelplane import Client, InvalidArgument, NotFound
from modelplane.server.context import RequestContext
from modelplane.testing import onnx_models
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane

#: Identical calls sent at once under one request id, and rounds of them.
CALLS = 4
ROUNDS = 3


def at_once(clients: list[Client], call: Callable[[Client], Any]) -> list[Any]:
    """``call`` on every client at the same moment; each answer or the error raised."""
    barrier = threading.Barrier(len(clients))
    answers: list[Any] = [None] * len(clients)

    def run(i: int) -> None:
        barrier.wait()
        try:
            answers[i] = call(clients[i])
        except Exception as exc:  # reported by the caller's assertion
            answers[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def audited(c: Client, action: str, resource: str) -> list[str]:
    return [e.request_id for e in c.audit_events(resource=resource) if e.action == action]


def one_round(clients: list[Client], model_id: str, attempt: int) -> None:
    """CreateModel, UpdateModel and SetAlias, each sent by every client at once under one
    request id: every caller gets the same answer, and the change is made and audited once."""
    c = clients[0]
    created = unique()
    rid = str(uuid.uuid4())
    answers = at_once(clients, lambda cl: cl.create_model(created, request_id=rid))
    assert answers == [answers[0]] * CALLS, answers
    assert answers[0].name == f"models/{created}"
    assert audited(c, "CreateModel", f"models/{created}") == [rid]

    before = c.get_model(model_id)
    rid_update = str(uuid.uuid4())
    answers = at_once(
        clients,
        lambda cl: cl.update_model(
            model_id, etag=before.etag, description=f"d{attempt}", request_id=rid_update
        ),
    )
    assert answers == [answers[0]] * CALLS, answers
    # One change: one etag step, and the model reads as every caller was told.
    assert answers[0].description == f"d{attempt}" and answers[0].etag != before.etag
    assert c.get_model(model_id) == answers[0]
    assert audited(c, "UpdateModel", f"models/{model_id}").count(rid_update) == 1

    rid_alias = str(uuid.uuid4())
    answers = at_once(
        clients,
        lambda cl: cl.set_alias(
            model_id, "champion", 1, reason=f"r{attempt}", request_id=rid_alias
        ),
    )
    assert answers == [answers[0]] * CALLS, answers
    assert answers[0].version == f"models/{model_id}/versions/1"
    assert audited(c, "SetAlias", f"models/{model_id}/aliases/champion").count(rid_alias) == 1


def test_identical_requests_at_once_all_get_the_first_answer(
    controlplane_any: RunningControlPlane, tmp_path: Path
) -> None:
    clients = [controlplane_any.client() for _ in range(CALLS)]
    try:
        model_id = unique()
        clients[0].create_model(model_id)
        path = onnx_models.save(onnx_models.mlp(4, (8,), seed=0), tmp_path / "m.onnx")
        clients[0].register_version(model_id, path, capture_env=False)
        for attempt in range(ROUNDS):
            one_round(clients, model_id, attempt)
    finally:
        for cl in clients:
            cl.close()


def test_a_row_referring_to_a_missing_one_is_not_found(db_url: str) -> None:
    # What a SetAlias racing DeleteModel(force) commits: an alias of a model just deleted. A
    # foreign-key violation is no duplicate, so not ALREADY_EXISTS.
    store = Store.open(db_url)
    try:
        row = AliasRow(
            model_id=unique(), alias="champion", version=1, update_time=datetime.now(UTC)
        )
        with (
            pytest.raises(NotFound) as missing,
            store.write(RequestContext(principal="alice"), "T") as tx,
        ):
            tx.session.add(row)
            tx.session.flush()
        assert missing.value.reason == "REFERENCED_RESOURCE_NOT_FOUND"
    finally:
        store.close()


def test_datasets_with_wide_integers_register_and_repeated_columns_are_invalid(
    controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    with controlplane.client() as c:
        model_id = unique()
        c.create_model(model_id)
        onnx = onnx_models.save(onnx_models.mlp(2, (8,), seed=0), tmp_path / "m.onnx")
        train = tmp_path / "train.bin"
        # Epoch nanoseconds and uint64 ids, past 2**53: profiled with float precision.
        table = pa.table(
            {
                "f0": pa.array([1_700_000_000_123_456_789, 1_700_000_001_000_000_001]),
                "f1": pa.array([1, 2**64 - 1], pa.uint64()),
            }
        )
        sink = io.BytesIO()
        pq.write_table(table, sink)
        train.write_bytes(sink.getvalue())
        version = c.register_version(model_id, onnx, datasets={"train": train}, capture_env=False)
        assert version.name == f"models/{model_id}/versions/1"
        train.write_bytes(b"a,a,b\n1,2,3\n4,5,6\n")
        for kw in ({"label": "a"}, {"feature_names": ["a", "b"]}):
            with pytest.raises(InvalidArgument) as invalid:
                c.register_version(
                    model_id, onnx, datasets={"train": train}, capture_env=False, **kw
                )
            assert invalid.value.reason == "DUPLICATE_COLUMNS"
            assert "'a'" in invalid.value.message
