"""The spool writer: whatever mix of in-place reads and copied pieces, the file and its
sha256 are the bytes given, in order, with memory bounded by its reused buffers."""

from __future__ import annotations

import hashlib
import os
import random
import threading
from pathlib import Path

import pytest

from receiver.spool import BUFFERS, CHUNK, SpoolWriter


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
    with pytest.raises(FileExistsError):
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
