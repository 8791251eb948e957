"""File servers that lie or stall: nothing corrupt is ever delivered as good, and a stalled
file cannot hold the worker. Real loopback servers; each case failed before its fix."""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from falhook.downloads.decoding import DecodeError, Decoder
from falhook.downloads.errors import FetchRetryable
from falhook.downloads.fetch import Fetcher
from falhook.intake.envelope import FileRef
from tests.support.fileserver import FileServer
from tests.support.inprocess import sync_condition, wait_until

FAKE_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nEVIL!"


@pytest.fixture
def server() -> Iterator[FileServer]:
    with FileServer() as s:
        yield s


def fetcher(**limits: float) -> Fetcher:
    return Fetcher(max_file_bytes=1 << 30, timeout=10, allow_private_hosts=True, **limits)


# --- decoding is strict ------------------------------------------------------------------------


def decode_all(encoding: str, data: bytes, step: int = 7) -> bytes:
    decoder = Decoder(encoding, piece=5)
    out = b"".join(p for i in range(0, len(data), step) for p in decoder.feed(data[i : i + step]))
    return out + b"".join(decoder.finish())


def test_every_gzip_member_is_decoded() -> None:
    members = gzip.compress(b"first member, ") + gzip.compress(b"second member")
    assert decode_all("gzip", members) == b"first member, second member"


@pytest.mark.parametrize("cut", [1, 4, 8, 20])
def test_a_gzip_stream_without_its_trailer_is_an_error(cut: int) -> None:
    data = gzip.compress(os.urandom(100))
    with pytest.raises(DecodeError, match="ends before its end"):
        decode_all("gzip", data[:-cut])


