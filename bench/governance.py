"""Governance benchmark: gate decisions, audit appends and server-side evaluation.

Everything runs in one invocation, each figure next to its baseline from the same run:

- evaluation: ``controlplane.evaluation.evaluate`` in process (from an Arrow table, and from
  Parquet bytes as the server gets them) and through a real server's Evaluate RPC end to end
  (upload, operation, wait), against scikit-learn ``predict_proba`` plus the same metrics from
  ``sklearn.metrics``, for a logistic regression on ``make_classification`` data;
- gate: EvaluateGate through a real server (``python -m controlplane serve``) with a 3-rule
  policy including ``approvals.exists(...)``, after one evaluation and one signed approval, at
  concurrency 1 and 8; floors in process: ``evaluate_rules`` on precompiled rules with the
  variables the server builds, compile + evaluate, and ``GateService.evaluate_gate`` on the store;
- audit: ``ModelService.create`` through the store with the audit hook installed and without,
  on SQLite and PostgreSQL (fresh databases, dropped afterwards), 1 and 8 writer threads.

stdout: one JSON line per measurement, then ``"summary": true`` lines with the ratios;
stderr: progress notes.

    .venv/bin/python bench/governance.py [--rows 200000] [--repeats 3] [--duration 2]
        [--rounds 5] [--concurrency 1,8] [--threads 1,8] [--sections evaluation,gate,audit]
        [--backends sqlite,postgresql] [--server-workers 1] [--keep]

Load points (gate, audit) run ``--rounds`` times, alternating hook on and off for the audit;
summaries take medians over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from registry import ModelplaneServer, database, postgres_reachable, tree_cpu_seconds

MODEL = "bench-governance"
TARGET = "production"
RULES = [
    "metrics.roc_auc >= 0.8",
    "validation.passed",
    'approvals.exists(a, "risk" in a.roles && a.decision == "approve")',
]


def emit(line: dict[str, Any]) -> None:
    """Print one JSON result line."""
    print(json.dumps({"bench": "governance", **line}), flush=True)


def note(message: str) -> None:
    """Print a progress message for people (stderr)."""
    print(f"[governance bench] {message}", file=sys.stderr, flush=True)


def stats(latencies: list[float], wall: float) -> dict[str, Any]:
    """Count, rate and latency percentiles (ms) of one measured window."""
    lat = np.asarray(latencies)
    return {
        "ops": len(lat),
        "seconds": round(wall, 3),
        "ops_per_s": round(len(lat) / wall, 1) if wall else 0.0,
        "p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 3) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)) * 1e3, 3) if len(lat) else None,
    }


def closed_loop(calls: list[Callable[[], None]], warmup: int, duration: float) -> dict[str, Any]:
    """Each callable on its own thread, back to back for ``duration`` seconds after ``warmup``
    unmeasured calls; all threads start the window together."""
    latencies: list[list[float]] = [[] for _ in calls]
    errors: list[BaseException] = []
    warmed = threading.Barrier(len(calls) + 1)
    go = threading.Event()
    window = {"end": 0.0}

    def worker(i: int) -> None:
        call, mine = calls[i], latencies[i]
        try:
            for _ in range(warmup):
                call()
        except BaseException as exc:
            errors.append(exc)
        warmed.wait()
        go.wait()
        try:
            while not errors:
                t0 = time.perf_counter()
                if t0 >= window["end"]:
                    break
                call()
                mine.append(time.perf_counter() - t0)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(len(calls))]
    for t in threads:
        t.start()
    warmed.wait()
    cpu, began = time.process_time(), time.perf_counter()
    window["end"] = began + duration
    go.set()
    for t in threads:
        t.join()
    wall = max(time.perf_counter() - began, 1e-9)
    cpu = time.process_time() - cpu
    if errors:
        raise RuntimeError(f"a benchmark call failed: {errors[0]!r}") from errors[0]
    point = stats([x for m in latencies for x in m], wall)
    # CPU of this whole process over the window: unlike wall time, it barely moves when other
    # processes take the cores.
    point["process_cpu_ms_per_op"] = round(cpu / max(point["ops"], 1) * 1e3, 3)
    return point


def repeat(fn: Callable[[], Any], times: int) -> tuple[float, Any]:
    """Median wall seconds of ``times`` calls, and the last result."""
    spent, result = [], None
    for _ in range(times):
        t0 = time.perf_counter()
        result = fn()
        spent.append(time.perf_counter() - t0)
    return float(np.median(spent)), result


# Data and model -------------------------------------------------------------------------------


class Dataset:
    """A logistic regression trained on synthetic data and a labelled evaluation set."""

    def __init__(self, rows: int, features: int, workdir: Path) -> None:
        from skl2onnx import to_onnx
        from sklearn.datasets import make_classification
        from sklearn.linear_model import LogisticRegression

        train_rows = 20_000
        x, y = make_classification(
            n_samples=rows + train_rows,
            n_features=features,
            n_informative=max(features // 3, 2),
            flip_y=0.05,
            random_state=0,
        )
        x = x.astype(np.float32)
        self.clf = LogisticRegression(max_iter=1000).fit(x[:train_rows], y[:train_rows])
        self.x, self.y = x[train_rows:], y[train_rows:].astype(np.int64)
        self.names = [f"f{i:02d}" for i in range(features)]
        onx = to_onnx(self.clf, x[:1], options={id(self.clf): {"zipmap": False}}, target_opset=17)
        self.onnx = onx.SerializeToString()
        self.onnx_path = workdir / "model.onnx"
        self.onnx_path.write_bytes(self.onnx)
        columns: dict[str, Any] = {n: self.x[:, i] for i, n in enumerate(self.names)}
        columns["y"] = self.y
        self.table = pa.table(columns)
        self.parquet_path = workdir / "eval.parquet"
        pq.write_table(self.table, self.parquet_path)
        self.parquet = self.parquet_path.read_bytes()


def sklearn_metrics(clf: Any, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """``predict_proba`` and the engine's classification metrics, by scikit-learn (ECE by numpy:
    scikit-learn has no ECE)."""
    from sklearn import metrics as m

    proba = clf.predict_proba(x)
    pos = proba[:, 1]
    pred = np.argmax(proba, axis=1)
    p, r, f, _ = m.precision_recall_fscore_support(y, pred, average="binary", zero_division=0)
    pm, rm, fm, _ = m.precision_recall_fscore_support(y, pred, average="macro", zero_division=0)
    bins = np.minimum((pos * 10).astype(np.int64), 9)
    counts = np.bincount(bins, minlength=10)
    gap = np.abs(np.bincount(bins, y, 10) - np.bincount(bins, pos, 10))
    return {
        "accuracy": m.accuracy_score(y, pred),
        "precision": p,
        "recall": r,
        "f1": f,
        "precision_macro": pm,
        "recall_macro": rm,
        "f1_macro": fm,
        "roc_auc": m.roc_auc_score(y, pos),
        "pr_auc": m.average_precision_score(y, pos),
        "log_loss": m.log_loss(y, proba),
        "brier": m.brier_score_loss(y, pos),
        "ece": float(gap[counts > 0].sum() / len(y)),
    }


# Evaluation -----------------------------------------------------------------------------------


def bench_evaluation_in_process(data: Dataset, repeats: int) -> dict[str, float]:
    """Engine (table and Parquet bytes) against scikit-learn; returns rows/s by name."""
    from controlplane.evaluation import evaluate

    rows = len(data.y)

    def engine(source: pa.Table | bytes) -> Any:
        return evaluate(data.onnx, None, source, label="y", feature_names=data.names)

    evaluate(data.onnx, None, data.table.slice(0, 1000), label="y")  # import and session warm-up
    rates: dict[str, float] = {}
    seconds, ours = repeat(lambda: sklearn_metrics(data.clf, data.x, data.y), repeats)
    emit({"section": "evaluation", "system": "sklearn", "rows": rows, "seconds": round(seconds, 4)})
    rates["sklearn"] = rows / seconds
    for name, source in (("engine", data.table), ("engine-parquet", data.parquet)):
        seconds, report = repeat(lambda s=source: engine(s), repeats)  # type: ignore[misc]
        rates[name] = rows / seconds
        line: dict[str, Any] = {"section": "evaluation", "system": name, "rows": rows}
        line["seconds"] = round(seconds, 4)
        line["rows_per_s"] = round(rates[name])
        line["vs_sklearn"] = round(rates[name] / rates["sklearn"], 2)
        if name == "engine":
            diffs = {k: abs(float(report.metrics[k]) - float(v)) for k, v in ours.items()}
            line["max_metric_abs_diff"] = max(diffs.values())
            line["worst_metric"] = max(diffs, key=lambda k: diffs[k])
        emit(line)
    return rates


def bench_evaluation_rpc(
    client: Any, data: Dataset, version: int, repeats: int
) -> tuple[float, float]:
    """Upload + Evaluate + wait through the server; returns rows/s (medians) seen by the client
    and over the operation's own span on the server (created to finished)."""
    rows = len(data.y)
    spent, spans = [], []
    for i in range(repeats):
        t0 = time.perf_counter()
        op = client.evaluate(
            MODEL, version, data.parquet_path, label="y", compare_to="none", role=f"holdout{i}"
        )
        t1 = time.perf_counter()
        result = client.operation_result(op, timeout=300)
        t2 = time.perf_counter()
        assert result.rows == rows and result.metrics["roc_auc"] > 0.5
        done = client.get_operation(op.name)
        span = done.update_time.ToDatetime() - done.create_time.ToDatetime()
        spent.append(t2 - t0)
        spans.append(span.total_seconds())
        emit(
            {
                "section": "evaluation",
                "system": "server-rpc",
                "rows": rows,
                "seconds": round(t2 - t0, 4),
                "upload_and_start_s": round(t1 - t0, 4),
                "operation_s": round(t2 - t1, 4),
                "server_span_s": round(span.total_seconds(), 4),
                "parquet_bytes": len(data.parquet),
            }
        )
    return rows / float(np.median(spent)), rows / float(np.median(spans))


