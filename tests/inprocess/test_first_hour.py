"""The first hour of a new user: files others can read, mistakes found at start-up and named,
readiness logged when it is true, one message format, and hints that name the key to set."""

from __future__ import annotations

import asyncio
import os
import stat
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from falhook.config import ConfigError, settings_from_dict
from falhook.downloads.fal_media import FalMediaSigner
from falhook.downloads.fetch import Fetcher, FetchPermanent
from falhook.downloads.files import Downloader
from falhook.fal.cli import emulate_banner, emulator_config
from falhook.intake import keys as keys_module
from falhook.intake.envelope import FileRef
from falhook.intake.keys import FalKeys
from falhook.metrics import Metrics
from falhook.runtime import Runtime
from falhook.testing import JWKSServer
from falhook_sinks.base import OptionError, Retryable, SinkEnv
from falhook_sinks.disk import DiskSink
from falhook_sinks.registry import construct
from tests.support.falhook_server import base_config
from tests.support.fileserver import FileServer
from tests.support.logs import captured
from tests.support.sink_ctx import spooled_ctx


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- 5. disk sink files are readable by others, like any tool's -----------------------------------


def test_disk_files_get_0644_under_the_usual_umask(tmp_path: Path, umask_022: None) -> None:
    sink = construct(DiskSink, "local", {"root": "files"}, SinkEnv(base_dir=tmp_path))
    ctx = spooled_ctx(tmp_path)
    ctx.files[0].local_path.chmod(0o600)  # as the worker's spool file is made
    asyncio.run(sink.deliver(ctx))
    folder = tmp_path / "files" / "reframe" / "req-1"
    assert mode(folder / "clip.mp4") == 0o644
    assert mode(folder / "event.json") == 0o644


@pytest.mark.parametrize("value", [0o640, "640", "0640", "0o640"])
def test_file_mode_sets_the_mode(tmp_path: Path, value: Any) -> None:
    sink = construct(
        DiskSink, "local", {"root": "files", "file_mode": value}, SinkEnv(base_dir=tmp_path)
    )
    asyncio.run(sink.deliver(spooled_ctx(tmp_path)))
    folder = tmp_path / "files" / "reframe" / "req-1"
    assert mode(folder / "clip.mp4") == mode(folder / "event.json") == 0o640


@pytest.mark.parametrize("value", ["rw-r--r--", "999", 0o1777, -1])
def test_a_bad_file_mode_names_its_key(tmp_path: Path, value: Any) -> None:
    with pytest.raises(OptionError) as err:
        construct(
            DiskSink, "local", {"root": "files", "file_mode": value}, SinkEnv(base_dir=tmp_path)
        )
    assert err.value.key == "[sinks.local].file_mode"


# --- 6. sinks checked at start-up; filesystem errors name their path ------------------------------


def test_a_disk_root_under_a_file_is_found_by_the_check(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file where a folder should be")
    sink = construct(DiskSink, "local", {"root": "blocker/files"}, SinkEnv(base_dir=tmp_path))
    [problem] = asyncio.run(sink.check())
    assert problem.fatal and problem.key == "[sinks.local].root"
    assert str(tmp_path / "blocker") in problem.problem


def test_a_writable_root_has_no_problem(tmp_path: Path) -> None:
    sink = construct(DiskSink, "local", {"root": "files"}, SinkEnv(base_dir=tmp_path))
    assert asyncio.run(sink.check()) == []
    assert list((tmp_path / "files").iterdir()) == []  # the probe leaves nothing behind


def test_a_filesystem_error_names_its_path(tmp_path: Path) -> None:
    sink = construct(DiskSink, "local", {"root": "files"}, SinkEnv(base_dir=tmp_path))
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "reframe").write_text("not a folder")
    with pytest.raises(Retryable) as err:
        asyncio.run(sink.deliver(spooled_ctx(tmp_path)))
    assert str(tmp_path / "files" / "reframe") in str(err.value)
    assert "Not a directory" in str(err.value)


def test_the_runtime_refuses_to_start_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("")
    config = base_config(tmp_path, "http://127.0.0.1:9/jwks")
    config["sinks"]["local"]["root"] = str(tmp_path / "blocker" / "files")
    runtime = Runtime(settings_from_dict(config, base_dir=tmp_path), worker="run")
    with pytest.raises(ConfigError) as err:
        asyncio.run(runtime.start())
    assert err.value.key == "[sinks.local].root"


def test_an_unreachable_bucket_is_a_warning_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from falhook_sinks.s3 import S3Sink

    options = {"bucket": "b", "endpoint_url": "http://127.0.0.1:9", "connect_timeout": 1.0}
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    sink = construct(S3Sink, "archive", options, SinkEnv(base_dir=tmp_path))
    try:
        [problem] = asyncio.run(sink.check())
    finally:
        asyncio.run(sink.aclose())
    assert not problem.fatal and problem.key == "[sinks.archive].bucket"


# --- 7. "falhook ready" when ready; JWKS failures say where and why -------------------------------


async def reason_for(url: str) -> dict[str, Any]:
    keys = FalKeys(url)
    with captured(keys_module) as logs:
        await keys.start()
        await keys.aclose()
    [failed] = [e for e in logs if e["event"] == "jwks fetch failed"]
    return failed


