"""Server-side evaluation through a real control plane: metrics checked against scikit-learn,
slices, fairness, deltas against the champion, operations, lease loss, and bad input."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from google.protobuf import json_format
from sklearn import metrics as skm

from controlplane.services.operations import OperationService
from controlplane.store import Store
from modelplane import Client
from modelplane.cli import main
from modelplane.errors import FailedPrecondition, InvalidArgument, NotFound
from modelplane.server.context import RequestContext
from tests.conftest import unique
from tests.controlplane.conftest import RunningControlPlane, TrainedModel, start_controlplane


def holdout_with_groups(trained: TrainedModel, folder: Path) -> tuple[Path, pa.Table]:
    """The holdout split with a slice column and a protected column derived from a feature."""
    table = pacsv.read_csv(trained.holdout)
    radius = table.column("mean_radius").to_numpy()
    size = np.where(radius > np.median(radius), "large", "small")
    group = np.where(np.arange(len(radius)) % 3 == 0, "a", "b")
    table = table.append_column("size", pa.array(size)).append_column("group", pa.array(group))
    path = folder / "holdout-groups.parquet"
    pq.write_table(table, path)
    return path, table


def reference_probabilities(trained: TrainedModel, table: pa.Table) -> np.ndarray:
    """The model's positive-class probabilities from a direct onnxruntime call."""
    session = ort.InferenceSession(str(trained.onnx), providers=["CPUExecutionProvider"])
    x = np.column_stack([table.column(n).to_numpy() for n in trained.feature_names])
    outputs = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})
    return np.asarray(outputs[1])[:, 1]


def register(c: Client, trained: TrainedModel, model_id: str) -> int:
    if not any(m.name == f"models/{model_id}" for m in c.list_models()):
        c.create_model(model_id)
    v = c.register_version(
        model_id, trained.onnx, datasets={"train": trained.train}, label=trained.label
    )
    return int(v.version)


