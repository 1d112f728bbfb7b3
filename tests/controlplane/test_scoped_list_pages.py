"""A caller whose roles hold only on some models pages through ListModels, ListDeployments,
ListOperations and ListAuditEvents as if the other models did not exist: every page holds only
its models' entries (up to the page size), the pages together hold all of them, and a
next-page token, which a client can read (base64 JSON), holds the key of the page's last entry
and is handed out only when more of the caller's entries follow. A label filter tells it
nothing about other models.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import grpc
import pytest

from controlplane import audit
from controlplane.services.models import ModelService
from controlplane.services.operations import OperationService
from controlplane.store import Store
from modelplane.server.context import Grant, RequestContext
from modelplane.testing.onnx_models import mlp, save
from modelplane.v1 import audit_pb2 as apb
from modelplane.v1 import audit_pb2_grpc as agrpc
from modelplane.v1 import deployments_pb2 as dpb
from modelplane.v1 import deployments_pb2_grpc as dgrpc
from modelplane.v1 import operations_pb2 as opb
from modelplane.v1 import operations_pb2_grpc as ogrpc
from modelplane.v1 import registry_pb2 as rpb
from modelplane.v1 import registry_pb2_grpc as rgrpc
from tests.conftest import unique
from tests.controlplane.test_auth_permissions import TokenServer, start_token_server

#: Model suffixes, hidden and visible interleaved by name; ``bb`` extends visible ``b``, so a
#: prefix match on ``models/…-b`` would take its entries for ``b``'s.
VISIBLE = ("b", "e", "f", "h")
HIDDEN = ("a", "bb", "c", "d", "g", "i")
PAGE_SIZES = (1, 2, 3)


@dataclass
class World:
    server: TokenServer
    visible: list[str]  # model ids
    hidden: list[str]
    deployments: dict[str, str]  # deployment id → model id
    operations: dict[str, str]  # operation id → target


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("scoped-pages")
    prefix = unique("s")
    visible = [f"{prefix}-{s}" for s in VISIBLE]
    hidden = [f"{prefix}-{s}" for s in HIDDEN]
    people = {
        "ada": (["admin"], []),
        "sam": (["viewer"], visible),
        "nora": (["viewer"], [f"{prefix}-none"]),  # a model that does not exist
    }
    server = start_token_server(tmp, people)
    onnx = save(mlp(8, (16,), 2, seed=0), tmp / "m.onnx")
    deployments: dict[str, str] = {}
    with server.client("ada") as ada:
        for model in sorted(visible + hidden):
            # Hidden models carry a label value no visible model has, for probing to find.
            project = "merger" if model in hidden else "open"
            ada.create_model(model, labels={"team": "risk", "project": project})
            ada.register_version(model, onnx, capture_env=False)
            ada.create_deployment(f"{model}-prod", model=model, champion_version=1)
            deployments[f"{model}-prod"] = model
        # A second deployment of a visible model, named among the hidden ones.
        ada.create_deployment(f"{prefix}-c-shadow", model=visible[0], champion_version=1)
        deployments[f"{prefix}-c-shadow"] = visible[0]
    operations = _start_operations(server.cp.db_url, visible, hidden)
    yield World(server, visible, hidden, deployments, operations)
    server.cp.handle.stop(0)


def _start_operations(db_url: str, visible: list[str], hidden: list[str]) -> dict[str, str]:
    """Operations on every model's version, its name and an alias, interleaved in time, and one
    about no model; recorded straight into the server's database."""
    store = Store.open(db_url)
    try:
        ops = OperationService(store)
        ctx = RequestContext(principal="system")
        started: dict[str, str] = {}
        for model in sorted(visible + hidden):
            for target in (f"models/{model}/versions/1", f"models/{model}", f"models/{model}@prod"):
                op = ops.start(ctx, "evaluate", target, lease_seconds=3600)
                started[op.name.removeprefix("operations/")] = target
        op = ops.start(ctx, "evaluate", "policies/everything", lease_seconds=3600)
        started[op.name.removeprefix("operations/")] = op.target
        return started
    finally:
        store.close()