# Gate -----------------------------------------------------------------------------------------


def gate_floors(db_url: str, artifact_root: Path, version: int, repeats: int) -> dict[str, float]:
    """In-process costs of one decision with the exact variables the server builds (µs)."""
    from controlplane import audit
    from controlplane.policy import POLICY_VARIABLES, compile_rules, evaluate_rules
    from controlplane.server import SIGNING_KEY_FILE
    from controlplane.services.evidence import current_evidence
    from controlplane.services.gates import GateService, gate_variables, valid_approvals
    from controlplane.store import Store
    from modelplane.server.context import RequestContext

    key = audit.load_or_create_signing_key(artifact_root / SIGNING_KEY_FILE)
    store = Store.open(db_url, migrate=False)
    audit.install(store)
    try:
        with store.read() as tx:
            got = tx.versions.get(MODEL, version)
            assert got is not None
            evidence, latest, _ = current_evidence(tx, got, TARGET)
            approvals = valid_approvals(tx, key, got, TARGET, evidence)
            variables = gate_variables(got, latest, approvals)
        rules = compile_rules(RULES, variables=POLICY_VARIABLES)
        gates, ctx = GateService(store, key), RequestContext(principal="bench")
        assert evaluate_rules(rules, variables).allowed
        n = max(repeats, 1) * 100
        costs: dict[str, float] = {}
        for name, fn in (
            ("evaluate_rules", lambda: evaluate_rules(rules, variables)),
            (
                "compile+evaluate_rules",
                lambda: evaluate_rules(compile_rules(RULES, variables=POLICY_VARIABLES), variables),
            ),
            (
                "gate-service",
                lambda: gates.evaluate_gate(ctx, f"models/{MODEL}/versions/{version}", TARGET),
            ),
        ):
            count = n if name != "gate-service" else max(n // 4, 20)
            fn()
            spent, cpu = [], time.process_time()
            for _ in range(count):
                t0 = time.perf_counter()
                fn()
                spent.append(time.perf_counter() - t0)
            cpu = time.process_time() - cpu
            costs[f"{name}_cpu"] = cpu / count * 1e6
            # The median resists the pauses other processes on the machine cause.
            costs[name] = float(np.median(spent)) * 1e6
            emit(
                {
                    "section": "gate",
                    "system": name,
                    "calls": count,
                    "p50_us": round(costs[name], 1),
                    "mean_us": round(float(np.mean(spent)) * 1e6, 1),
                    "cpu_us": round(cpu / count * 1e6, 1),
                }
            )
        return costs
    finally:
        store.close()


def bench_gate(
    server: Any, version: int, args: argparse.Namespace
) -> dict[int, list[dict[str, Any]]]:
    """EvaluateGate at each concurrency; every answer must pass with 3 passed rules."""
    from modelplane import Client

    clients = [Client(server.address, principal="bench") for _ in range(max(args.concurrency))]
    results: dict[int, list[dict[str, Any]]] = {n: [] for n in args.concurrency}
    try:

        def call_for(c: Any) -> Callable[[], None]:
            def call() -> None:
                d = c.evaluate_gate(MODEL, version, TARGET)
                if not d.passed or [r.outcome for r in d.results] != ["passed"] * len(RULES):
                    raise RuntimeError(f"unexpected gate decision: {d}")

            return call

        for n in [n for _ in range(args.rounds) for n in args.concurrency]:
            cpu = tree_cpu_seconds(server.proc.pid)
            point = closed_loop([call_for(c) for c in clients[:n]], 5, args.duration)
            cpu = tree_cpu_seconds(server.proc.pid) - cpu
            point.update(section="gate", system="server-rpc", concurrency=n)
            point["server_cpu_ms_per_op"] = round(cpu / max(point["ops"], 1) * 1e3, 3)
            emit(point)
            results[n].append(point)
    finally:
        for c in clients:
            c.close()
    return results


def run_server_sections(
    data: Dataset, args: argparse.Namespace, workdir: Path, summary: dict[str, Any]
) -> None:
    """Start one server on a fresh SQLite file; evaluation over RPC, then gates."""
    from modelplane import Client

    work = workdir / "server"
    work.mkdir()
    db_url = f"sqlite:///{work / 'controlplane.db'}"
    server = ModelplaneServer(db_url, work, workers=args.server_workers)
    try:
        server.wait_ready(args.start_timeout)
        note(f"server at {server.address}")
        with Client(server.address, principal="bench", timeout=300) as client:
            client.create_policy("release", target=TARGET, rules=RULES)
            client.create_model(MODEL)
            version = int(
                client.register_version(
                    MODEL, data.onnx_path, label="y", feature_names=data.names, capture_env=False
                ).version
            )
            if "evaluation" in args.sections:
                summary["eval_rpc"] = bench_evaluation_rpc(client, data, version, args.repeats)
            else:
                client.operation_result(
                    client.evaluate(MODEL, version, data.parquet_path, label="y", compare_to="none")
                )
        if "gate" not in args.sections:
            return
        with Client(server.address, principal="reviewer").with_roles(["risk"]) as reviewer:
            reviewer.approve(MODEL, version, TARGET, comment="benchmark approval")
        summary["gate"] = bench_gate(server, version, args)
        summary["gate_floor_us"] = gate_floors(
            db_url, work / "modelplane-artifacts", version, args.repeats
        )
    finally:
        server.stop()


# Audit ----------------------------------------------------------------------------------------


def bench_audit(backend: str, args: argparse.Namespace, workdir: Path) -> dict[int, dict[str, Any]]:
    """CreateModel through the store, audit hook on and off; returns, by writer count, the
    median throughputs and the median of each round's on/off ratio."""
    from sqlmodel import func, select

    from controlplane import audit
    from controlplane.services.models import ModelService
    from controlplane.store import Store
    from controlplane.store.tables import AuditEventRow, ModelRow
    from modelplane.server.context import RequestContext

    ratios: dict[int, dict[str, Any]] = {}
    with ExitStack() as stack:
        services: dict[bool, ModelService] = {}
        for hooked in (False, True):
            url = stack.enter_context(
                database(backend, f"audit_{int(hooked)}", workdir, "bench_governance")
            )
            store = Store.open(url)
            stack.callback(store.close)
            if hooked:
                audit.install(store)
            services[hooked] = ModelService(store)
        ctx = RequestContext(principal="bench")
        counter = iter(range(10**9))

        def creator(service: ModelService) -> Callable[[], None]:
            def call() -> None:
                service.create(
                    ctx,
                    f"m{next(counter)}",
                    labels={"team": "bench"},
                    description="audit benchmark model",
                    request_id=str(uuid.uuid4()),
                )

            return call

        rates: dict[tuple[int, bool], list[float]] = {}
        cpus: dict[tuple[int, bool], list[float]] = {}
        turns = [w for _ in range(args.rounds) for w in args.threads]
        for turn, writers in enumerate(turns):
            for hooked in (False, True) if turn % 2 == 0 else (True, False):
                calls = [creator(services[hooked]) for _ in range(writers)]
                point = closed_loop(calls, 3, args.duration)
                point.update(section="audit", backend=backend, writers=writers, audit=hooked)
                emit(point)
                rates.setdefault((writers, hooked), []).append(point["ops_per_s"])
                cpus.setdefault((writers, hooked), []).append(point["process_cpu_ms_per_op"])
        for writers in args.threads:
            # Each round's on and off windows ran back to back under the same outside load.
            paired = [
                a / b for a, b in zip(rates[writers, True], rates[writers, False], strict=True)
            ]
            ratios[writers] = {
                "hook_on_ops_per_s": round(float(np.median(rates[writers, True])), 1),
                "hook_off_ops_per_s": round(float(np.median(rates[writers, False])), 1),
                "on_vs_off": round(float(np.median(paired)), 3),
                "on_vs_off_per_round": [round(r, 3) for r in paired],
                "process_cpu_ms_per_op_on": round(float(np.median(cpus[writers, True])), 3),
                "process_cpu_ms_per_op_off": round(float(np.median(cpus[writers, False])), 3),
            }
        for hooked, service in services.items():
            with service.store.read() as tx:
                models = tx.session.exec(select(func.count()).select_from(ModelRow)).one()
                events = tx.session.exec(select(func.count()).select_from(AuditEventRow)).one()
            check = audit.verify(service.store) if hooked else None
            if events != (models if hooked else 0) or (check is not None and not check.ok):
                raise RuntimeError(f"audit trail on {backend} is wrong: {models} {events} {check}")
            emit(
                {
                    "section": "audit",
                    "backend": backend,
                    "audit": hooked,
                    "models": models,
                    "audit_events": events,
                    "chain_verified": None if check is None else check.ok,
                }
            )
    return ratios


# Main -----------------------------------------------------------------------------------------


def summarize(summary: dict[str, Any]) -> None:
    """The ratio lines, and a readable digest on stderr."""
    rates = summary.get("eval_rates", {})
    if rates:
        line: dict[str, Any] = {"summary": True, "section": "evaluation"}
        line["sklearn_rows_per_s"] = round(rates["sklearn"])
        line["engine_rows_per_s"] = round(rates["engine"])
        line["engine_vs_sklearn"] = round(rates["engine"] / rates["sklearn"], 2)
        line["engine_parquet_vs_sklearn"] = round(rates["engine-parquet"] / rates["sklearn"], 2)
        if "eval_rpc" in summary:
            rpc, span = summary["eval_rpc"]
            line["server_rpc_rows_per_s"] = round(rpc)
            line["server_rpc_vs_sklearn"] = round(rpc / rates["sklearn"], 2)
            line["server_span_rows_per_s"] = round(span)
            line["server_span_vs_sklearn"] = round(span / rates["sklearn"], 2)
        emit(line)
        note(f"evaluation rows/s: {json.dumps(line)}")
    if "gate" in summary:
        floor = summary["gate_floor_us"]
        for n, points in summary["gate"].items():
            line = {"summary": True, "section": "gate", "concurrency": n, "rounds": len(points)}
            for key in ("p50_ms", "p99_ms", "ops_per_s", "server_cpu_ms_per_op"):
                line[key] = round(float(np.median([p[key] for p in points])), 3)
            line["floor_evaluate_rules_ms"] = round(floor["evaluate_rules"] / 1e3, 3)
            line["p50_vs_floor"] = round(line["p50_ms"] * 1e3 / floor["evaluate_rules"], 2)
            for name in ("evaluate_rules", "compile+evaluate_rules", "gate-service"):
                line[f"in_process_cpu_ms_{name}"] = round(floor[f"{name}_cpu"] / 1e3, 3)
            line["server_cpu_vs_evaluate_rules_cpu"] = round(
                line["server_cpu_ms_per_op"] * 1e3 / floor["evaluate_rules_cpu"], 2
            )
            emit(line)
            note(f"gate: {json.dumps(line)}")
    for backend, ratios in summary.get("audit", {}).items():
        for writers, figures in ratios.items():
            line = {"summary": True, "section": "audit", "backend": backend, "writers": writers}
            line.update(figures)
            ratio = figures["on_vs_off"]
            line["overhead_pct"] = round((1 / ratio - 1) * 100, 1) if ratio else None
            emit(line)
            note(f"audit: {json.dumps(line)}")


def main() -> int:
    """Run every selected section and print the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="evaluation rows")
    parser.add_argument("--features", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per evaluation")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per load point")
    parser.add_argument("--rounds", type=int, default=5, help="repeat every load point")
    parser.add_argument("--concurrency", default="1,8", help="gate callers")
    parser.add_argument("--threads", default="1,8", help="audit writer threads")
    parser.add_argument("--sections", default="evaluation,gate,audit")
    parser.add_argument("--backends", default="sqlite,postgresql", help="audit backends")
    parser.add_argument("--server-workers", default="1", help="server processes (--workers)")
    parser.add_argument("--start-timeout", type=float, default=120.0)
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.threads = [int(c) for c in args.threads.split(",")]
    args.sections = args.sections.split(",")
    backends = args.backends.split(",")
    if "audit" in args.sections and "postgresql" in backends and (why := postgres_reachable()):
        note(f"PostgreSQL lines skipped: {why}")
        emit({"skipped": "postgresql", "reason": why})
        backends.remove("postgresql")
    workdir = Path(tempfile.mkdtemp(prefix="bench-governance-"))
    summary: dict[str, Any] = {}
    began = time.perf_counter()
    try:
        note(f"building {args.rows} x {args.features} data and the model")
        data = Dataset(args.rows, args.features, workdir)
        emit({"rows": args.rows, "features": args.features, "cpus": os.cpu_count()})
        if "evaluation" in args.sections:
            note("evaluation in process")
            summary["eval_rates"] = bench_evaluation_in_process(data, args.repeats)
        if "evaluation" in args.sections or "gate" in args.sections:
            note("server: evaluation over RPC and gates")
            run_server_sections(data, args, workdir, summary)
        if "audit" in args.sections:
            summary["audit"] = {}
            for backend in backends:
                note(f"audit on {backend}")
                summary["audit"][backend] = bench_audit(backend, args, workdir)
        summarize(summary)
        note(f"done in {time.perf_counter() - began:.0f} s")
    finally:
        if args.keep:
            note(f"scratch kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
