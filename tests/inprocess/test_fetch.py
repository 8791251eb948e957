"""Downloads against a real loopback file server: streamed, hashed, checked, classified."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import ipaddress
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from falhook.downloads.fetch import Fetcher, FetchPermanent, FetchRetryable
from falhook.downloads.netguard import AddressGuard
from falhook.intake.envelope import FileRef
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


class CountingResolver:
    """Maps test host names to fixed addresses, counting lookups (the system resolver
    knows nothing of them, so a second lookup elsewhere would fail the download)."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        if host not in self.table:
            raise OSError(f"cannot resolve {host}")
        return self.table[host]


@pytest.mark.parametrize("keep", [True, False])
async def test_only_a_file_a_sink_keeps_is_written_back_as_it_arrives(
    server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep: bool
) -> None:
    from falhook.downloads import spool
    from falhook_sinks.disk import DiskSink

    ranges: list[tuple[int, int, int]] = []
    monkeypatch.setattr(spool, "WRITEBACK_EVERY", spool.CHUNK)
    monkeypatch.setattr(
        spool, "_sync_file_range", lambda fd, o, n, f: ranges.append((o, n, f)) or 0
    )
    data = bytes(range(256)) * 4096  # 8 chunks
    server.add("/v.mp4", data=data)
    f = fetcher()
    got = await f.fetch(FileRef("video", server.url("/v.mp4")), tmp_path, keep=keep)
    await f.aclose()
    assert got.local_path.read_bytes() == data
    assert bool(ranges) is keep
    assert DiskSink.keeps_files  # the one built-in sink that keeps the spool file


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
    with pytest.raises(
        FetchPermanent, match=r"refused address (127\.0\.0\.1|::1) \(loopback\) for host localhost"
    ):
        await strict.fetch(FileRef("v", server.url("/x", host="localhost")), tmp_path)
    assert server.hits("/x") == 0
    assert left_in(tmp_path) == []


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


async def test_a_data_uri_over_max_file_bytes_is_permanent(tmp_path: Path) -> None:
    with pytest.raises(FetchPermanent, match="max_file_bytes"):
        await fetcher(max_file_bytes=4).fetch(FileRef("a", "data:,hello"), tmp_path)
    assert left_in(tmp_path) == []


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/x", "file:///etc/passwd", "http://[::1/x", "http:///x", "v.mp4"]
)
async def test_urls_that_cannot_be_fetched_are_permanent(url: str, tmp_path: Path) -> None:
    f = fetcher(resolver=CountingResolver({}))  # never the system resolver
    with pytest.raises(FetchPermanent):
        await f.fetch(FileRef("v", url), tmp_path)
    assert left_in(tmp_path) == []


async def test_a_file_size_over_the_limit_is_refused_before_any_request(
    server: FileServer, tmp_path: Path
) -> None:
    server.add("/f", data=b"x" * 10)
    with pytest.raises(FetchPermanent, match="max_file_bytes"):
        await fetcher(max_file_bytes=5).fetch(
            FileRef("v", server.url("/f"), file_size=10), tmp_path
        )
    assert server.hits("/f") == 0


async def test_the_content_type_comes_from_the_response_without_parameters(
    server: FileServer, tmp_path: Path
) -> None:
    server.add("/v", data=b"v", content_type="video/mp4; codecs=avc1")
    got = await fetcher().fetch(FileRef("v", server.url("/v")), tmp_path)
    assert got.content_type == "video/mp4"
    given = await fetcher().fetch(FileRef("v", server.url("/v"), content_type="x/y"), tmp_path)
    assert given.content_type == "x/y"


async def test_a_relative_redirect_is_followed(server: FileServer, tmp_path: Path) -> None:
    server.add("/there", data=b"moved")
    server.add("/here", redirect_to="/there")
    got = await fetcher().fetch(FileRef("v", server.url("/here")), tmp_path)
    assert got.local_path.read_bytes() == b"moved"
    assert (server.hits("/here"), server.hits("/there")) == (1, 1)


async def test_an_encoded_body_is_stored_decoded(server: FileServer, tmp_path: Path) -> None:
    data = b"frame " * 50_000
    server.add("/z", data=gzip.compress(data), headers={"Content-Encoding": "gzip"})
    got = await fetcher().fetch(FileRef("v", server.url("/z"), file_size=len(data)), tmp_path)
    assert got.local_path.read_bytes() == data
    assert got.sha256 == hashlib.sha256(data).hexdigest()


