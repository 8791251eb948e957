"""The last lines of a stream, in bounded memory, whatever the stream sends.

A command may write gigabytes to stderr, or one line without an end; only the last
``max_lines`` lines are kept, each cut at ``max_line_bytes``. ``\\r`` ends a line like ``\\n``
(progress meters such as ffmpeg's rewrite one line with ``\\r``), blank lines are dropped, and
control characters are replaced, so the lines read well in ``last_error`` and logs.
"""

from __future__ import annotations

import re
from collections import deque

_LINE_END = re.compile(rb"[\r\n]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
CUT_MARK = " [...]"


class LineTail:
    """Feed it chunks; ``lines()`` gives the last complete and partial lines, decoded."""

    def __init__(self, max_lines: int, max_line_bytes: int = 300) -> None:
        self.max_line_bytes = max_line_bytes
        self._lines: deque[str] = deque(maxlen=max_lines)
        self._partial = bytearray()
        self._partial_cut = False
        self.total_bytes = 0

    def feed(self, chunk: bytes) -> None:
        self.total_bytes += len(chunk)
        pieces = _LINE_END.split(chunk)
        self._add_to_partial(pieces[0])
        if len(pieces) == 1:
            return
        self._end_line()
        # Of the lines complete within this chunk, only the last ones not blank (as
        # _end_line decides it) can be kept: the rest are never decoded.
        keep = self._lines.maxlen or 0
        middle: list[bytes] = []
        for piece in reversed(pieces[1:-1]):
            if len(middle) == keep:
                break
            if self._decode(piece[: self.max_line_bytes], False):
                middle.append(piece)
        for piece in reversed(middle):
            self._add_to_partial(piece)
            self._end_line()
        self._add_to_partial(pieces[-1])

    def lines(self) -> list[str]:
        """The kept lines, oldest first, the unfinished last line included."""
        last = self._decode(self._partial, self._partial_cut)
        kept = list(self._lines)
        if last and self._lines.maxlen:
            kept = [*kept, last][-self._lines.maxlen :]
        return kept

    def _add_to_partial(self, piece: bytes) -> None:
        room = self.max_line_bytes - len(self._partial)
        if len(piece) > room:
            self._partial_cut = True
            piece = piece[: max(room, 0)]
        self._partial += piece

    def _end_line(self) -> None:
        line = self._decode(self._partial, self._partial_cut)
        self._partial.clear()
        self._partial_cut = False
        if line:
            self._lines.append(line)

    @staticmethod
    def _decode(raw: bytes | bytearray, cut: bool) -> str:
        text = _CONTROL.sub("?", bytes(raw).decode("utf-8", "replace")).rstrip()
        return text + CUT_MARK if text and cut else text
