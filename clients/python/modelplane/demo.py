"""The end-to-end walkthrough behind ``make demo``, on the embedded SQLite default.

It trains two models on scikit-learn's bundled breast-cancer data, starts a control plane,
registers both versions with lineage and a baseline profile, moves the ``champion`` alias with
its history, serves the champion from a sidecar over the Open Inference Protocol with every
prediction logged to Arrow, and prints where the state, logs and metrics are.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

STATE = Path(".modelplane") / "demo"
MODEL = "breast-cancer"


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def note(text: str) -> None:
    print(f"    {text}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_serving(address: str, proc: subprocess.Popen[bytes], what: str) -> None:
    """Wait for ``what`` to report SERVING, or stop the demo saying why."""
    from modelplane.testing import wait_serving as wait

    try:
        wait(address, timeout=120, proc=proc)
    except (RuntimeError, TimeoutError) as exc:
        raise SystemExit(f"{what}: {exc}; see {STATE}/*.log") from None


@dataclass
class Candidate:
    """One trained model: its ONNX file, parameters and holdout score."""

    onnx: Path
    params: dict[str, str]
    holdout_auc: float


@dataclass
class Trained:
    """What the demo trains: two candidates and the data files."""

    candidates: dict[str, Candidate]
    train: Path
    holdout: Path
    x_holdout: Any


def train(folder: Path) -> Trained:
    """Two classifiers on the same split, exported to ONNX, and the data as files."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    from skl2onnx import to_onnx
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_breast_cancer()
    names = [n.replace(" ", "_") for n in data.feature_names]
    x = data.data.astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, data.target, test_size=0.3, random_state=7)
    models = {
        "v1": (
            make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000)),
            {"C": "0.05"},
        ),
        "v2": (
            GradientBoostingClassifier(n_estimators=150, max_depth=2, random_state=0),
            {"n_estimators": "150", "max_depth": "2"},
        ),
    }
    candidates: dict[str, Candidate] = {}
    for key, (clf, params) in models.items():
        clf.fit(x_tr, y_tr)
        auc = float(roc_auc_score(y_te, clf.predict_proba(x_te)[:, 1]))
        onx = to_onnx(
            clf,
            x_tr[:1],
            options={id(clf.steps[-1][1] if hasattr(clf, "steps") else clf): {"zipmap": False}},
            target_opset=17,
        )
        path = folder / f"{key}.onnx"
        path.write_bytes(onx.SerializeToString())
        candidates[key] = Candidate(path, params, auc)

    def table(xs: np.ndarray, ys: np.ndarray) -> pa.Table:
        cols = {n: xs[:, i].astype(np.float64) for i, n in enumerate(names)}
        cols["diagnosis"] = ys.astype(np.int64)
        return pa.table(cols)

    pq.write_table(table(x_tr, y_tr), folder / "train.parquet")
    pacsv.write_csv(table(x_te, y_te), folder / "holdout.csv")
    return Trained(candidates, folder / "train.parquet", folder / "holdout.csv", x_te)


