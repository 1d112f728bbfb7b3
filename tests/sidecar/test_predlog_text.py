"""Strings UTF-8 cannot encode (lone surrogates, as a JSON "\\udcff" escape makes) reach the
prediction log: the records are written with the character escaped and the writer keeps
running; column names that cannot be encoded are refused on the caller's side."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sidecar.predlog import (
    PredictionBatch,
    PredictionLogSettings,
    RejectedRequest,
    open_prediction_log,
    read_logs,
)

BAD = "bad\udcff"
ESCAPED = "bad\\udcff"


def test_strings_with_lone_surrogates_are_written_escaped_and_the_writer_keeps_running(
    tmp_path: Path,
) -> None:
    failures: list[BaseException] = []
    words = np.array(["ok", BAD], dtype=object)
    letters = np.array([["a"], [BAD]])
    x = np.ones((2, 2), np.float32)
    settings = PredictionLogSettings(dir=tmp_path, durability="sync")
    with open_prediction_log(settings, on_failure=failures.append) as writer:
        writer.append(
            PredictionBatch(
                "m",
                BAD,
                [BAD],
                [2],
                {"x": x, "word": words, "letter": letters},
                {"label": words},
                trace_ids=BAD,
                status_codes="INTERNAL",
                status_reasons=[BAD],
                status_messages=BAD,
            )
        ).result(10)
        writer.append_rejected(
            RejectedRequest("r\udc80", "INVALID_ARGUMENT", BAD, message=BAD, trace_id=BAD)
        ).result(10)
        writer.append(PredictionBatch("m", "1", ["good"], [2], {"x": x})).result(10)
        assert writer.healthy and not failures
    assert words[1] == BAD and letters[1, 0] == BAD  # the caller's arrays are left as they were
    rows = read_logs(tmp_path).to_pylist()
    assert [r["request_id"] for r in rows] == [ESCAPED, ESCAPED, "r\\udc80", "good", "good"]
    first = rows[1]
    assert (first["model_version"], first["trace_id"]) == (ESCAPED, ESCAPED)
    assert (first["status_reason"], first["status_message"]) == (ESCAPED, ESCAPED)
    assert (first["word"], first["letter_0"], first["out_label"]) == (ESCAPED, ESCAPED, ESCAPED)
    assert rows[0]["word"] == "ok"
    assert (rows[2]["status_reason"], rows[2]["trace_id"]) == (ESCAPED, ESCAPED)


def test_a_batch_gathered_with_others_costs_none_of_them(tmp_path: Path) -> None:
    x = np.ones((1, 2), np.float32)
    settings = PredictionLogSettings(dir=tmp_path, durability="async")
    with open_prediction_log(settings) as writer:
        tickets = [
            writer.append(PredictionBatch("m", "1", [rid], [1], {"x": x}))
            for rid in ("a", BAD, "c")
        ]
        for ticket in tickets:
            ticket.result(10)
        assert writer.healthy
    assert read_logs(tmp_path).column("request_id").to_pylist() == ["a", ESCAPED, "c"]


def test_a_column_name_utf8_cannot_encode_is_refused_before_queueing(tmp_path: Path) -> None:
    x = np.ones((1, 2), np.float32)
    settings = PredictionLogSettings(dir=tmp_path, durability="sync")
    with open_prediction_log(settings) as writer:
        with pytest.raises(ValueError, match="not valid UTF-8"):
            writer.append(PredictionBatch("m", "1", ["a"], [1], {"x": x}, feature_names=["f", BAD]))
        with pytest.raises(ValueError, match="not valid UTF-8"):
            writer.append(PredictionBatch("m", "1", ["a"], [1], {"x": x}, {BAD: x[:, 0]}))
        writer.append(PredictionBatch("m", "1", ["ok"], [1], {"x": x})).result(10)
        assert writer.healthy
    assert read_logs(tmp_path).column("request_id").to_pylist() == ["ok"]