def _model_of(target: str) -> str:
    return target.removeprefix("models/").split("/", 1)[0].split("@", 1)[0]


def _key(token: str) -> list[Any]:
    """A next-page token's key, read as pagination.py writes it."""
    payload = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    key = payload["k"]
    assert isinstance(key, list)
    return key


@dataclass
class Lister:
    """One list RPC: how to ask for a page, its entries' ids, and the key of an entry."""

    call: Callable[[str, int, str], tuple[list[Any], str]]
    ident: Callable[[Any], str]
    key: Callable[[Any], list[Any]]


def _pages(lister: Lister, who: str, size: int) -> list[tuple[list[Any], str]]:
    pages: list[tuple[list[Any], str]] = []
    token = ""
    while True:
        entries, token = lister.call(who, size, token)
        pages.append((entries, token))
        if not token:
            return pages
        assert len(pages) < 50, "the list does not end"


def _metadata(world: World, who: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {world.server.tokens[who]}"),)


@pytest.fixture(scope="module")
def channel(world: World) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(world.server.address) as ch:
        yield ch


def _models(world: World, channel: grpc.Channel, filter: str = "", order_by: str = "") -> Lister:
    stub = rgrpc.RegistryServiceStub(channel)

    def call(who: str, size: int, token: str) -> tuple[list[Any], str]:
        request = rpb.ListModelsRequest(
            filter=filter, order_by=order_by, page_size=size, page_token=token
        )
        page = stub.ListModels(request, metadata=_metadata(world, who), timeout=30)
        return list(page.models), page.next_page_token

    def key(m: Any) -> list[Any]:
        model_id = m.name.removeprefix("models/")
        if not order_by:
            return [model_id]
        field = order_by.split()[0]
        stamp = getattr(m, field).ToDatetime(tzinfo=UTC).isoformat()
        return [stamp, model_id]

    return Lister(call, lambda m: m.name.removeprefix("models/"), key)


def _deployments(world: World, channel: grpc.Channel) -> Lister:
    stub = dgrpc.DeploymentServiceStub(channel)

    def call(who: str, size: int, token: str) -> tuple[list[Any], str]:
        request = dpb.ListDeploymentsRequest(page_size=size, page_token=token)
        page = stub.ListDeployments(request, metadata=_metadata(world, who), timeout=30)
        return list(page.deployments), page.next_page_token

    return Lister(call, _deployment_id, lambda d: [_deployment_id(d)])


def _operations(world: World, channel: grpc.Channel) -> Lister:
    stub = ogrpc.OperationsServiceStub(channel)

    def call(who: str, size: int, token: str) -> tuple[list[Any], str]:
        request = opb.ListOperationsRequest(page_size=size, page_token=token)
        page = stub.ListOperations(request, metadata=_metadata(world, who), timeout=30)
        return list(page.operations), page.next_page_token

    return Lister(call, _operation_id, _operation_key)


def _deployment_id(d: Any) -> str:
    return str(d.name).removeprefix("deployments/")


def _operation_id(o: Any) -> str:
    return str(o.name).removeprefix("operations/")


def _operation_key(o: Any) -> list[Any]:
    """Operations are listed newest first, by creation time and then id."""
    return [o.create_time.ToDatetime(tzinfo=UTC).isoformat(), _operation_id(o)]


def _check_pages(
    lister: Lister, who: str, size: int, expected: list[str], hidden: set[str]
) -> None:
    """Pages of ``size`` hold ``expected`` in order, only it, full until the last; each token
    resumes after its page's last entry and names nothing of ``hidden``."""
    pages = _pages(lister, who, size)
    seen = [lister.ident(e) for entries, _ in pages for e in entries]
    assert seen == expected
    for number, (entries, token) in enumerate(pages):
        assert not {lister.ident(e) for e in entries} & hidden
        if token:
            key = _key(token)
            assert not {str(v) for v in key} & hidden, f"token {key} names a hidden entry"
            assert len(entries) == size, f"page {number} is short yet a token follows it"
            assert key == lister.key(entries[-1])
        else:
            # The last page: full, or holding what remains; empty only for an empty list.
            assert entries or not expected
            assert len(entries) <= size


@pytest.mark.parametrize("size", PAGE_SIZES)
def test_model_pages_hold_the_callers_models_only(
    world: World, channel: grpc.Channel, size: int
) -> None:
    hidden = set(world.hidden)
    _check_pages(_models(world, channel), "sam", size, sorted(world.visible), hidden)
    _check_pages(_models(world, channel), "nora", size, [], hidden)
    everything = sorted(world.visible + world.hidden)
    _check_pages(_models(world, channel), "ada", size, everything, set())


@pytest.mark.parametrize("order_by", ["create_time", "update_time desc"])
def test_model_pages_in_time_order_name_only_visible_models(
    world: World, channel: grpc.Channel, order_by: str
) -> None:
    admin = [m.name.removeprefix("models/") for m, _ in _all(_models(world, channel, "", order_by))]
    expected = [m for m in admin if m in world.visible]
    lister = _models(world, channel, order_by=order_by)
    for size in PAGE_SIZES:
        _check_pages(lister, "sam", size, expected, set(world.hidden))


def _all(lister: Lister) -> list[tuple[Any, str]]:
    return [(e, t) for entries, t in _pages(lister, "ada", 100) for e in entries]


@pytest.mark.parametrize("size", PAGE_SIZES)
def test_a_label_filter_tells_nothing_about_other_models(
    world: World, channel: grpc.Channel, size: int
) -> None:
    hidden = set(world.hidden)
    # Every hidden model has project=merger: the scoped caller's answer is that of a value
    # nobody has, page for page.
    merger = _pages(_models(world, channel, 'labels.project="merger"'), "sam", size)
    nobody = _pages(_models(world, channel, 'labels.project="nobody-has-this"'), "sam", size)
    assert merger == nobody == [([], "")]
    for value in ("risk", "open"):
        lister = _models(world, channel, f"labels.team=risk labels.project={value}")
        expected = sorted(world.visible) if value == "open" else []
        _check_pages(lister, "sam", size, expected, hidden)
        assert len(_all(lister)) == (len(world.visible) if value == "open" else 0)


@pytest.mark.parametrize("size", PAGE_SIZES)
def test_deployment_pages_hold_the_callers_models_deployments_only(
    world: World, channel: grpc.Channel, size: int
) -> None:
    mine = sorted(d for d, m in world.deployments.items() if m in world.visible)
    theirs = {d for d, m in world.deployments.items() if m in world.hidden}
    # A token naming a hidden model's id would say as much as one naming its deployment.
    hidden = theirs | set(world.hidden)
    _check_pages(_deployments(world, channel), "sam", size, mine, hidden)
    _check_pages(_deployments(world, channel), "nora", size, [], hidden)
    _check_pages(_deployments(world, channel), "ada", size, sorted(world.deployments), set())


@pytest.mark.parametrize("size", PAGE_SIZES)
def test_operation_pages_hold_the_callers_models_operations_only(
    world: World, channel: grpc.Channel, size: int
) -> None:
    newest_first = [_operation_id(o) for o, _ in _all(_operations(world, channel))]
    assert set(newest_first) == set(world.operations)
    visible = set(world.visible)
    mine = [o for o in newest_first if _model_of(world.operations[o]) in visible]
    assert len(mine) == 3 * len(world.visible)
    theirs = set(world.operations) - set(mine)
    _check_pages(_operations(world, channel), "sam", size, mine, theirs)
    _check_pages(_operations(world, channel), "nora", size, [], theirs)


def test_services_select_a_scoped_callers_entries_on_each_backend(db_url: str) -> None:
    """The services' own lists, on SQLite and PostgreSQL: a scoped caller's pages of models and
    operations come from its models' rows alone, whatever else the database holds."""
    store = Store.open(db_url)
    try:
        models, ops = ModelService(store), OperationService(store)
        system = RequestContext(principal="system")
        prefix = unique("q")
        visible = [f"{prefix}-{s}" for s in VISIBLE]
        hidden = [f"{prefix}-{s}" for s in HIDDEN]
        started: dict[str, str] = {}
        for model in sorted(visible + hidden):
            models.create(system, model, labels={"project": "x"})
            for target in (f"models/{model}/versions/1", f"models/{model}@prod"):
                op = ops.start(system, "evaluate", target, lease_seconds=3600)
                started[op.name] = target
        caller = RequestContext(
            principal="sam", grants=(Grant(("viewer",), tuple(visible)),), authenticated=True
        )
        for size in PAGE_SIZES:
            seen, token = [], ""
            while True:
                page, token = models.list_models(
                    filter="labels.project=x", page_size_=size, page_token=token, ctx=caller
                )
                assert page and len(page) <= size
                seen += [m.name.removeprefix("models/") for m in page]
                if not token:
                    break
                assert len(page) == size and _key(token) == [seen[-1]]
            assert seen == sorted(visible)
            listed, token = [], ""
            while True:
                page_ops, token = ops.list_operations(page_size_=size, page_token=token, ctx=caller)
                listed += [o.name for o in page_ops]
                if not token:
                    break
                assert len(page_ops) == size and _key(token)[1] == listed[-1].split("/")[-1]
            assert sorted(listed) == sorted(
                o for o, t in started.items() if _model_of(t) in visible
            )
        nobody = RequestContext(principal="nora", authenticated=True)
        assert models.list_models(ctx=nobody) == ([], "")
        assert ops.list_operations(ctx=nobody) == ([], "")
    finally:
        store.close()


def _audit(world: World, channel: grpc.Channel) -> Lister:
    stub = agrpc.AuditServiceStub(channel)

    def call(who: str, size: int, token: str) -> tuple[list[Any], str]:
        request = apb.ListAuditEventsRequest(page_size=size, page_token=token)
        page = stub.ListAuditEvents(request, metadata=_metadata(world, who), timeout=30)
        return list(page.events), page.next_page_token

    return Lister(call, lambda e: str(e.seq), lambda e: [e.seq])


@pytest.mark.parametrize("size", PAGE_SIZES)
def test_audit_pages_hold_the_callers_models_events_only(
    world: World, channel: grpc.Channel, size: int
) -> None:
    """Events about its models only, selected in the query: no page is short or empty while a
    token follows, which would say that other models saw activity meanwhile."""
    everything = [e for e, _ in _all(_audit(world, channel))]
    visible = set(world.visible)
    mine = [str(e.seq) for e in everything if e.resource.startswith("models/")
            and _model_of(e.resource) in visible]  # fmt: skip
    assert mine and len(mine) < len(everything)
    theirs = {str(e.seq) for e in everything} - set(mine)
    _check_pages(_audit(world, channel), "sam", size, mine, theirs)
    _check_pages(_audit(world, channel), "nora", size, [], theirs)


def test_a_caller_scoped_to_a_thousand_models_lists_on_each_backend(db_url: str) -> None:
    """A few terms per model in one query: SQLite refuses an OR chain deeper than 1,000, so
    they are grouped; a tokens-file entry names at most 1,000 models."""
    store = Store.open(db_url)
    audit.install(store)  # as the server does: every mutation is audited
    try:
        models, ops = ModelService(store), OperationService(store)
        system = RequestContext(principal="system")
        prefix = unique("k")
        mine = f"{prefix}-mine"
        models.create(system, mine)
        op = ops.start(system, "evaluate", f"models/{mine}/versions/1", lease_seconds=3600)
        scope = (mine, *(f"{prefix}-{i}" for i in range(999)))
        caller = RequestContext(
            principal="sam", grants=(Grant(("viewer",), scope),), authenticated=True
        )
        listed, _ = ops.list_operations(page_size_=100, ctx=caller)
        assert [o.name for o in listed] == [op.name]
        assert [m.name for m in models.list_models(ctx=caller)[0]] == [f"models/{mine}"]
        events, _ = audit.list_events(store, models=scope)
        assert events and {e.resource for e in events} == {f"models/{mine}"}
    finally:
        store.close()
