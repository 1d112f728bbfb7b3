"""The content-addressed blob files: direct-I/O writes with padding, the buffered fallback,
threads, bad input."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from controlplane import blobstore
from controlplane.blobstore import BlobStore
from modelplane.errors import InvalidArgument, ResourceExhausted

MIB = 1 << 20


def _pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


@pytest.fixture(params=["direct", "buffered"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> BlobStore:
    if request.param == "buffered":
        # A platform without O_DIRECT (macOS) takes the buffered path.
        monkeypatch.delattr(os, "O_DIRECT")
    return BlobStore.open(tmp_path / "root", 8 * MIB)


def _direct_flags_or_skip(folder: Path) -> int:
    """The flags a writer's file gets in ``folder``; skips where the file system refuses
    O_DIRECT."""
    fd = os.open(folder / "probe", os.O_WRONLY | os.O_CREAT)
    with blobstore._FileWriter(fd) as writer:
        if writer.buffer is None:
            pytest.skip(f"the file system of {folder} refuses O_DIRECT")
        return fcntl.fcntl(fd, fcntl.F_GETFL)


def test_writes_on_this_file_system_bypass_the_page_cache(tmp_path: Path) -> None:
    assert _direct_flags_or_skip(tmp_path) & os.O_DIRECT


@pytest.mark.parametrize(
    ("size", "piece"),
    [
        (0, 1),
        (1, 1),
        (4095, 1000),
        (4096, 4096),
        (4097, 3),
        (MIB, MIB),
        (MIB + 1, MIB),
        (MIB - 1, 7777),
        (3 * MIB + 17, 65536),
        (2 * MIB, 3 * MIB // 2),
    ],
)
def test_bytes_come_back_exactly_whatever_the_size_and_chunking(
    store: BlobStore, size: int, piece: int
) -> None:
    data = os.urandom(size)
    sha = hashlib.sha256(data).hexdigest()
    assert store.receive(_pieces(data, piece), sha, size) == size
    assert store.path(sha).stat().st_size == size
    assert store.read_bytes(sha) == data  # the first read comes from memory ...
    assert len(store.recent) == 0
    assert store.read_bytes(sha) == data  # ... the next from the file
    assert b"".join(store.iter_chunks(sha, chunk_bytes=5000)) == data
    assert list((store.root / "tmp").iterdir()) == []


def test_threads_writing_at_once_keep_their_own_bytes(store: BlobStore) -> None:
    datas = [os.urandom(MIB + 1000 * i + 1) for i in range(6)]
    barrier = threading.Barrier(len(datas))
    errors: list[BaseException] = []

    def upload(data: bytes) -> None:
        barrier.wait()
        try:
            for _ in range(3):
                store.receive(_pieces(data, 100_000), hashlib.sha256(data).hexdigest())
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=(d,)) for d in datas]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for data in datas:
        assert store.path(hashlib.sha256(data).hexdigest()).read_bytes() == data


def test_a_wrong_digest_or_size_stores_nothing(store: BlobStore) -> None:
    data = os.urandom(MIB + 5)
    sha = hashlib.sha256(data).hexdigest()
    with pytest.raises(InvalidArgument) as wrong_digest:
        store.receive([data], hashlib.sha256(b"other").hexdigest())
    assert wrong_digest.value.reason == "DIGEST_MISMATCH"
    with pytest.raises(InvalidArgument) as wrong_size:
        store.receive([data], sha, len(data) - 1)
    assert wrong_size.value.reason == "SIZE_MISMATCH"
    assert not store.exists(sha)
    assert list((store.root / "tmp").iterdir()) == []
    assert len(store.recent) == 0


def test_an_upload_over_the_limit_stops_midway_and_stores_nothing(store: BlobStore) -> None:
    data = os.urandom(9 * MIB)
    sha = hashlib.sha256(data).hexdigest()
    with pytest.raises(ResourceExhausted) as too_large:
        store.receive(_pieces(data, MIB), sha)
    assert too_large.value.reason == "UPLOAD_TOO_LARGE"
    assert not store.exists(sha)
    assert list((store.root / "tmp").iterdir()) == []
    # The thread's buffer is reused cleanly by the next upload.
    small = os.urandom(5000)
    store.receive([small], hashlib.sha256(small).hexdigest())
    assert store.path(hashlib.sha256(small).hexdigest()).read_bytes() == small


def test_a_file_system_refusing_direct_writes_gets_the_bytes_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_pwrite = os.pwrite
    refused: list[int] = []

    def pwrite(fd: int, data: memoryview, offset: int) -> int:
        # What some network and overlay file systems do: take the flag, refuse the write.
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    _direct_flags_or_skip(tmp_path)
    store = BlobStore.open(tmp_path / "root", 8 * MIB)
    monkeypatch.setattr(os, "pwrite", pwrite)
    data = os.urandom(2 * MIB + 123)
    sha = hashlib.sha256(data).hexdigest()
    store.receive(_pieces(data, 300_000), sha, len(data))
    assert refused == [0]  # refused once, then written buffered from the same offset
    assert store.path(sha).read_bytes() == data
    assert store.path(sha).stat().st_size == len(data)


def test_a_recent_upload_is_read_from_memory_once(store: BlobStore) -> None:
    data = os.urandom(MIB + 3)
    sha = hashlib.sha256(data).hexdigest()
    store.receive(_pieces(data, 100_000), sha, len(data))
    # Overwrite the file: the first read must still return the uploaded bytes, untouched by
    # the disk, and the second must come from the file.
    on_disk = store.path(sha)
    on_disk.write_bytes(b"changed on disk")
    assert store.read_bytes(sha) == data
    assert store.read_bytes(sha) == b"changed on disk"


def test_recent_uploads_stay_within_their_bounds(
    store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(blobstore, "RECENT_BLOB_MAX_BYTES", 3000)
    store.recent.limit_bytes = 5000
    blobs = [os.urandom(2000) for _ in range(3)]
    for data in blobs:
        store.receive([data], hashlib.sha256(data).hexdigest())
    # Room for two: the oldest went first.
    assert len(store.recent) == 2 and store.recent.total == 4000
    assert store.recent.take(hashlib.sha256(blobs[0]).hexdigest()) is None
    assert store.recent.take(hashlib.sha256(blobs[2]).hexdigest()) == blobs[2]
    # Too large to keep, whether declared or found out while receiving.
    big = os.urandom(3001)
    store.receive([big], hashlib.sha256(big).hexdigest(), len(big))
    store.receive(_pieces(big, 1000), hashlib.sha256(big).hexdigest())
    assert store.recent.take(hashlib.sha256(big).hexdigest()) is None
    assert store.recent.total == 2000


def test_a_removed_blob_folder_is_made_again(store: BlobStore) -> None:
    first = os.urandom(100)
    sha = hashlib.sha256(first).hexdigest()
    store.receive([first], sha)
    os.unlink(store.path(sha))
    store.path(sha).parent.rmdir()
    store.receive([first], sha)
    assert store.path(sha).read_bytes() == first


def test_starting_removes_only_stale_upload_files(tmp_path: Path) -> None:
    from tests.controlplane.conftest import start_controlplane

    tmp = tmp_path / "artifacts" / "tmp"
    tmp.mkdir(parents=True)
    stale, fresh, other = tmp / "upload-dead", tmp / "upload-live", tmp / "notes.txt"
    for path in (stale, fresh, other):
        path.write_bytes(b"x" * 100)
    old = time.time() - 2 * 3600
    for path in (stale, other):
        os.utime(path, (old, old))
    cp = start_controlplane(tmp_path, f"sqlite:///{tmp_path / 'cp.db'}")
    try:
        assert sorted(p.name for p in tmp.iterdir()) == ["notes.txt", "upload-live"]
        with cp.client() as c:  # uploads still work alongside the kept file
            assert c.upload_blob(b"after the sweep").size_bytes == 15
    finally:
        cp.handle.stop(0)
    # Another replica sharing the root keeps a file written moments ago.
    BlobStore.open(tmp_path / "artifacts", 8 * MIB, stale_upload_seconds=60)
    assert fresh.exists()
    BlobStore.open(tmp_path / "artifacts", 8 * MIB, stale_upload_seconds=0)
    assert not fresh.exists() and other.exists()
