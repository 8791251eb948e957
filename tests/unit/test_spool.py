"""The spool writer: whatever mix of in-place reads and copied pieces, the file and its
sha256 are the bytes given, in order, with memory bounded by its reused buffers."""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import threading
from pathlib import Path

import pytest

from falhook.downloads import spool
from falhook.downloads.spool import BUFFERS, CHUNK, SpoolError, SpoolWriter


def write_in_place(writer: SpoolWriter, data: bytes, rng: random.Random) -> None:
    """Like a socket read: whatever fits, in pieces of random size."""
    pos = 0
    while pos < len(data):
        room = writer.buffer()
        n = min(len(room), len(data) - pos, rng.randint(1, CHUNK))
        room[:n] = data[pos : pos + n]
        writer.commit(n)
        pos += n


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 12345])
def test_in_place_reads_give_the_bytes_and_their_sha256(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    writer = SpoolWriter(tmp_path / "f")
    write_in_place(writer, data, random.Random(size))
    digest = writer.finish()
    assert (tmp_path / "f").read_bytes() == data
    assert digest == hashlib.sha256(data).hexdigest()
    assert writer.size == size


def test_added_pieces_and_in_place_reads_mix(tmp_path: Path) -> None:
    rng = random.Random(7)
    pieces = [os.urandom(rng.randint(0, 3 * CHUNK)) for _ in range(12)]
    writer = SpoolWriter(tmp_path / "f")
    for i, piece in enumerate(pieces):
        if i % 2:
            writer.add(piece)
        else:
            write_in_place(writer, piece, rng)
    digest = writer.finish()
    whole = b"".join(pieces)
    assert (tmp_path / "f").read_bytes() == whole
    assert digest == hashlib.sha256(whole).hexdigest()


def test_buffers_are_reused_not_allocated_per_chunk(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path / "f")
    seen: set[int] = set()
    for _ in range(40):
        room = writer.buffer()
        seen.add(id(room.obj))
        room[:] = b"x" * len(room)
        writer.commit(len(room))
    writer.finish()
    assert len(seen) <= BUFFERS
    assert (tmp_path / "f").stat().st_size == 40 * CHUNK


def test_the_file_is_new_and_private(tmp_path: Path) -> None:
    (tmp_path / "taken").write_bytes(b"")
    threads = threading.active_count()
    with pytest.raises(SpoolError, match=r"spool file .*taken cannot be created: File exists"):
        SpoolWriter(tmp_path / "taken")
    assert threading.active_count() == threads  # no hasher left waiting for a file
    writer = SpoolWriter(tmp_path / "f")
    writer.finish()
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o600


def test_close_without_finish_releases_everything(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path / "f")
    writer.add(os.urandom(3 * CHUNK))
    writer.close()
    writer.close()  # twice is harmless


class FakeSyncFileRange:
    """Stands in for sync_file_range(2): records each call; a wait for writeback blocks
    until `disk` is set, like a disk that has not caught up."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int]] = []
        self.disk = threading.Event()
        self.disk.set()

    def __call__(self, fd: int, offset: int, length: int, flags: int) -> int:
        self.calls.append((offset, length, flags))
        if flags & spool._WAIT_BEFORE:
            self.disk.wait(30)
        return 0


@pytest.fixture
def fake_writeback(monkeypatch: pytest.MonkeyPatch) -> FakeSyncFileRange:
    fake = FakeSyncFileRange()
    monkeypatch.setattr(spool, "_sync_file_range", fake)
    monkeypatch.setattr(spool, "WRITEBACK_EVERY", CHUNK)
    monkeypatch.setattr(spool, "MAX_UNWRITTEN", 4 * CHUNK)
    return fake


def test_write_behind_starts_each_range_once_the_one_before_the_last_is_written(
    tmp_path: Path, fake_writeback: FakeSyncFileRange
) -> None:
    data = os.urandom(10 * CHUNK)
    writer = SpoolWriter(tmp_path / "f")
    writer.add(data)
    writer.finish()
    assert (tmp_path / "f").read_bytes() == data
    started = [(o, n) for o, n, f in fake_writeback.calls if f == spool._WRITE]
    waited = [(o, n) for o, n, f in fake_writeback.calls if f == spool._WAIT_BEFORE]
    # Consecutive ranges of at most WRITEBACK_EVERY, from the start of the file.
    assert started[0][0] == 0 and all(n <= CHUNK for _, n in started)
    assert all(a[0] + a[1] == b[0] for a, b in itertools.pairwise(started))
    # The bound holds whatever the threads' timing: never more than MAX_UNWRITTEN behind.
    assert sum(n for _, n in started) >= 10 * CHUNK - spool.MAX_UNWRITTEN
    # Each range is waited for right after the next one is started: never more than two
    # ranges in the disk's queue.
    order = [(f, o) for o, _, f in fake_writeback.calls]
    for (offset, _), (next_offset, _) in itertools.pairwise(started):
        i = order.index((spool._WRITE, next_offset))
        assert order[i + 1] == (spool._WAIT_BEFORE, offset)
    assert waited == started[:-1]


def test_a_download_waits_while_the_disk_is_far_behind(
    tmp_path: Path, fake_writeback: FakeSyncFileRange
) -> None:
    fake_writeback.disk.clear()
    data = os.urandom(20 * CHUNK)
    writer = SpoolWriter(tmp_path / "f")
    writing = threading.Thread(target=writer.add, args=(data,))
    writing.start()
    writing.join(0.5)
    assert writing.is_alive()  # held back ...
    assert writer.size <= spool.MAX_UNWRITTEN + spool.WRITEBACK_EVERY  # ... this far ahead
    fake_writeback.disk.set()
    writing.join(30)
    assert not writing.is_alive()
    writer.finish()
    assert (tmp_path / "f").read_bytes() == data


def test_without_write_behind_the_disk_is_left_to_the_kernel(
    tmp_path: Path, fake_writeback: FakeSyncFileRange
) -> None:
    fake_writeback.disk.clear()  # would block a writer that waited for it
    writer = SpoolWriter(tmp_path / "f", write_behind=False)
    writer.add(os.urandom(20 * CHUNK))
    writer.finish()
    assert fake_writeback.calls == []
