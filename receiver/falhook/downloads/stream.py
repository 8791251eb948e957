"""Reading one file's response body into its spool file, with every check on the way.

- Size: never more than one byte past `max_bytes` is read; a body shorter or longer than its
  Content-Length, or a file whose size differs from the payload's `file_size`, is an error.
- Encoding: a gzip or deflate body (sent although falhook asked for identity) is decoded
  strictly (downloads/decoding.py); anything else is refused.
- Time: `timeout` is the inactivity limit before the body starts; during the body the file
  must arrive within `deadline` seconds in all, and at `min_rate` bytes per second averaged
  over each `rate_window` (a server trickling half a byte a second, or silent for a window,
  is cut and the delivery retried), so a stalled file cannot hold a delivery slot for long.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable
from dataclasses import dataclass

from falhook.downloads.connections import CheckedResponse
from falhook.downloads.decoding import ENCODINGS, DecodeError, Decoder
from falhook.downloads.errors import FetchPermanent, FetchRetryable, Stopped
from falhook.downloads.spool import CHUNK, SpoolWriter
from falhook.intake.envelope import FileRef


@dataclass(frozen=True)
class TransferLimits:
    max_bytes: int
    deadline: float  # seconds for the whole body
    min_rate: float  # bytes per second over each rate_window; 0 turns the check off
    rate_window: float
    idle: float  # seconds a read may wait for data during the body

    @classmethod
    def of(
        cls, max_bytes: int, *, deadline: float, min_rate: float, rate_window: float, timeout: float
    ) -> TransferLimits:
        # With a minimum rate, a silent window already means too slow: no need to wait longer.
        idle = min(timeout, rate_window) if min_rate else timeout
        return cls(max_bytes, deadline, min_rate, rate_window, idle)


class RateCheck:
    """The deadline and the minimum rate, checked after every read (pure but for the clock)."""

    def __init__(self, limits: TransferLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self.started = self.window_start = clock()
        self.window_bytes = 0

    def problem(self, received: int) -> str | None:
        """Why the transfer must stop now, or None."""
        now = self.clock()
        limits = self.limits
        if now - self.started > limits.deadline:
            return f"took longer than the download deadline ({limits.deadline:g} s)"
        elapsed = now - self.window_start
        if limits.min_rate and elapsed >= limits.rate_window:
            rate = (received - self.window_bytes) / elapsed
            if rate < limits.min_rate:
                return (
                    f"too slow: {rate:.0f} bytes/s over the last {elapsed:.0f} s "
                    f"(min_rate is {limits.min_rate:g})"
                )
            self.window_start, self.window_bytes = now, received
        return None


def declared_length(resp: http.client.HTTPResponse) -> int | None:
    declared = (resp.getheader("content-length") or "").strip()
    return int(declared) if declared.isdigit() and not resp.chunked else None


def content_encoding(resp: http.client.HTTPResponse) -> str:
    return (resp.getheader("content-encoding") or "identity").strip().lower()


def content_type_of(ref: FileRef, resp: http.client.HTTPResponse) -> str | None:
    """The payload's content type, else the response's (without parameters)."""
    return ref.content_type or (
        (resp.getheader("content-type") or "").split(";", 1)[0].strip() or None
    )


def decoder_for(ref: FileRef, resp: http.client.HTTPResponse) -> Decoder | None:
    encoding = content_encoding(resp)
    if encoding == "identity":
        return None
    if encoding in ENCODINGS:
        # A server that encodes anyway (we asked for identity) gets decoded: the file is what
        # is stored and hashed, never its compressed form.
        return Decoder(encoding, CHUNK)
    raise FetchPermanent(
        f"{ref.path}: the file server sent Content-Encoding {encoding!r}, which falhook "
        "cannot decode (it asks for identity)"
    )


def read_body(
    ref: FileRef,
    resp: http.client.HTTPResponse,
    writer: SpoolWriter,
    limits: TransferLimits,
    stopped: Callable[[], bool],
) -> int:
    """Read the body into the writer, decoding it if it is encoded; the bytes received (before
    any decoding). FetchError when it must not be kept."""
    decoder = decoder_for(ref, resp)
    rate = RateCheck(limits)
    scratch = memoryview(bytearray(CHUNK)) if decoder is not None else None
    received = 0
    while True:
        if stopped():
            raise Stopped()
        try:
            if scratch is None:
                # Straight into the writer's buffer, never more than one byte past the limit.
                room = writer.buffer()
                room = room[: min(len(room), limits.max_bytes - writer.size + 1)]
                n = read_some(resp, room)
                if n:
                    writer.commit(n)
            else:
                assert decoder is not None  # scratch is only made for a decoder
                n = read_some(resp, scratch)
                _decode_into(ref, decoder, scratch[:n] if n else None, writer, limits)
        except TimeoutError:
            raise FetchRetryable(f"{ref.path}: no data for {limits.idle:g} s") from None
        received += n
        _check_limit(ref, writer.size, limits)
        if not n:
            if stopped():  # an aborted connection reads as the end of the body
                raise Stopped()
            return received
        problem = rate.problem(received)
        if problem is not None:
            raise FetchRetryable(f"{ref.path}: {problem}")


def read_some(resp: http.client.HTTPResponse, into: memoryview) -> int:
    """Whatever bytes are there, up to len(into) (0 at the end of the body)."""
    if isinstance(resp, CheckedResponse):
        return resp.readinto_some(into)
    return resp.readinto(into)


def _decode_into(
    ref: FileRef,
    decoder: Decoder,
    data: memoryview | None,
    writer: SpoolWriter,
    limits: TransferLimits,
) -> None:
    """Decode `data` (None: the body ended) into the writer, checking the size on the way."""
    try:
        for piece in decoder.feed(data) if data is not None else decoder.finish():
            writer.add(piece)
            _check_limit(ref, writer.size, limits)
    except DecodeError as exc:
        raise FetchRetryable(f"{ref.path}: {exc}") from None


def _check_limit(ref: FileRef, size: int, limits: TransferLimits) -> None:
    if size > limits.max_bytes:
        raise FetchPermanent(f"{ref.path}: more than max_file_bytes ({limits.max_bytes}) bytes")
