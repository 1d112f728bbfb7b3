"""``modelplane labels send`` against a real managed sidecar: request ids are sent as written,
bad cells are usage errors naming their line, and ``--kind`` decides how values are sent."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from real_plane import RealPlane, real_managed, real_plane  # noqa: F401
from sidecar_helpers import output_array, raw_request, stub

from modelplane.cli import main

NAME = "fraud"


@pytest.fixture
def served(
    real_managed: Any,  # noqa: F811
    real_plane: RealPlane,  # noqa: F811
    artifacts: dict[int, bytes],
) -> Any:
    """A managed sidecar that answered one row under each of three numeric-looking ids, and
    the class it predicted for them (the same row each time)."""
    real_plane.deploy({1: artifacts[1]})
    h = real_managed()
    assert h.wait_ready(60)
    x = np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)
    reply = stub(h.port).ModelInfer(raw_request(NAME, {"input": ("FP32", x)}))
    for rid in ("000123", "1e5", "0042"):
        stub(h.port).ModelInfer(raw_request(NAME, {"input": ("FP32", x)}, id=rid))
    deadline = time.monotonic() + 10
    while len(h.observer.index) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    return h, int(np.argmax(output_array(reply, 0, np.float32)[0]))


def test_labels_send_keeps_ids_and_refuses_bad_cells(
    served: Any,
    real_plane: RealPlane,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    h, p = served
    plane = real_plane
    labels = tmp_path / "labels.csv"
    labels.write_text(f"request_id,row,label\n000123,0,{p}\n1e5,0,{p}\n0042,0,{1 - p}\n")
    capsys.readouterr()
    code = main(["--output", "json", "labels", "send", str(labels), "--sidecar", h.address])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["sidecars"] == [
        {
            "sidecar": h.address,
            "outcome": "done",
            "delivered": 3,
            "accepted": 0,
            "matched": 3,
            "error": None,
        }
    ]
    seen = len(plane.reports)
    reports = plane.wait_reports(lambda rs: len(rs) >= seen + 3)
    assert sum(a.labeled for r in reports for a in r.arms) == 3
    assert sum(a.correct for r in reports for a in r.arms) == 2

    empty_row = tmp_path / "empty-row.csv"
    empty_row.write_text("request_id,row,label\n000123,0,1\nabc,,1\n")
    assert main(["labels", "send", str(empty_row), "--sidecar", h.address]) == 2
    err = capsys.readouterr().err
    assert "line 3" in err and "row" in err and "Traceback" not in err

    # A float column is sent as targets by default; --kind class sends it as classes,
    # and refuses a value that is not a whole number, naming its line.
    floats = tmp_path / "floats.csv"
    floats.write_text(f"request_id,label\n000123,{p}.0\n0042,0.5\n")
    assert main(["labels", "send", str(floats), "--sidecar", h.address, "--kind", "class"]) == 2
    assert "line 3" in capsys.readouterr().err
    floats.write_text(f"request_id,label\n000123,{p}.0\n")
    from modelplane.cli.labels import _labels, _read

    (as_class,) = _labels(_read(floats, "label"), "label", floats, "class")
    assert (as_class.request_id, as_class.WhichOneof("value")) == ("000123", "class_label")
    (as_target,) = _labels(_read(floats, "label"), "label", floats)
    assert as_target.WhichOneof("value") == "target"
    code = main(["labels", "send", str(floats), "--sidecar", h.address, "--kind", "class"])
    assert code == 0


def test_a_failure_part_way_names_the_sidecars_already_done(
    served: Any,
    real_plane: RealPlane,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The second sidecar is unreachable: the first has every label, and the output says so."""
    h, p = served
    labels = tmp_path / "labels.csv"
    labels.write_text(f"request_id,row,label\n000123,0,{p}\n")
    capsys.readouterr()
    argv = ["--timeout", "3", "labels", "send", str(labels), "--sidecar", h.address]
    code = main([*argv, "--sidecar", "127.0.0.1:1"])
    err = capsys.readouterr().err
    assert code == 4, err
    assert f"1 of 2 sidecars have every label ({h.address})" in err
    assert "send the file again to 127.0.0.1:1" in err
    # And sending again counts nothing twice.
    seen = len(real_plane.reports)
    assert main(argv) == 0
    reports = real_plane.wait_reports(lambda rs: len(rs) >= seen + 3)
    assert sum(a.labeled for r in reports for a in r.arms) == 1
