"""Downloads against a real loopback file server: streamed, hashed, checked, classified."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest

from receiver.envelope import FileRef
from receiver.fetch import Fetcher, FetchPermanent, FetchRetryable
from receiver.netguard import AddressGuard
from tests.support.fileserver import FileServer, generated_sha256


@pytest.fixture
def server() -> Iterator[FileServer]:
    with FileServer() as s:
        yield s


def fetcher(**kw: object) -> Fetcher:
    options: dict = {"max_file_bytes": 10 * 1024 * 1024, "timeout": 10, "allow_private_hosts": True}
    options.update(kw)
    return Fetcher(**options)


def left_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


async def test_a_file_is_streamed_with_its_size_and_sha256(
    server: FileServer, tmp_path: Path
) -> None:
    data = bytes(range(256)) * 4096
    server.add("/v.mp4", data=data, content_type="video/mp4")
    f = fetcher()
    got = await f.fetch(FileRef("video", server.url("/v.mp4"), file_size=len(data)), tmp_path)
    await f.aclose()
    assert got.local_path.read_bytes() == data
    assert (got.size, got.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert got.content_type == "video/mp4"


async def test_data_uris_are_decoded(tmp_path: Path) -> None:
    f = fetcher()
    b64 = await f.fetch(FileRef("a", "data:text/plain;base64,aGVsbG8="), tmp_path)
    pct = await f.fetch(FileRef("b", "data:,hi%20there"), tmp_path)
    await f.aclose()
    assert b64.local_path.read_bytes() == b"hello" and b64.content_type == "text/plain"
    assert pct.local_path.read_bytes() == b"hi there"
    with pytest.raises(FetchPermanent):
        await fetcher().fetch(FileRef("c", "data:;base64,@@@"), tmp_path)


async def test_server_errors_are_retryable_until_the_file_comes(
    server: FileServer, tmp_path: Path
) -> None:
    server.add("/f", data=b"ok", fail_times=3, fail_status=503)
    f = fetcher()
    for _ in range(3):
        with pytest.raises(FetchRetryable, match="503"):
            await f.fetch(FileRef("f", server.url("/f")), tmp_path)
    assert (await f.fetch(FileRef("f", server.url("/f")), tmp_path)).size == 2
    await f.aclose()
    assert server.hits("/f") == 4


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (408, FetchRetryable),
        (429, FetchRetryable),
        (500, FetchRetryable),
        (404, FetchPermanent),
        (403, FetchPermanent),
        (410, FetchPermanent),
    ],
)
async def test_status_codes_are_classified(
    server: FileServer, tmp_path: Path, status: int, error: type
) -> None:
    server.add("/s", data=b"x", status=status)
    with pytest.raises(error, match=str(status)):
        await fetcher().fetch(FileRef("s", server.url("/s")), tmp_path)
    assert left_in(tmp_path) == []


async def test_a_lying_content_length_is_retryable_and_leaves_nothing(
    server: FileServer, tmp_path: Path
) -> None:
    server.add("/short", data=b"s" * 100_000, short_by=1000)
    with pytest.raises(FetchRetryable, match="short"):
        await fetcher().fetch(FileRef("v", server.url("/short")), tmp_path)
    assert left_in(tmp_path) == []


async def test_a_size_other_than_file_size_is_retryable(server: FileServer, tmp_path: Path) -> None:
    server.add("/n", data=b"n" * 10, chunked=True)
    with pytest.raises(FetchRetryable, match="file_size"):
        await fetcher().fetch(FileRef("v", server.url("/n"), file_size=11), tmp_path)
    assert left_in(tmp_path) == []


async def test_files_over_max_file_bytes_are_permanent(server: FileServer, tmp_path: Path) -> None:
    server.add("/big", size=3 * 1024 * 1024)
    server.add("/big-unknown-length", size=3 * 1024 * 1024, chunked=True)
    for path in ("/big", "/big-unknown-length"):
        with pytest.raises(FetchPermanent, match="max_file_bytes"):
            await fetcher(max_file_bytes=1024 * 1024).fetch(
                FileRef("v", server.url(path)), tmp_path
            )
    assert left_in(tmp_path) == []


async def test_loopback_is_refused_unless_allowed(server: FileServer, tmp_path: Path) -> None:
    server.add("/x", data=b"secret")
    strict = fetcher(allow_private_hosts=False)
    with pytest.raises(FetchPermanent, match=r"127\.0\.0\.1 \(loopback\)"):
        await strict.fetch(FileRef("v", server.url("/x")), tmp_path)
    with pytest.raises(FetchPermanent, match="loopback"):
        await strict.fetch(FileRef("v", server.url("/x", host="localhost")), tmp_path)
    assert server.hits("/x") == 0


async def test_every_redirect_hop_is_checked_again(server: FileServer, tmp_path: Path) -> None:
    server.add("/final", data=b"f")
    server.add("/hop", redirect_to=server.url("/final", host="127.0.0.2"))
    guard = AddressGuard(allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),))
    f = fetcher(allow_private_hosts=False, guard=guard)
    with pytest.raises(FetchPermanent, match=r"127\.0\.0\.2"):
        await f.fetch(FileRef("v", server.url("/hop")), tmp_path)
    assert server.hits("/hop") == 1 and server.hits("/final") == 0
    server.add("/hop2", redirect_to=server.url("/final"))
    assert (await f.fetch(FileRef("v", server.url("/hop2")), tmp_path)).size == 1


async def test_redirect_loops_end(server: FileServer, tmp_path: Path) -> None:
    server.add("/loop", redirect_to=server.url("/loop"))
    with pytest.raises(FetchPermanent, match="redirects"):
        await fetcher(max_redirects=3).fetch(FileRef("v", server.url("/loop")), tmp_path)
    assert server.hits("/loop") == 4


async def test_the_event_loop_keeps_running_during_a_download(
    server: FileServer, tmp_path: Path
) -> None:
    size = 200 * 1024 * 1024
    server.add("/large", size=size)
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    got = await fetcher(max_file_bytes=size).fetch(FileRef("v", server.url("/large")), tmp_path)
    done.set()
    await task
    assert got.sha256 == generated_sha256(size)
    assert ticks > 20  # the loop ran throughout; a blocking download would leave it at ~1