async def test_a_refused_connection_is_named(unused_tcp_port: int) -> None:
    failed = await reason_for(f"http://127.0.0.1:{unused_tcp_port}/jwks.json")
    assert failed["reason"] == "connection refused"
    assert failed["host"] == f"127.0.0.1:{unused_tcp_port}"


async def test_a_dns_failure_is_named() -> None:
    failed = await reason_for("https://no-such-host.invalid/.well-known/jwks.json")
    assert failed["reason"].startswith("DNS lookup failed")
    assert failed["host"] == "no-such-host.invalid"


async def test_a_tls_failure_is_named(jwks: JWKSServer) -> None:
    failed = await reason_for(jwks.url.replace("http://", "https://"))  # a plain-http server
    assert failed["reason"].startswith("TLS")


# --- 8. event.json is the event as received -------------------------------------------------------


# --- 10. one message format; a warning for no routes; hints naming keys ---------------------------


def test_an_unset_variable_is_named_like_every_other_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SLACK_WEBHOOK_URL", raising=False)
    raw = {"sinks": {"a": {"type": "slack", "webhook_url": "${SLACK_WEBHOOK_URL}"}}}
    with pytest.raises(ConfigError) as err:
        settings_from_dict(raw, base_dir=tmp_path)
    assert str(err.value) == (
        "[sinks.a].webhook_url: environment variable ${SLACK_WEBHOOK_URL} is not set"
    )
    raw = {"receiver": {"allowed_user_ids": ["${SLACK_WEBHOOK_URL}"]}}
    with pytest.raises(ConfigError) as err:
        settings_from_dict(raw, base_dir=tmp_path)
    assert err.value.key == "[receiver].allowed_user_ids[0]"


def test_a_loopback_file_refused_names_allow_private_hosts(
    tmp_path: Path, files: FileServer
) -> None:
    files.add("/v.mp4", data=b"video")
    fetcher = Fetcher(max_file_bytes=1 << 20, timeout=10, allow_private_hosts=False)
    ref = FileRef(path="video", url=files.url("/v.mp4"))

    async def run() -> None:
        try:
            (tmp_path / "spool").mkdir()
            await Downloader(fetcher, None, Metrics()).download(ref, tmp_path / "spool", keep=False)
        finally:
            await fetcher.aclose()

    with pytest.raises(FetchPermanent) as err:
        asyncio.run(run())
    assert "refused address 127.0.0.1" in err.value.message
    assert "[downloads].allow_private_hosts = true" in err.value.message


@pytest.mark.parametrize("status", [401, 403, 404])
def test_a_refused_file_on_a_host_not_signed_for_names_fal_media_hosts_and_fal_key(
    tmp_path: Path, files: FileServer, status: int
) -> None:
    """The emulator's `forbid` rule (or a private fal file on a host falhook was not told
    about) answers 403: the error says what would read it, rather than only the status."""
    files.add("/files/job-1/v.mp4", data=b"video", status=status)  # fal's URL shape
    files.add("/elsewhere/v.mp4", data=b"video", status=status)
    fetcher = Fetcher(max_file_bytes=1 << 20, timeout=10, allow_private_hosts=True)
    signer = FalMediaSigner("http://127.0.0.1:9/sign", ("fal.media",), "key")

    async def run(path: str) -> None:
        ref = FileRef(path="video", url=files.url(path))
        spool = tmp_path / path.replace("/", "_")
        spool.mkdir()
        await Downloader(fetcher, signer, Metrics()).download(ref, spool, keep=False)

    async def both() -> tuple[FetchPermanent, FetchPermanent]:
        try:
            with pytest.raises(FetchPermanent) as fal_shaped:
                await run("/files/job-1/v.mp4")
            with pytest.raises(FetchPermanent) as other:
                await run("/elsewhere/v.mp4")
            return fal_shaped.value, other.value
        finally:
            await fetcher.aclose()
            await signer.aclose()

    fal_shaped, other = asyncio.run(both())
    assert fal_shaped.message.startswith(f"video: the file server answered {status}; ")
    assert "add '127.0.0.1' to [downloads].fal_media_hosts" in fal_shaped.message
    assert "FAL_KEY" in fal_shaped.message and fal_shaped.status == status
    assert other.message == f"video: the file server answered {status}"  # not fal's: no hint


def test_the_emulate_banner_prints_config_lines_that_work(tmp_path: Path) -> None:
    banner = emulate_banner("http://127.0.0.1:8001", 2.0, None)
    config = emulator_config("http://127.0.0.1:8001")
    assert config in banner  # the same block as --print-config: copied from either, it works
    settings = settings_from_dict(tomllib.loads(config), base_dir=tmp_path)
    assert settings.receiver.queue_url == "http://127.0.0.1:8001"
    assert settings.receiver.jwks_url == "http://127.0.0.1:8001/.well-known/jwks.json"
    assert settings.downloads.allow_private_hosts is True
    assert settings.downloads.fal_media_hosts == ("127.0.0.1",)
    assert settings.downloads.fal_sign_url == "http://127.0.0.1:8001/v1/storage/files/sign"
    assert settings.receiver.public_url == "http://127.0.0.1:8000"  # falhook serve's default
    assert settings.routes["reframe"].sinks == ("local",)
