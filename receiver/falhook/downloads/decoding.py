"""Decoding a gzip or deflate body a file server sent although falhook asked for identity.

The decoded bytes are the file: what is hashed, stored and delivered. So the decoder is
strict: a gzip body must be one or more complete members, each ending in its trailer (a
truncated stream is an error, not a shorter file), a deflate body exactly one complete
stream, and anything that is not valid compressed data is an error naming the encoding.
Output comes in bounded pieces: a small body may inflate to gigabytes, and the caller's size
limit sees every piece.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

GZIP_ENCODINGS = ("gzip", "x-gzip")
ENCODINGS = (*GZIP_ENCODINGS, "deflate")


class DecodeError(ValueError):
    """The body is not what its Content-Encoding says (or is cut short)."""


class Decoder:
    def __init__(self, encoding: str, piece: int = 128 * 1024) -> None:
        if encoding not in ENCODINGS:
            raise ValueError(f"no decoder for {encoding!r}")
        self.encoding = encoding
        self.piece = piece
        self._z: zlib._Decompress | None = None
        self._streams = 0  # complete members (gzip) or streams (deflate) so far

    def feed(self, data: bytes | memoryview) -> Iterator[bytes]:
        """The decoded bytes of `data`, in pieces of at most `piece` bytes."""
        rest = bytes(data)
        while rest:
            if self._z is None:
                if self._streams and self.encoding == "deflate":
                    raise DecodeError("data after the end of the deflate stream")
                self._z = zlib.decompressobj(self._wbits(rest[:2]))
            z = self._z
            yield from self._inflate(z, rest)
            if not z.eof:
                return  # needs more input
            # A member ended: what follows must be another complete member.
            self._streams += 1
            rest = z.unused_data
            self._z = None

    def finish(self) -> Iterator[bytes]:
        """The last decoded bytes; DecodeError when the body ended mid-stream."""
        z = self._z
        if z is not None:
            try:
                tail = z.flush()
            except zlib.error as exc:
                raise self._invalid(exc) from None
            if tail:
                yield tail
            if not z.eof:
                raise DecodeError(
                    f"the {self.encoding} stream ends before its end"
                    + (" (no trailer)" if self.encoding in GZIP_ENCODINGS else "")
                )
        elif not self._streams:
            raise DecodeError(f"the body is empty, which is not valid {self.encoding}")

    def _inflate(self, z: zlib._Decompress, data: bytes) -> Iterator[bytes]:
        try:
            piece = z.decompress(data, self.piece)
            while True:
                if piece:
                    yield piece
                tail = z.unconsumed_tail
                if not tail or z.eof:
                    return
                before = len(tail)
                piece = z.decompress(tail, self.piece)
                if not piece and len(z.unconsumed_tail) == before:
                    raise DecodeError(f"the {self.encoding} stream makes no progress")
        except zlib.error as exc:
            raise self._invalid(exc) from None

    def _invalid(self, exc: zlib.error) -> DecodeError:
        return DecodeError(f"the body is not valid {self.encoding} data ({exc})")

    def _wbits(self, start: bytes) -> int:
        if self.encoding in GZIP_ENCODINGS:
            return 16 + zlib.MAX_WBITS
        # "deflate" is zlib-wrapped by the standard, raw in some servers: look at the header.
        zlib_header = len(start) == 2 and start[0] & 0x0F == 8 and int.from_bytes(start) % 31 == 0
        return zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS
