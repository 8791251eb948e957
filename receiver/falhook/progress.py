"""Progress of a long command on one line of stderr, shown only to a person at a terminal.

    with Progress("uploading clip.mp4", total=size, unit="bytes") as bar:
        bar.advance(len(chunk))

When stderr is not a terminal (a pipe, a log file, CI) nothing is written: scripts and log
collectors see only the command's own output and log lines.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from falhook_sinks.units import size_text

_EVERY = 0.1  # seconds between redraws: a terminal needs no more, and it keeps the cost nil


class Progress:
    def __init__(
        self,
        what: str,
        total: int | None = None,
        *,
        unit: str = "",
        stream: TextIO | None = None,
    ) -> None:
        self.what = what
        self.total = total
        self.unit = unit
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        self.enabled = _is_terminal(self._stream)
        self._drawn_at = 0.0
        self._width = 0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def advance(self, n: int = 1) -> None:
        self.update(self.done + n)

    def update(self, done: int, total: int | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        if self.enabled and time.monotonic() - self._drawn_at >= _EVERY:
            self._draw()

    def close(self) -> None:
        """Draw the final count and end the line."""
        if self.enabled and (self.done or self._width):
            self._draw()
            self._stream.write("\n")
            self._stream.flush()
            self._width = 0

    def line(self) -> str:
        if self.unit == "bytes":
            done = _size(self.done)
            of = f" of {_size(self.total)}" if self.total else ""
        else:
            done = str(self.done)
            of = f" of {self.total}" if self.total is not None else ""
        percent = f" ({100 * self.done // self.total}%)" if self.total else ""
        unit = f" {self.unit}" if self.unit and self.unit != "bytes" else ""
        return f"{self.what}: {done}{of}{unit}{percent}"

    def _draw(self) -> None:
        text = self.line()
        pad = " " * max(0, self._width - len(text))  # wipe a longer previous line
        self._stream.write(f"\r{text}{pad}")
        self._stream.flush()
        self._width = len(text)
        self._drawn_at = time.monotonic()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or not a real stream
        return False


def _size(n: int | None) -> str:
    return size_text(n or 0)