LOOPBACK_ONLY = AddressGuard(allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),))


async def test_the_checked_address_is_the_one_connected_to_and_the_host_is_kept(
    server: FileServer, tmp_path: Path
) -> None:
    server.add("/v", data=b"via the checked address")
    resolver = CountingResolver({"files.test": ["127.0.0.1"]})
    f = fetcher(allow_private_hosts=False, guard=LOOPBACK_ONLY, resolver=resolver)
    got = await f.fetch(FileRef("v", server.url("/v", host="files.test")), tmp_path)
    await f.aclose()
    assert got.local_path.read_bytes() == b"via the checked address"
    assert resolver.calls == ["files.test"]  # one lookup, then the judged address is used
    assert server.last_headers("/v")["host"] == f"files.test:{server.port}"


async def test_a_host_with_any_refused_address_is_refused(
    server: FileServer, tmp_path: Path
) -> None:
    server.add("/v", data=b"v")
    resolver = CountingResolver({"mixed.test": ["127.0.0.1", "10.0.0.7"]})
    f = fetcher(allow_private_hosts=False, guard=LOOPBACK_ONLY, resolver=resolver)
    with pytest.raises(FetchPermanent, match=r"10\.0\.0\.7 \(private\) for host mixed\.test"):
        await f.fetch(FileRef("v", server.url("/v", host="mixed.test")), tmp_path)
    assert server.hits("/v") == 0


async def test_a_name_that_does_not_resolve_is_retryable(tmp_path: Path) -> None:
    f = fetcher(resolver=CountingResolver({}))
    with pytest.raises(FetchRetryable, match="cannot resolve"):
        await f.fetch(FileRef("v", "http://gone.test/v"), tmp_path)


