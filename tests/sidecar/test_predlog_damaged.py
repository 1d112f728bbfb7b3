"""Damaged log files: bytes changed by a failing disk raise a clear error naming the file and
byte, instead of crashing the reader or silently dropping the records after the damage, while
files cut short by a crash (or still being written) still read up to their last whole batch.

The damage raises ``DamagedLogFile``, a ``ValueError``: the CLI's exit 2.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pyarrow as pa
import pytest

from modelplane.cli import main
from sidecar.predlog import compact, read_file_batches, read_logs
from sidecar.predlog.reader import file_schema

SCHEMA = pa.schema(
    [("timestamp", pa.timestamp("us", tz="UTC")), ("request_id", pa.string()), ("row", pa.int32())]
)
#: The offsets of five two-character strings: 0, 2, 4, 6, 8, 10.
OFFSETS = struct.pack("<6i", 0, 2, 4, 6, 8, 10)


def _batch(i: int) -> pa.RecordBatch:
    times = pa.array([1_700_000_000_000_000 + i] * 5, SCHEMA.field("timestamp").type)
    return pa.record_batch(
        [times, pa.array([f"r{i}"] * 5), pa.array(range(5), pa.int32())], schema=SCHEMA
    )


def _log_file(directory: Path, batches: int = 6) -> tuple[Path, list[int]]:
    """A log file of ``batches`` batches, without the end-of-stream mark of a closed file
    (as a writer still writing, or killed, leaves it), and the byte where each batch's
    message starts."""
    sink = pa.BufferOutputStream()
    writer = pa.ipc.new_stream(sink, SCHEMA)
    starts = [SCHEMA.serialize().size]  # the schema is written with the first batch
    for i in range(batches):
        writer.write_batch(_batch(i))
        starts.append(sink.tell())
    starts.pop()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "20260101T000000.000000Z-p1-000001.arrows"
    path.write_bytes(sink.getvalue().to_pybytes())
    return path, starts


def _patch(path: Path, at: int, new: bytes) -> None:
    data = bytearray(path.read_bytes())
    data[at : at + len(new)] = new
    path.write_bytes(bytes(data))


def _offsets_of(path: Path, start: int) -> int:
    """Where the string offsets of the batch whose message starts at ``start`` lie."""
    return path.read_bytes().index(OFFSETS, start)


def test_offsets_out_of_range_raise_instead_of_reading_out_of_bounds(tmp_path: Path) -> None:
    path, starts = _log_file(tmp_path / "log")
    at = _offsets_of(path, starts[2])
    _patch(path, at + 12, struct.pack("<i", 14_417_928))
    with pytest.raises(ValueError, match=rf"{path.name} is damaged at byte {starts[2]} "):
        list(read_file_batches(path))
    with pytest.raises(ValueError, match=r"\(batch 3\)"):
        read_logs(path.parent)


def test_invalid_utf8_raises(tmp_path: Path) -> None:
    path, starts = _log_file(tmp_path / "log")
    text = path.read_bytes().index(b"r4r4r4", starts[4])
    _patch(path, text + 1, b"\xff")
    with pytest.raises(ValueError, match="UTF8"):
        list(read_file_batches(path))


def test_damage_mid_file_raises_rather_than_dropping_the_later_batches(tmp_path: Path) -> None:
    path, starts = _log_file(tmp_path / "log")
    _patch(path, starts[3], b"\x00\x00\x00\x01")  # the marker that starts batch 4
    with pytest.raises(ValueError, match=rf"byte {starts[3]} \(batch 4\)"):
        list(read_file_batches(path))
    with pytest.raises(ValueError, match=path.name):
        compact(path.parent, str(tmp_path / "parquet"))


def test_damaged_metadata_raises(tmp_path: Path) -> None:
    path, starts = _log_file(tmp_path / "log")
    _patch(path, starts[1] + 4, struct.pack("<i", 3))  # batch 2's metadata length
    with pytest.raises(ValueError, match=rf"byte {starts[1]} \(batch 2\)"):
        list(read_file_batches(path))


def test_a_damaged_last_batch_raises_when_its_message_is_whole(tmp_path: Path) -> None:
    path, starts = _log_file(tmp_path / "log")
    at = _offsets_of(path, starts[-1])
    _patch(path, at + 4, struct.pack("<i", -7))
    with pytest.raises(ValueError, match=r"\(batch 6\)"):
        list(read_file_batches(path))


def test_a_damaged_schema_raises_when_batches_follow(tmp_path: Path) -> None:
    path, _ = _log_file(tmp_path / "log")
    _patch(path, 0, b"\x00\x00\x00\x00")
    with pytest.raises(ValueError, match=r"byte 0 \(schema\)"):
        file_schema(path)
    with pytest.raises(ValueError):
        list(read_file_batches(path))


def test_a_field_name_that_is_not_utf8_raises(tmp_path: Path) -> None:
    path, starts = _log_file(tmp_path / "log")
    name = path.read_bytes().index(b"request_id", 0, starts[0])
    _patch(path, name + 3, b"\x97")
    with pytest.raises(ValueError, match=r"byte 0 \(schema\).*utf-8"):
        file_schema(path)


# Every file here is cut on purpose: the torn-tail warning each read gives is expected.
@pytest.mark.filterwarnings("ignore::sidecar.predlog.TornLogFile")
def test_every_cut_of_a_file_reads_as_a_torn_tail(tmp_path: Path) -> None:
    """Files being written or cut by ``kill -9`` end anywhere, even where the bytes left
    look like the start of a message (an all-valid bitmap is such bytes)."""
    path, starts = _log_file(tmp_path / "log", batches=3)
    data = path.read_bytes()
    torn = tmp_path / "torn.arrows"
    for cut in range(1, len(data) + 1):
        torn.write_bytes(data[:cut])
        whole = sum(1 for s in [*starts[1:], len(data)] if s <= cut)
        assert len(list(read_file_batches(torn))) == whole, cut


def test_cli_exits_2_naming_the_damaged_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, starts = _log_file(tmp_path / "log")
    _patch(path, starts[3], b"\x00\x00\x00\x01")
    assert main(["logs", "read", str(path.parent), "--format", "csv"]) == 2
    assert f"{path} is damaged at byte {starts[3]}" in capsys.readouterr().err
    assert main(["logs", "compact", str(path.parent), "--out", str(tmp_path / "pq")]) == 2
    assert path.name in capsys.readouterr().err
