"""The demo's running order."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from contextlib import ExitStack

from modelplane.demo._console import MODEL, STATE, cli, note, say, stop, wait_serving
from modelplane.demo._governance import govern
from modelplane.demo._rollouts import DEPLOYMENT, drift, hooks_file, rollouts, start_sidecar
from modelplane.demo._traffic import Traffic
from modelplane.demo._training import train
from modelplane.testing.processes import free_port

#: The prediction-log columns the closing suggestion shows: a whole record (30 features, the
#: outputs) is too wide for a terminal, and the whole log (every request of the demo) too long.
LOG_COLUMNS = "timestamp,request_id,model_version,arm,out_label,latency_s"


def main() -> int:
    """Run the whole walkthrough; returns the exit code."""
    started = time.monotonic()
    if STATE.exists():
        shutil.rmtree(STATE)
    (STATE / "data").mkdir(parents=True)
    from modelplane import Client

    say("Training three classifiers on scikit-learn's bundled breast-cancer data")
    trained = train(STATE / "data")
    for key, cand in trained.candidates.items():
        note(f"{key}: {cand.onnx}  holdout ROC AUC {cand.holdout_auc:.4f}")

    with ExitStack() as stack:
        cp_port, cp_metrics = free_port(), free_port()
        address = f"127.0.0.1:{cp_port}"
        hooks, hook_output = hooks_file(STATE)
        say(f"Starting the control plane on {address} (SQLite at {STATE}/controlplane.db)")
        cp_log = stack.enter_context((STATE / "controlplane.log").open("wb"))
        cp = subprocess.Popen(
            cli(
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
            ),
            stdout=cp_log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "MODELPLANE_HOOKS_FILE": str(hooks)},
        )
        stack.callback(stop, cp)
        wait_serving(address, cp, "the control plane")
        note(f"metrics: http://127.0.0.1:{cp_metrics}/metrics   logs: {STATE}/controlplane.log")
        note(f"retraining command for deployments/{DEPLOYMENT} configured in {hooks}")

        alice = stack.enter_context(Client(address, principal="alice"))
        say("Registering the model and its versions with lineage (as alice)")
        alice.create_model(
            MODEL,
            description="Malignant vs benign from cell-nucleus measurements",
            labels={"team": "oncology"},
            intended_use="Decision support for radiologists",
            limitations="Trained on the Wisconsin diagnostic data only",
        )
        for key, info in trained.candidates.items():
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
            sig = v.signature.inputs[0]
            note(
                f"{v.name}: artifact sha256 {v.artifact.sha256[:16]}..., input {sig.name} "
                f"{sig.datatype}{list(sig.shape)}, baseline of {v.baseline.feature_count} "
                f"features over {v.baseline.row_count} rows, "
                f"{len(v.lineage.environment.packages)} packages recorded"
            )

        govern(address, alice, trained, 1)

        say(f"Creating deployments/{DEPLOYMENT} with v1 as champion and drift thresholds")
        alice.create_deployment(
            DEPLOYMENT, model=MODEL, champion_version=1, max_psi=0.5, min_rows=150
        )
        sc_address, sc_metrics, log_dir = start_sidecar(stack, address)
        note(f"sidecar on {sc_address} follows the deployment (OIP model name {DEPLOYMENT!r})")
        note(f"metrics: http://127.0.0.1:{sc_metrics}/metrics   logs: {STATE}/sidecar.log")
        traffic = Traffic(sc_address, DEPLOYMENT, trained.x_traffic, trained.y_traffic).start()
        stack.callback(traffic.stop)
        time.sleep(2)
        note(
            f"traffic running: rows of the whole data set, {traffic.sent} answered so far, "
            "labels sent back every second"
        )

        rollouts(alice, address, sc_address, traffic)
        drift(alice, sc_address, traffic, hook_output)
        traffic.stop()

        say("Checking the audit trail")
        result = alice.verify_audit()
        note(f"audit chain verified: {result.ok}, {result.checked} events")

        say("Where things are")
        note(f"database:    {STATE / 'controlplane.db'}")
        note(f"artifacts:   {STATE / 'artifacts'} (content-addressed by sha256)")
        note(f"model card:  {STATE / 'model-card.md'}")
        note(f"server logs: {STATE}/controlplane.log, {STATE}/sidecar.log (JSON lines)")
        note(
            f"metrics:     http://127.0.0.1:{cp_metrics}/metrics (control plane), "
            f"http://127.0.0.1:{sc_metrics}/metrics (sidecar); both servers stop now"
        )
        note(f"predictions: {log_dir} (Arrow IPC streams); v3's shadow answers, for one:")
        note(f"  $ modelplane logs read {log_dir} --arm shadow --limit 10 --columns {LOG_COLUMNS}")
        stop(cp)
    say(f"Done in {time.monotonic() - started:.0f}s")
    return 0