@pytest.mark.parametrize("body", [b"not gzip at all", b"\x1f\x8b\x08garbage", b""])
def test_a_body_that_is_not_gzip_is_an_error(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_all("gzip", body)


def test_bytes_after_a_gzip_member_must_be_another_member() -> None:
    with pytest.raises(DecodeError):
        decode_all("gzip", gzip.compress(b"x") + b"trailing junk")


def test_a_deflate_stream_must_be_whole_and_alone() -> None:
    whole = zlib.compress(b"abc" * 100)
    assert decode_all("deflate", whole) == b"abc" * 100
    with pytest.raises(DecodeError):
        decode_all("deflate", whole[:-3])
    with pytest.raises(DecodeError, match="after the end"):
        decode_all("deflate", whole + zlib.compress(b"more"))


# --- through the fetcher ---------------------------------------------------------------------


async def test_a_multi_member_gzip_file_arrives_whole(server: FileServer, tmp_path: Path) -> None:
    parts = [os.urandom(70_000), os.urandom(90_000), b"tail"]
    body = b"".join(gzip.compress(p) for p in parts)
    server.add("/m", data=body, headers={"Content-Encoding": "gzip"})
    f = fetcher()
    try:
        got = await f.fetch(FileRef("video", server.url("/m"), file_size=160_004), tmp_path)
    finally:
        await f.aclose()
    assert got.local_path.read_bytes() == b"".join(parts)


@pytest.mark.parametrize(
    "body",
    [gzip.compress(os.urandom(50_000))[:-8], b"plainly not gzip"],
    ids=["truncated", "not-gzip"],
)
async def test_a_corrupt_gzip_body_is_a_retryable_error_and_leaves_no_file(
    server: FileServer, tmp_path: Path, body: bytes
) -> None:
    server.add("/z", data=body, headers={"Content-Encoding": "gzip"})
    f = fetcher()
    try:
        with pytest.raises(FetchRetryable, match="gzip"):
            await f.fetch(FileRef("video", server.url("/z")), tmp_path)
    finally:
        await f.aclose()
    assert list(tmp_path.iterdir()) == []


async def test_a_body_longer_than_its_length_fails_and_poisons_no_later_download(
    server: FileServer, tmp_path: Path
) -> None:
    """The extra bytes form a whole fake response: before, the next download on the kept-alive
    connection took `EVIL!` for another event's file."""
    server.add("/a", data=b"first", extra=FAKE_RESPONSE)
    server.add("/b", data=b"second")
    f = fetcher()
    try:
        with pytest.raises(FetchRetryable, match="more than the 5 bytes it announced"):
            await f.fetch(FileRef("video", server.url("/a")), tmp_path)
        got = await f.fetch(FileRef("video", server.url("/b")), tmp_path)
    finally:
        await f.aclose()
    assert got.local_path.read_bytes() == b"second"
    assert server.hits("/b") == 1 and server.connections == 2


async def test_bytes_arriving_on_an_idle_connection_retire_it(
    server: FileServer, tmp_path: Path
) -> None:
    """The extra bytes come after the body looked complete: the connection went back to the
    pool clean, and must be retired when it is taken again."""
    server.add("/a", data=b"first", extra=FAKE_RESPONSE, extra_after=0.2)
    server.add("/b", data=b"second")
    f = fetcher()
    try:
        first = await f.fetch(FileRef("video", server.url("/a")), tmp_path)
        extra_sent = sync_condition(lambda: server.extra_sent("/a"))
        await wait_until(extra_sent, timeout=10, what="the extra bytes")
        second = await f.fetch(FileRef("video", server.url("/b")), tmp_path)
    finally:
        await f.aclose()
    assert first.local_path.read_bytes() == b"first"
    assert second.local_path.read_bytes() == b"second"
    assert server.connections == 2


async def test_a_file_size_mismatch_is_an_error_even_when_the_body_is_whole(
    server: FileServer, tmp_path: Path
) -> None:
    server.add("/s", data=b"12345")
    server.add("/g", data=gzip.compress(b"12345"), headers={"Content-Encoding": "gzip"})
    f = fetcher()
    try:
        for path in ("/s", "/g"):
            with pytest.raises(FetchRetryable, match="where file_size says 6"):
                await f.fetch(FileRef("video", server.url(path), file_size=6), tmp_path)
    finally:
        await f.aclose()


# --- slow files ----------------------------------------------------------------------------------


@pytest.mark.slow  # seconds of trickling by design
@pytest.mark.parametrize("rate", [0.5, 50.0])
async def test_a_file_trickled_below_the_minimum_rate_is_cut(
    server: FileServer, tmp_path: Path, rate: float
) -> None:
    """Half a byte a second never tripped the inactivity timeout: each byte reset it."""
    server.add("/t", data=b"x" * 500, bytes_per_second=rate)
    f = fetcher(min_rate=1024, rate_window=3.0)
    try:
        with pytest.raises(FetchRetryable, match="too slow"):
            await f.fetch(FileRef("video", server.url("/t")), tmp_path)
    finally:
        await f.aclose()


@pytest.mark.slow  # a whole rate window of silence by design
async def test_a_file_that_stops_mid_body_is_cut_after_one_window(
    server: FileServer, tmp_path: Path
) -> None:
    server.add("/p", data=b"y" * 1000, pause_after=100)
    f = fetcher(min_rate=1024, rate_window=1.0)
    try:
        with pytest.raises(FetchRetryable, match="no data for 1 s"):
            await f.fetch(FileRef("video", server.url("/p")), tmp_path)
    finally:
        await f.aclose()
        server.resume("/p")


async def test_a_file_past_its_deadline_is_cut_whatever_its_rate(
    server: FileServer, tmp_path: Path
) -> None:
    server.add("/d", data=b"z" * 8000, bytes_per_second=4000)
    f = fetcher(deadline=0.5, min_rate=1, rate_window=30)
    try:
        with pytest.raises(FetchRetryable, match="download deadline"):
            await f.fetch(FileRef("video", server.url("/d")), tmp_path)
    finally:
        await f.aclose()