async def wait_until(condition: Callable[[], bool], what: str, limit: float = 20.0) -> None:
    """Poll condition on the loop until it holds; fail after `limit` seconds."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def partial_download_started(folder: Path) -> bool:
    return any(p.stat().st_size > 0 for p in folder.iterdir())


async def stalled_download(
    server: FileServer, tmp_path: Path, path: str, **options: object
) -> tuple[Fetcher, asyncio.Task[object]]:
    """A fetcher and its download of an 8 MiB body that stops after 3 MiB (until
    server.resume), returned once the first bytes are on disk."""
    size = 8 * 1024 * 1024
    server.add(path, size=size, pause_after=3 * 1024 * 1024)
    f = fetcher(max_file_bytes=size, **options)
    task = asyncio.create_task(f.fetch(FileRef("v", server.url(path)), tmp_path))
    await wait_until(lambda: partial_download_started(tmp_path), "the download to start")
    return f, task


async def test_a_cancelled_download_leaves_no_file(server: FileServer, tmp_path: Path) -> None:
    f, task = await stalled_download(server, tmp_path, "/slow")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    server.resume("/slow")
    await wait_until(lambda: left_in(tmp_path) == [], "the partial file to be removed")
    await f.aclose()


async def test_closing_the_fetcher_ends_a_running_download(
    server: FileServer, tmp_path: Path
) -> None:
    f, task = await stalled_download(server, tmp_path, "/slow")
    await f.aclose()
    server.resume("/slow")
    with pytest.raises(FetchRetryable):
        await task
    assert left_in(tmp_path) == []
    with pytest.raises(FetchRetryable, match="closed"):
        await f.fetch(FileRef("v", server.url("/slow")), tmp_path)


async def test_downloads_from_one_server_reuse_a_kept_alive_connection(
    server: FileServer, tmp_path: Path
) -> None:
    server.add("/a", data=b"first")
    server.add("/b", data=b"second")
    f = fetcher()
    for path in ("/a", "/b", "/a"):
        await f.fetch(FileRef("v", server.url(path)), tmp_path)
    await f.aclose()
    assert (server.hits("/a"), server.hits("/b"), server.connections) == (2, 1, 1)


async def test_a_kept_alive_connection_the_server_dropped_is_replaced_transparently(
    server: FileServer, tmp_path: Path
) -> None:
    server.add("/a", data=b"first")
    f = fetcher()
    await f.fetch(FileRef("v", server.url("/a")), tmp_path)
    server.drop_connections()  # the pooled connection is now dead, and nobody told us
    got = await f.fetch(FileRef("v", server.url("/a")), tmp_path)
    await f.aclose()
    assert got.local_path.read_bytes() == b"first"
    assert server.connections == 2


async def test_a_redirect_keeps_its_connection(server: FileServer, tmp_path: Path) -> None:
    server.add("/there", data=b"moved")
    server.add("/here", redirect_to="/there")
    f = fetcher()
    await f.fetch(FileRef("v", server.url("/here")), tmp_path)
    await f.aclose()
    assert server.connections == 1


async def test_a_cancelled_download_stops_at_once_even_while_the_server_is_silent(
    server: FileServer, tmp_path: Path
) -> None:
    """The blocked read is ended, not left to wait out the inactivity timeout."""
    f, task = await stalled_download(server, tmp_path, "/stuck", timeout=60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_until(lambda: left_in(tmp_path) == [], "the partial file to be removed", 10)
    # and the fetcher goes on: the next download works
    server.add("/ok", data=b"ok")
    got = await f.fetch(FileRef("v", server.url("/ok")), tmp_path)
    assert got.local_path.read_bytes() == b"ok"
    await f.aclose()


async def test_closing_the_fetcher_ends_a_download_while_the_server_is_silent(
    server: FileServer, tmp_path: Path
) -> None:
    f, task = await stalled_download(server, tmp_path, "/stuck", timeout=60)
    await f.aclose()
    with pytest.raises(FetchRetryable, match="abandoned"):
        await asyncio.wait_for(task, 10)
    assert left_in(tmp_path) == []


async def test_an_encoding_falhook_cannot_decode_is_permanent(
    server: FileServer, tmp_path: Path
) -> None:
    server.add("/br", data=b"\x0b\x02\x80hello\x03", headers={"Content-Encoding": "br"})
    with pytest.raises(FetchPermanent, match="Content-Encoding 'br'"):
        await fetcher().fetch(FileRef("v", server.url("/br")), tmp_path)
    assert left_in(tmp_path) == []


async def test_a_deflate_body_is_decoded_wrapped_or_raw(server: FileServer, tmp_path: Path) -> None:
    import zlib

    data = b"exr " * 40_000
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    server.add("/zlib", data=zlib.compress(data), headers={"Content-Encoding": "deflate"})
    server.add(
        "/raw", data=raw.compress(data) + raw.flush(), headers={"Content-Encoding": "deflate"}
    )
    for path in ("/zlib", "/raw"):
        got = await fetcher().fetch(FileRef("v", server.url(path)), tmp_path)
        assert got.local_path.read_bytes() == data


async def test_a_small_body_that_inflates_past_max_file_bytes_is_stopped(
    server: FileServer, tmp_path: Path
) -> None:
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024))  # 64 MiB in about 64 KiB
    server.add("/bomb", data=bomb, headers={"Content-Encoding": "gzip"})
    with pytest.raises(FetchPermanent, match="max_file_bytes"):
        await fetcher(max_file_bytes=4 * 1024 * 1024).fetch(
            FileRef("v", server.url("/bomb")), tmp_path
        )
    assert left_in(tmp_path) == []


async def test_a_url_with_spaces_and_non_ascii_is_requested_percent_encoded(
    server: FileServer, tmp_path: Path
) -> None:
    server.add("/out%20put/vid%C3%A9o.mp4", data=b"encoded")
    url = server.url("/out put/vidéo.mp4") + "?sig=a%2Fb&x=1"
    got = await fetcher().fetch(FileRef("v", url), tmp_path)
    assert got.local_path.read_bytes() == b"encoded"


async def test_a_body_exactly_at_max_file_bytes_is_accepted(
    server: FileServer, tmp_path: Path
) -> None:
    size = 3 * 1024 * 1024 + 5
    server.add("/edge", size=size, chunked=True)  # no Content-Length: only streaming sees it
    got = await fetcher(max_file_bytes=size).fetch(FileRef("v", server.url("/edge")), tmp_path)
    assert (got.size, got.sha256) == (size, generated_sha256(size))
    server.add("/over", size=size + 1, chunked=True)
    with pytest.raises(FetchPermanent, match="max_file_bytes"):
        await fetcher(max_file_bytes=size).fetch(FileRef("v", server.url("/over")), tmp_path)