def main() -> int:
    started = time.monotonic()
    if STATE.exists():
        shutil.rmtree(STATE)
    (STATE / "data").mkdir(parents=True)
    from modelplane import Client

    say("Training two classifiers on scikit-learn's bundled breast-cancer data")
    trained = train(STATE / "data")
    for key in ("v1", "v2"):
        cand = trained.candidates[key]
        note(f"{key}: {cand.onnx}  holdout ROC AUC {cand.holdout_auc:.4f}")

    with ExitStack() as stack:
        cp_port, cp_metrics = free_port(), free_port()
        address = f"127.0.0.1:{cp_port}"
        say(f"Starting the control plane on {address} (SQLite at {STATE}/controlplane.db)")
        cp_log = stack.enter_context((STATE / "controlplane.log").open("wb"))
        cp = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "modelplane.cli",
                "controlplane",
                "serve",
                "--listen",
                address,
                "--db",
                f"sqlite:///{STATE / 'controlplane.db'}",
                "--artifact-root",
                str(STATE / "artifacts"),
                "--metrics-listen",
                f"127.0.0.1:{cp_metrics}",
            ],
            stdout=cp_log,
            stderr=subprocess.STDOUT,
        )
        stack.callback(_stop, cp)
        wait_serving(address, cp, "the control plane")
        note(f"metrics: http://127.0.0.1:{cp_metrics}/metrics   logs: {STATE}/controlplane.log")

        alice = stack.enter_context(Client(address, principal="alice"))
        say("Registering the model and both versions with lineage (as alice)")
        alice.create_model(
            MODEL,
            description="Malignant vs benign from cell-nucleus measurements",
            labels={"team": "oncology"},
            intended_use="Decision support for radiologists",
            limitations="Trained on the Wisconsin diagnostic data only",
        )
        versions = {}
        for key in ("v1", "v2"):
            info = trained.candidates[key]
            v = alice.register_version(
                MODEL,
                info.onnx,
                datasets={"train": trained.train, "holdout": trained.holdout},
                label="diagnosis",
                params=info.params,
                metrics={"holdout_auc": info.holdout_auc},
                training_run_id=f"demo-{key}",
                code_repo="https://example.org/modelplane-demo",
                code_commit="0" * 40,
            )
            versions[key] = v
            sig = v.signature.inputs[0]
            note(
                f"{v.name}: artifact sha256 {v.artifact.sha256[:16]}..., input {sig.name} "
                f"{sig.datatype}{list(sig.shape)}, "
                f"{len(v.lineage.environment.packages)} packages recorded"
            )
            note(
                f"  baseline profile of {v.baseline.feature_count} features over "
                f"{v.baseline.row_count} training rows: blobs/{v.baseline.sha256[:16]}..."
            )

        say("Moving the champion alias, with reasons kept in its history")
        alice.set_alias(MODEL, "champion", 1, reason="first release")
        time.sleep(0.05)
        before_switch = datetime.now(UTC)
        auc1, auc2 = (trained.candidates[k].holdout_auc for k in ("v1", "v2"))
        better = "v2" if auc2 > auc1 else "v1"
        alice.set_alias(
            MODEL, "champion", int(better[1]), reason=f"holdout AUC {max(auc1, auc2):.4f}"
        )
        note(f"champion now: {alice.get_version(MODEL, '@champion').name}")
        note(
            f"champion at {before_switch.isoformat(timespec='seconds')}: "
            f"{alice.get_alias(MODEL, 'champion', as_of=before_switch).version}"
        )
        subprocess.run(
            [
                sys.executable,
                "-m",
                "modelplane.cli",
                "--server",
                address,
                "alias",
                "history",
                MODEL,
                "champion",
            ],
            check=True,
        )

        _governance(address, alice, trained, int(better[1]))

        say("Serving the champion from a sidecar (Open Inference Protocol on ONNX Runtime)")
        champion_file = alice.download_version(MODEL, "@champion", STATE / "champion.onnx")
        sc_port, sc_metrics = free_port(), free_port()
        sc_address = f"127.0.0.1:{sc_port}"
        log_dir = STATE / "predictions"
        argv = [
            sys.executable,
            "-m",
            "modelplane.cli",
            "sidecar",
            "serve",
            "--model",
            str(champion_file),
            "--listen",
            sc_address,
            "--model-name",
            MODEL,
            "--model-version",
            str(alice.get_version(MODEL, "@champion").version),
            "--metrics-listen",
            f"127.0.0.1:{sc_metrics}",
        ]
        logging_on = _sidecar_supports("--log-dir")
        if logging_on:
            argv += ["--log-dir", str(log_dir)]
        sc_log = stack.enter_context((STATE / "sidecar.log").open("wb"))
        sc = subprocess.Popen(argv, stdout=sc_log, stderr=subprocess.STDOUT)
        stack.callback(_stop, sc)
        wait_serving(sc_address, sc, "the sidecar")
        latencies = _send_traffic(sc_address, trained.x_holdout, MODEL)
        p50_ms = 1000 * sorted(latencies)[len(latencies) // 2]
        note(f"{len(latencies)} predictions, p50 {p50_ms:.2f} ms")
        note(f"metrics: http://127.0.0.1:{sc_metrics}/metrics   logs: {STATE}/sidecar.log")
        if logging_on:
            _stop(sc)
            from sidecar.predlog import read_logs

            table = read_logs(log_dir)
            note(
                f"prediction log: {table.num_rows} rows in {log_dir}/ "
                f"(read with `modelplane logs read {log_dir}`)"
            )

        say("Checking the audit trail")
        result = alice.verify_audit()
        note(f"audit chain verified: {result.ok}, {result.checked} events")

        say("Where things are")
        note(f"database:    {STATE / 'controlplane.db'}")
        note(f"artifacts:   {STATE / 'artifacts'} (content-addressed by sha256)")
        note(f"model card:  {STATE / 'model-card.md'}")
        note(f"server logs: {STATE}/controlplane.log, {STATE}/sidecar.log (JSON lines)")
        if logging_on:
            note(f"predictions: {log_dir} (Arrow IPC streams)")
    say(f"Done in {time.monotonic() - started:.0f}s")
    return 0


def _governance(address: str, alice: Any, trained: Trained, best: int) -> None:
    """Policy, server-side evaluation, gate, approvals and the governed alias move."""
    from modelplane import Client, PermissionDenied

    say("Governance: a release policy for the production alias (as ops-admin)")
    rules = [
        "metrics.roc_auc >= 0.95",
        'evaluation.dataset_role == "holdout"',
        'approvals.exists(a, "risk" in a.roles && a.decision == "approve")',
    ]
    with Client(address, principal="ops-admin") as admin:
        admin.create_policy("production-release", target="production", rules=rules)
    for rule in rules:
        note(f"rule: {rule}")

    say(f"Evaluating v{best} on the holdout data, on the server (as alice)")
    op = alice.evaluate(MODEL, best, trained.holdout, label="diagnosis", compare_to="champion")
    evaluation = alice.operation_result(op)
    shown = ("roc_auc", "accuracy", "f1", "log_loss", "ece")
    note(", ".join(f"{k} {evaluation.metrics[k]:.4f}" for k in shown if k in evaluation.metrics))
    note(f"{evaluation.name} (operation {op.name})")

    say("Gate for production before any approval")
    decision = alice.evaluate_gate(MODEL, best, "production")
    for r in decision.results:
        note(f"[{r.outcome}] {r.expression}")
    note(f"passed: {decision.passed}")

    say("Approvals: the author may not approve her own version; bob (role risk) does")
    try:
        alice.with_roles(["risk"]).approve(MODEL, best, "production", comment="looks good")
    except PermissionDenied as exc:
        note(f"alice refused: {exc.reason}")
    with Client(address, principal="bob") as bob:
        approval = bob.with_roles(["risk"]).approve(
            MODEL, best, "production", comment="holdout metrics reviewed"
        )
    note(f"bob approved, signed by key {approval.key_id[:16]}...")
    decision = alice.evaluate_gate(MODEL, best, "production")
    note(f"gate passed: {decision.passed}")
    alice.set_alias(MODEL, "production", best, reason="gate passed, risk approved")
    note(f"production now: {alice.get_version(MODEL, '@production').name}")
    card = alice.model_card(MODEL, best, format="md")
    path = STATE / "model-card.md"
    path.write_text(card.content)
    note(f"model card: {path}")


def _sidecar_supports(flag: str) -> bool:
    out = subprocess.run(
        [sys.executable, "-m", "modelplane.cli", "sidecar", "serve", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    return flag in out.stdout


def _send_traffic(address: str, rows: object, model: str) -> list[float]:
    """Send each holdout row as one OIP request; return the latencies."""
    import grpc
    import numpy as np

    from modelplane.oip import grpc_service_pb2 as pb
    from modelplane.oip import grpc_service_pb2_grpc as pbg

    x = np.asarray(rows, dtype=np.float32)
    latencies = []
    with grpc.insecure_channel(address) as ch:
        stub = pbg.GRPCInferenceServiceStub(ch)
        for i, row in enumerate(x):
            request = pb.ModelInferRequest(
                model_name=model,
                id=f"demo-{i}",
                inputs=[
                    pb.ModelInferRequest.InferInputTensor(
                        name="X", datatype="FP32", shape=[1, x.shape[1]]
                    )
                ],
                raw_input_contents=[row.tobytes()],
            )
            t0 = time.perf_counter()
            stub.ModelInfer(request, timeout=10)
            latencies.append(time.perf_counter() - t0)
    return latencies


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