def test_evaluation_metrics_match_scikit_learn(
    controlplane: RunningControlPlane, trained_model: TrainedModel, tmp_path: Path
) -> None:
    data, table = holdout_with_groups(trained_model, tmp_path)
    model_id = unique()
    with controlplane.client() as c:
        version = register(c, trained_model, model_id)
        op = c.evaluate(
            model_id, version, data, label="target", slices=["size"], protected=["group"]
        )
        assert op.name.startswith("operations/") and op.kind == "evaluation"
        ev = c.operation_result(op, timeout=120)
        done = c.get_operation(op.name)
    assert done.done and done.progress == 1.0 and not done.HasField("error")
    y = table.column("target").to_numpy()
    p = reference_probabilities(trained_model, table)
    pred = (p >= 0.5).astype(int)
    assert ev.rows == len(y) and ev.task == "classification"
    assert ev.metrics["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-9)
    assert ev.metrics["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    assert ev.metrics["f1"] == pytest.approx(skm.f1_score(y, pred), abs=1e-12)
    assert ev.metrics["log_loss"] == pytest.approx(skm.log_loss(y, p), rel=1e-5)
    large = table.column("size").to_numpy() == "large"
    slices = json_format.MessageToDict(ev.slices)
    got = slices["size"]["large"]
    assert got["count"] == int(large.sum())
    assert got["metrics"]["accuracy"] == pytest.approx(skm.accuracy_score(y[large], pred[large]))
    fairness = json_format.MessageToDict(ev.fairness)["group"]
    in_a = table.column("group").to_numpy() == "a"
    assert fairness["groups"]["a"]["selection_rate"] == pytest.approx(pred[in_a].mean())
    assert ev.validation["passed"] in (True, False)
    assert ev.dataset_role == "holdout" and len(ev.dataset_sha256) == 64
    assert len(ev.report_sha256) == 64 and ev.compared_version == ""
    with controlplane.client() as c:
        again = c.get_evaluation(ev.name)
        listed = list(c.list_evaluations(model_id, version))
    assert again.report_sha256 == ev.report_sha256
    assert [e.name for e in listed] == [ev.name]


def weaker_model(trained: TrainedModel, folder: Path) -> Path:
    """A strongly regularised logistic regression on the same features (a worse challenger)."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    train = pq.read_table(trained.train)
    x = np.column_stack([train.column(n).to_numpy() for n in trained.feature_names])
    clf = LogisticRegression(C=1e-4, max_iter=2000).fit(x, train.column("target").to_numpy())
    onx = to_onnx(
        clf, x[:1].astype(np.float32), options={id(clf): {"zipmap": False}}, target_opset=17
    )
    path = folder / "weak.onnx"
    path.write_bytes(onx.SerializeToString())
    return path


def test_deltas_against_the_champion_on_the_same_data(
    controlplane: RunningControlPlane, trained_model: TrainedModel, tmp_path: Path
) -> None:
    data, table = holdout_with_groups(trained_model, tmp_path)
    weak = weaker_model(trained_model, tmp_path)
    model_id = unique()
    with controlplane.client() as c:
        champion = register(c, trained_model, model_id)
        challenger = int(
            c.register_version(
                model_id, weak, datasets={"train": trained_model.train}, label="target"
            ).version
        )
        c.set_alias(model_id, "champion", champion)
        ev = c.operation_result(c.evaluate(model_id, challenger, data, label="target"))
        champion_ev = c.operation_result(
            c.evaluate(model_id, champion, data, label="target", compare_to="-")
        )
        again = c.operation_result(c.evaluate(model_id, challenger, data, label="target"))
    y = table.column("target").to_numpy()
    strong_p = reference_probabilities(trained_model, table)
    weak_p = reference_probabilities(
        TrainedModel(weak, *list(vars(trained_model).values())[1:]), table
    )
    expected = skm.roc_auc_score(y, weak_p) - skm.roc_auc_score(y, strong_p)
    assert ev.compared_version == f"models/{model_id}/versions/{champion}"
    assert ev.compare_to == "champion"
    assert ev.deltas["roc_auc"] == pytest.approx(expected, abs=1e-9)
    assert ev.deltas["roc_auc"] != 0.0
    assert champion_ev.compared_version == "" and not champion_ev.deltas
    # The second time, the champion's stored evaluation on the same data is reused.
    assert again.deltas["roc_auc"] == pytest.approx(expected, abs=1e-9)


def test_cli_evaluate_prints_the_report(
    controlplane: RunningControlPlane,
    trained_model: TrainedModel,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model_id = unique()
    with controlplane.client() as c:
        version = register(c, trained_model, model_id)
    capsys.readouterr()
    argv = ["--server", controlplane.address, "--output", "json", "evaluate", model_id]
    code = main(
        [*argv, str(version), "--data", str(trained_model.holdout), "--label", "target", "--wait"]
    )
    out = capsys.readouterr().out
    assert code == 0
    doc = json.loads(out)
    table = pacsv.read_csv(trained_model.holdout)
    y = table.column("target").to_numpy()
    p = reference_probabilities(trained_model, table)
    assert doc["metrics"]["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-9)
    assert doc["name"].startswith(f"models/{model_id}/versions/{version}/evaluations/")
    code = main([*argv, str(version), "--data", str(tmp_path / "nope.csv"), "--label", "t"])
    assert code == 2


def test_bad_evaluation_requests(
    controlplane: RunningControlPlane, trained_model: TrainedModel
) -> None:
    model_id = unique()
    with controlplane.client() as c:
        version = register(c, trained_model, model_id)
        with pytest.raises(InvalidArgument) as err:
            c.evaluate(model_id, version, trained_model.holdout, label="")
        assert err.value.reason == "MISSING_LABEL"
        with pytest.raises(NotFound) as nf:
            c.evaluate(model_id, 99, trained_model.holdout, label="target")
        assert nf.value.reason == "VERSION_NOT_FOUND"
        with pytest.raises(NotFound):
            c.evaluate("no-such-model", 1, trained_model.holdout, label="target")
        with pytest.raises(InvalidArgument) as bad:
            c.evaluate("Bad_Name", 1, trained_model.holdout, label="target")
        assert bad.value.reason == "INVALID_NAME"
        with pytest.raises(InvalidArgument):
            c.evaluate(model_id, version, trained_model.holdout, label="target", role="Hold Out")
        with pytest.raises(FailedPrecondition) as missing_blob:
            c._call(
                c.evaluation.Evaluate,
                __import__("modelplane.v1.evaluation_pb2", fromlist=["x"]).EvaluateRequest(
                    name=f"models/{model_id}/versions/{version}",
                    dataset_sha256="a" * 64,
                    label="target",
                ),
            )
        assert missing_blob.value.reason == "BLOB_NOT_FOUND"
        # A label the dataset lacks fails the operation, not the call.
        op = c.evaluate(model_id, version, trained_model.holdout, label="nope")
        with pytest.raises(InvalidArgument) as failed:
            c.operation_result(op, timeout=60)
        assert failed.value.reason == "MISSING_LABEL_COLUMN"
        assert c.get_operation(op.name).error.reason == "MISSING_LABEL_COLUMN"
        with pytest.raises(NotFound) as no_eval:
            c.get_evaluation(f"models/{model_id}/versions/{version}/evaluations/ev-nothing")
        assert no_eval.value.reason == "EVALUATION_NOT_FOUND"
        with pytest.raises(InvalidArgument):
            c.get_evaluation(f"models/{model_id}/versions/{version}/evals/x")
        # The server keeps serving.
        assert c.get_version(model_id, version).version == version


def test_operations_of_a_lost_replica_are_marked_failed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cp.db'}"
    store = Store.open(url)
    try:
        dead = OperationService(store, replica_id="dead-replica")
        ctx = RequestContext(principal="alice")
        expired = dead.start(ctx, "evaluation", "models/m/versions/1", lease_seconds=-5)
        alive = dead.start(ctx, "evaluation", "models/m/versions/2", lease_seconds=3600)
    finally:
        store.close()
    cp = start_controlplane(tmp_path, url, operation_lease_seconds=60)
    try:
        with cp.client() as c:
            lost = c.get_operation(expired.name)
            held = c.get_operation(alive.name)
            events = list(c.audit_events(resource=expired.name))
    finally:
        cp.handle.stop(0)
    assert lost.done and lost.error.reason == "REPLICA_LOST" and lost.owner == ""
    assert "dead-replica" in lost.error.message
    assert not held.done and held.owner == "dead-replica"
    assert [e.action for e in events][-1] == "FailOperation"
    assert datetime.now(UTC) - lost.update_time.ToDatetime(tzinfo=UTC) < timedelta(hours=1)


def test_arrow_and_csv_datasets_give_the_same_metrics(
    controlplane: RunningControlPlane, trained_model: TrainedModel, tmp_path: Path
) -> None:
    table = pacsv.read_csv(trained_model.holdout)
    arrow_path = tmp_path / "holdout.arrow"
    with pa.OSFile(str(arrow_path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    model_id = unique()
    with controlplane.client() as c:
        version = register(c, trained_model, model_id)
        from_csv = c.operation_result(
            c.evaluate(model_id, version, trained_model.holdout, label="target")
        )
        from_arrow = c.operation_result(c.evaluate(model_id, version, arrow_path, label="target"))
    assert from_csv.dataset_sha256 != from_arrow.dataset_sha256
    assert from_csv.metrics["roc_auc"] == from_arrow.metrics["roc_auc"]
    assert pc.sum(table.column("target")).as_py() > 0


def test_a_running_server_fails_expired_operations_periodically(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cp.db'}"
    cp = start_controlplane(tmp_path, url, operation_lease_seconds=0.3)
    store = Store.open(url)
    try:
        dead = OperationService(store, replica_id="gone")
        op = dead.start(
            RequestContext(principal="bob"), "evaluation", "models/m/versions/1", lease_seconds=0.2
        )
        with cp.client() as c:
            got = c.wait_operation(op.name, timeout=10)
    finally:
        store.close()
        cp.handle.stop(0)
    assert got.done and got.error.reason == "REPLICA_LOST"


def test_evaluate_is_idempotent_on_request_id_and_lists_pages(
    controlplane: RunningControlPlane, trained_model: TrainedModel
) -> None:
    model_id = unique()
    rid = "5f0c2a52-7d7e-4e0b-9a55-0a4a3f1e9b11"
    with controlplane.client() as c:
        version = register(c, trained_model, model_id)
        first = c.evaluate(model_id, version, trained_model.holdout, label="target", request_id=rid)
        again = c.evaluate(model_id, version, trained_model.holdout, label="target", request_id=rid)
        assert again.name == first.name
        one = c.operation_result(first)
        c.set_alias(model_id, "staging", version)
        two = c.operation_result(
            c.evaluate(model_id, "@staging", trained_model.holdout, label="target")
        )
        pages = c._call(
            c.evaluation.ListEvaluations,
            __import__("modelplane.v1.evaluation_pb2", fromlist=["x"]).ListEvaluationsRequest(
                parent=f"models/{model_id}/versions/{version}", page_size=1
            ),
        )
        listed = [e.name for e in c.list_evaluations(model_id, version, page_size=1)]
    assert len(pages.evaluations) == 1 and pages.next_page_token
    assert listed == [two.name, one.name]
