"""ListOperations' target filter lists the operations about a resource: those on it and on the
resources under it (a model's filter lists its versions' evaluations), on SQLite and
PostgreSQL, matching the name exactly (no other model whose id starts alike, no LIKE
wildcards, no other letter case)."""

from __future__ import annotations

from controlplane.services.operations import OperationService
from controlplane.store import Store
from modelplane.server.context import RequestContext
from tests.conftest import unique

SYSTEM = RequestContext(principal="system")


def _listed(ops: OperationService, target: str, page_size: int = 0) -> list[str]:
    """Every operation the filter lists, page by page, as their targets."""
    found, token = [], ""
    while True:
        page, token = ops.list_operations(target, page_size, token, ctx=SYSTEM)
        found += [o.target for o in page]
        if not token:
            return found


def test_a_target_lists_the_operations_on_it_and_under_it(db_url: str) -> None:
    store = Store.open(db_url)
    try:
        ops = OperationService(store)
        m = unique()
        targets = [
            f"models/{m}",
            f"models/{m}/versions/1",
            f"models/{m}/versions/1",
            f"models/{m}/versions/2",
            f"models/{m}/versions/12",
            f"models/{m}0/versions/1",  # another model whose id starts with this one's
            f"models/{m}-x/versions/1",
            f"models/{m}@prod",
            f"models/{m.upper()}/versions/1",
            f"models/{m}0",
        ]
        for target in targets:
            ops.start(SYSTEM, "evaluation", target, lease_seconds=3600)

        mine = [t for t in targets if t == f"models/{m}" or t.startswith(f"models/{m}/")]
        assert sorted(_listed(ops, f"models/{m}")) == sorted(mine)
        assert len(mine) == 5
        # Page by page too: the filter is part of the query, not of what a page keeps.
        assert sorted(_listed(ops, f"models/{m}", page_size=2)) == sorted(mine)
        assert sorted(_listed(ops, f"models/{m}/versions/1")) == [f"models/{m}/versions/1"] * 2
        assert _listed(ops, f"models/{m}/versions/12") == [f"models/{m}/versions/12"]
        assert sorted(_listed(ops, f"models/{m}0")) == [f"models/{m}0", f"models/{m}0/versions/1"]
        # A trailing slash is a name no resource has; LIKE's wildcards match only themselves.
        assert _listed(ops, f"models/{m}/") == []
        assert _listed(ops, f"models/{m[:-1]}_") == []
        assert _listed(ops, f"models/{m[:-1]}%") == []
        assert _listed(ops, f"models/{m}/versions/%") == []
        # Letter case counts, on SQLite as on PostgreSQL.
        assert _listed(ops, f"models/{m.upper()}") == [f"models/{m.upper()}/versions/1"]
    finally:
        store.close()
