"""Limits that keep governance honest: an evaluation is stored only on the version it evaluated,
and policy rules are refused at write time when they could never run, or run too long."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from sqlalchemy import update
from sqlmodel import col

from controlplane.policy import MAX_MACRO_NESTING
from controlplane.store import Store
from controlplane.store.tables import PolicyRevisionRow, PolicyRow
from modelplane import Client
from modelplane.errors import FailedPrecondition, InvalidArgument
from modelplane.server import RequestContext
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, TrainedModel, start_controlplane
from tests.controlplane.test_deployments_api import register_versions


def _inverted_model(trained: TrainedModel, folder: Path) -> Path:
    """Another artifact with the same features: trained on inverted labels."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    table = pq.read_table(trained.train)
    x = np.column_stack([table.column(n).to_numpy() for n in trained.feature_names])
    y = 1 - table.column(trained.label).to_numpy()
    clf = LogisticRegression(max_iter=5000).fit(x.astype(np.float32), y)
    onx = to_onnx(clf, x[:1].astype(np.float32), options={id(clf): {"zipmap": False}})
    path = folder / "inverted.onnx"
    path.write_bytes(onx.SerializeToString())
    return path


def test_evaluation_of_a_deleted_incarnation_is_not_stored_on_the_new_one(
    tmp_path: Path, db_url: str, trained_model: TrainedModel
) -> None:
    tm = trained_model
    inverted = _inverted_model(tm, tmp_path)
    big = tmp_path / "big.parquet"
    pq.write_table(pa.concat_tables([pacsv.read_csv(tm.holdout)] * 2000), big)
    # One worker: the evaluation of `mid` waits behind the slow one of `busy`.
    cp = start_controlplane(tmp_path, db_url, evaluation_workers=1)
    try:
        busy, mid = unique(), unique()
        with cp.client() as c:
            for model_id in (busy, mid):
                c.create_model(model_id)
                c.register_version(model_id, tm.onnx, datasets={"train": tm.train}, label=tm.label)
            op_busy = c.evaluate(busy, 1, big, label=tm.label)
            op = c.evaluate(mid, 1, tm.holdout, label=tm.label)
            c.delete_model(mid, force=True)
            c.create_model(mid)
            again = c.register_version(mid, inverted, datasets={"train": tm.train}, label=tm.label)
            assert int(again.version) == 1
            assert not c.get_operation(op.name).done, "the queued evaluation finished too soon"
            with pytest.raises(FailedPrecondition) as err:
                c.operation_result(op)
            assert err.value.reason == "VERSION_CHANGED"
            assert "registered again" in err.value.message
            assert list(c.list_evaluations(mid, 1)) == []
            c.operation_result(op_busy)
            # The new version's own evaluation is stored, with its own (poor) metrics.
            own = c.operation_result(c.evaluate(mid, 1, tm.holdout, label=tm.label))
            assert own.metrics["roc_auc"] < 0.5
    finally:
        cp.handle.stop(0)


def _nested(depth: int, size: int) -> str:
    """``depth`` macros, each over a literal list of ``size`` elements."""
    items = "[" + ",".join(str(i) for i in range(size)) + "]"
    rule = "true"
    for d in range(depth):
        rule = f"{items}.all(x{d}, {rule})"
    return rule


def test_a_rule_whose_macros_multiply_is_refused_when_written(client: Client) -> None:
    with pytest.raises(InvalidArgument) as err:
        client.create_policy(unique("p"), target="production", rules=[_nested(5, 10)])
    assert err.value.reason == "INVALID_POLICY_RULE"
    assert "macros are nested 5 deep" in err.value.message
    assert f"at most {MAX_MACRO_NESTING}" in err.value.message
    with pytest.raises(InvalidArgument) as err:
        client.create_policy(unique("p"), target="production", rules=[_nested(2, 100)])
    assert err.value.reason == "INVALID_POLICY_RULE"
    assert "would make 10100 iterations" in err.value.message
    # At the limits: two levels, 40 * (1 + 24) = 1000 iterations.
    rule = "[" + ",".join(str(i) for i in range(40)) + "].all(a, " + _nested(1, 24) + ")"
    policy = client.create_policy(unique("p"), target="production", rules=[rule])
    assert policy.revision == 1


def test_a_rule_calling_an_unknown_function_is_refused_when_written(client: Client) -> None:
    for rule, name in [
        ('labels.team.lowerAscii() == "risk"', "method 'lowerAscii'"),
        ('substring(labels.team, 0) == "R"', "function 'substring'"),
    ]:
        with pytest.raises(InvalidArgument) as err:
            client.create_policy(unique("p"), target="production", rules=[rule])
        assert err.value.reason == "INVALID_POLICY_RULE"
        assert f"unknown {name}" in err.value.message
        assert "startsWith" in err.value.message
    policy = client.create_policy(
        unique("p"), target="production", rules=['labels.team.startsWith("R") && size(labels) > 0']
    )
    assert policy.revision == 1


def test_a_long_rule_with_a_syntax_error_is_answered_with_its_reason(client: Client) -> None:
    # Within the rule length limit, but its line no longer fits in an error message whole.
    rule = " && ".join(f"metrics.m{i} >= 0.5" for i in range(170)) + " &&"
    assert 3000 < len(rule) <= 4096
    with pytest.raises(InvalidArgument) as err:
        client.create_policy(unique("p"), target="production", rules=[rule])
    assert err.value.reason == "INVALID_POLICY_RULE"
    assert err.value.metadata["column"] == str(len(rule) - 1)  # the dangling "&&"
    text_line, caret_line = err.value.message.splitlines()[-2:]
    assert text_line.strip().startswith("…") and text_line.rstrip().endswith("m169 >= 0.5 &&")
    assert len(text_line) < 200 and text_line[caret_line.index("^")] == "&"
    assert client.list_models() is not None  # the server and the channel still serve


def test_a_stored_rule_the_limits_now_refuse_fails_the_gate_as_a_precondition(
    controlplane: RunningControlPlane, tmp_path: Path
) -> None:
    """A policy written before a rule limit existed: EvaluateGate says the policy needs
    changing (FAILED_PRECONDITION), not that the caller sent something invalid."""
    deep = "[1, 2].all(a, [3, 4].all(b, [5, 6].all(c, a < b + c)))"
    with controlplane.client() as c:
        model_id, (v1,) = register_versions(c, tmp_path, 1, capture_env=False)
        policy = unique("p")
        target = unique("prod")
        c.create_policy(policy, target=target, rules=["true"])
        store = Store.open(controlplane.db_url)
        try:
            with store.write(RequestContext(principal="test"), "test") as tx:
                for statement in (
                    update(PolicyRow).where(col(PolicyRow.id) == policy),
                    update(PolicyRevisionRow).where(col(PolicyRevisionRow.policy_id) == policy),
                ):
                    tx.session.exec(statement.values(rules=[deep]))  # type: ignore[call-overload]
        finally:
            store.close()
        with pytest.raises(FailedPrecondition) as err:
            c.evaluate_gate(model_id, v1, target)
        assert err.value.reason == "POLICY_RULE_REFUSED"
        assert (
            f"policies/{policy}" in err.value.message and "update the policy" in err.value.message
        )
