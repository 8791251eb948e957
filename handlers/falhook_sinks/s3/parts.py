"""One part of a spool file, as a multipart upload sends it: a window of the file read in
the client's own small chunks (never a whole part in memory), and its CRC32."""

from __future__ import annotations

import base64
import io
import os
import zlib
from pathlib import Path
from typing import Any

from falhook_sinks.base import Retryable

_CRC_READ = 1024 * 1024


def crc32_of(path: Path, offset: int, size: int) -> int:
    crc = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        end = offset + size
        while offset < end:
            data = os.pread(fd, min(_CRC_READ, end - offset), offset)
            if not data:
                raise Retryable(f"spool file {path.name} is shorter than its recorded size")
            crc = zlib.crc32(data, crc)
            offset += len(data)
    finally:
        os.close(fd)
    return crc


def b64_crc(crc: int) -> str:
    return base64.b64encode(crc.to_bytes(4, "big")).decode("ascii")


class FilePart(io.RawIOBase):
    """A window of a file, read in the client's own small chunks: a part is never held in
    memory whole. Seekable (the signer may hash it, a retry rewinds it) and sized."""

    def __init__(self, path: Path, offset: int, length: int) -> None:
        super().__init__()
        self._fd = os.open(path, os.O_RDONLY)
        self._start, self._length, self._pos = offset, length, 0
        if os.fstat(self._fd).st_size < offset + length:
            # close(), not os.close(): marked closed, so __del__ cannot close the fd number a
            # second time (by then it may be another file's or socket's).
            self.close()
            raise Retryable(f"spool file {path.name} is shorter than its recorded size")

    def __len__(self) -> int:
        return self._length - self._pos

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = min(max(base + pos, 0), self._length)
        return self._pos

    def read(self, size: int = -1) -> bytes:
        left = self._length - self._pos
        size = left if size is None or size < 0 else min(size, left)
        data = os.pread(self._fd, size, self._start + self._pos) if size else b""
        self._pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()
