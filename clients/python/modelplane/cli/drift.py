"""`modelplane drift` commands: ``report`` asks a running sidecar for its drift report.

With a sidecar of several worker processes, the report covers the worker the call reached
(its ``worker_pid`` is shown), and ``gauges_pid`` names the ``pid`` label of that worker's
``modelplane_drift_*`` gauges (the worker's observer process under ``--observer-mode process``,
else the worker itself).
"""

from __future__ import annotations

import argparse
from typing import Any

from modelplane.cli._common import call_sidecar, server_errors
from modelplane.cli._output import Printer, to_dict

_WINDOWS = {"current": "DRIFT_WINDOW_CURRENT", "last": "DRIFT_WINDOW_LAST"}
_COLUMNS = ["feature", "kind", "drifted", "psi", "ks", "p-value", "js", "missing", "out of range"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `drift` commands."""
    drift = sub.add_parser("drift", help="drift of the traffic a sidecar serves")
    commands = drift.add_subparsers(dest="drift_command", metavar="COMMAND", required=True)
    report = commands.add_parser(
        "report",
        help="a sidecar's drift report: per-feature statistics against its baseline",
        description=(
            "Print the drift of the open window (--window current, the default) or of the last "
            "closed one, as a table or with --output json as one JSON document. Exit code 3 "
            "when the sidecar answers with an error, 4 when it cannot be reached."
        ),
    )
    report.add_argument(
        "--sidecar", required=True, metavar="HOST:PORT", help="the sidecar's gRPC address"
    )
    report.add_argument(
        "--window", choices=tuple(_WINDOWS), default="current", help="which window to report"
    )
    report.set_defaults(handler=_report)


def _fetch(address: str, window: str, timeout: float) -> Any:
    from modelplane.v1 import sidecar_pb2

    request = sidecar_pb2.GetDriftReportRequest(window=_WINDOWS[window])
    return call_sidecar(address, "GetDriftReport", request, timeout)


def _number(value: Any, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}g}"


def _gauges(message: Any) -> str:
    """The ``pid`` label of the worker's drift gauges (a sidecar older than the field answers
    0: nothing is shown)."""
    return f", drift gauges pid {message.gauges_pid}" if message.gauges_pid else ""


def _report(args: argparse.Namespace, printer: Printer) -> int:
    with server_errors():
        message = _fetch(args.sidecar, args.window, args.timeout)
    doc = to_dict(message)
    if printer.json_output:
        printer.emit(doc)
        return 0
    share = doc.get("drifted_share")
    title = (
        f"{message.model_name} v{message.model_version}: {args.window} window, "
        f"{message.row_count} rows, drifted share {_number(share) or 'n/a'}, "
        f"worker pid {message.worker_pid}{_gauges(message)}"
    )
    rows = []
    for feat in doc.get("features", []):
        pvalue = feat.get("ks_pvalue", feat.get("chi2_pvalue"))
        rows.append(
            [
                feat["name"],
                feat.get("kind", "").removeprefix("FEATURE_KIND_").lower(),
                "yes" if feat.get("drifted") else "",
                _number(feat.get("psi")),
                _number(feat.get("ks_statistic")),
                _number(pvalue),
                _number(feat.get("js_distance")),
                _number(feat.get("missing_share")),
                _number(feat.get("out_of_range_share")),
            ]
        )
    printer.emit(
        doc,
        columns=[
            "feature",
            "kind",
            "drifted",
            "psi",
            "ks",
            "p-value",
            "js",
            "missing",
            "out of range",
        ],
        rows=rows,
        title=title,
    )
    return 0
