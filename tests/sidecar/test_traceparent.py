"""The W3C ``traceparent`` header is read as the Trace Context specification says: a header
that must be ignored leaves a request without a trace id, in the sidecar's log lines and in
its prediction log alike. A real sidecar subprocess, its JSON log lines and its Arrow log
files read back."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import grpc
import numpy as np
import pytest
from sidecar_helpers import raw_request, spawn_sidecar, stub

from modelplane.server.context import trace_id_from
from sidecar.predlog import read_logs

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"

#: (case, header, the trace id it carries: empty when the header must be ignored)
CASES = [
    ("valid", f"00-{TRACE}-{PARENT}-01", TRACE),
    ("valid-unsampled", f"00-{TRACE}-{PARENT}-00", TRACE),
    ("surrounding-spaces", f"  00-{TRACE}-{PARENT}-01 ", TRACE),
    ("uppercase-trace-id", f"00-{TRACE.upper()}-{PARENT}-01", ""),
    ("uppercase-parent-id", f"00-{TRACE}-{PARENT.upper()}-01", ""),
    ("uppercase-flags", f"00-{TRACE}-{PARENT}-0A", ""),
    ("uppercase-version", f"0A-{TRACE}-{PARENT}-01", ""),
    ("zero-trace-id", f"00-{'0' * 32}-{PARENT}-01", ""),
    ("zero-parent-id", f"00-{TRACE}-{'0' * 16}-01", ""),
    ("version-ff", f"ff-{TRACE}-{PARENT}-01", ""),
    ("version-00-trailing-field", f"00-{TRACE}-{PARENT}-01-00", ""),
    ("version-00-trailing-text", f"00-{TRACE}-{PARENT}-01x", ""),
    ("future-version", f"01-{TRACE}-{PARENT}-01", TRACE),
    ("future-version-more-fields", f"cc-{TRACE}-{PARENT}-01-what-the-future-holds", TRACE),
    ("future-version-no-dash-after-flags", f"cc-{TRACE}-{PARENT}-01what", ""),
    ("future-version-zero-trace-id", f"cc-{'0' * 32}-{PARENT}-01-x", ""),
    ("short-trace-id", f"00-{TRACE[:-1]}-{PARENT}-01", ""),
    ("long-parent-id", f"00-{TRACE}-{PARENT}0-01", ""),
    ("not-hex", f"00-{TRACE[:-1]}g-{PARENT}-01", ""),
    ("garbage", "garbage", ""),
]


#: Cases gRPC metadata cannot carry (a tab), read as an HTTP header's value.
HEADER_ONLY = [("surrounding-tabs", f"\t00-{TRACE}-{PARENT}-01\t", TRACE)]


@pytest.mark.parametrize(
    ("header", "expected"),
    [pytest.param(h, e, id=case) for case, h, e in CASES + HEADER_ONLY],
)
def test_trace_id_from_follows_trace_context(header: str, expected: str) -> None:
    assert trace_id_from(header) == expected


def test_a_refused_request_is_logged_with_the_trace_id_only_of_a_valid_header(
    model_dir: Path, tmp_path: Path
) -> None:
    stderr = tmp_path / "stderr.log"
    log_dir = tmp_path / "log"
    proc, ready = spawn_sidecar(
        [
            *("--model", str(model_dir / "mlp.onnx"), "--listen", "127.0.0.1:0"),
            *("--device", "cpu", "--log-dir", str(log_dir), "--log-flush-interval", "20ms"),
        ],
        stderr=stderr,
    )
    try:
        s = stub(ready["port"])
        wrong_width = np.ones((1, 4), np.float32)
        for case, header, _ in CASES:
            request = raw_request("mlp", {"input": ("FP32", wrong_width)}, id=case)
            with pytest.raises(grpc.RpcError) as refused:
                s.ModelInfer(request, metadata=[("traceparent", header)], timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    lines = [json.loads(line) for line in stderr.read_text().splitlines() if line.startswith("{")]
    logged = {
        line["request_id"]: line["trace_id"]
        for line in lines
        if line.get("event") == "request refused"
    }
    table = read_logs(log_dir)
    recorded = dict(
        zip(table["request_id"].to_pylist(), table["trace_id"].to_pylist(), strict=True)
    )
    for case, _, expected in CASES:
        assert logged[case] == expected, case
        assert recorded[case] == (expected or None), case
