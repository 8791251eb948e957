"""From a stored event to the files its sinks get: its Files found and named safely, fetched
one by one by the ``Downloader`` (``transfer.JobFiles`` keeps them in the event's spool folder
across attempts) or described without bytes (``LocalFile``)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog

from falhook.config import DownloadSettings
from falhook.downloads.errors import FetchError, FetchPermanent, FetchRefused, FetchRetryable
from falhook.downloads.fal_media import SIGNABLE_STATUSES, FalMediaSigner, SigningError
from falhook.downloads.fetch import FetchedFile, Fetcher
from falhook.downloads.ranged import RangePlan
from falhook.downloads.traced import TracedFetcher
from falhook.intake.envelope import EnvelopeError, FileRef, parse_envelope
from falhook.intake.events import files_of
from falhook.metrics import Metrics
from falhook.store.models import EventView
from falhook.telemetry import Telemetry
from falhook_sinks.base import LocalFile
from falhook_sinks.naming import file_names

log = structlog.get_logger("falhook.worker")
Problems = list[dict[str, str]]
OFF_LOOP_FILES = 256  # so many Files are named in a thread


@dataclass(frozen=True)
class StoredEvent:
    """What a stored event's raw body holds for its delivery, parsed once: its Files (the
    stored list abbreviates data: URIs), the malformed ones as problems, and its payload."""

    refs: list[FileRef]
    problems: Problems
    payload: Any


def parse_stored(event: EventView) -> StoredEvent:
    try:
        envelope = parse_envelope(event.body)
    except EnvelopeError:  # cannot happen for a stored event; never crash on it
        return StoredEvent(
            [], [{"path": "payload", "reason": "stored body is not an envelope"}], None
        )
    refs, problems = files_of(envelope)
    return StoredEvent(
        refs, [{"path": p.path, "reason": p.reason} for p in problems], envelope.payload
    )


class Downloader:
    """Downloads an event's Files into its spool folder: the fetcher (behind the address
    guard), fal's signer for private files, and the count and log line of each download.
    Built once per process by the runtime (``make_downloader``) and handed to the worker."""

    def __init__(self, fetcher: Fetcher, signer: FalMediaSigner | None, metrics: Metrics) -> None:
        self.fetcher = fetcher
        self.signer = signer
        self.metrics = metrics

    async def download(
        self,
        ref: FileRef,
        spool_dir: Path,
        *,
        keep: bool,
        into: Path | None = None,
        on_written: Callable[[int], None] | None = None,
    ) -> FetchedFile:
        """One File into spool_dir (``into``: that new file), counted and logged; FetchError
        when it fails. ``keep`` and ``on_written``: see Fetcher.fetch."""
        started = time.perf_counter()
        try:
            got = await self._fetch(ref, spool_dir, keep=keep, into=into, on_written=on_written)
        except FetchError as exc:
            outcome = "retryable" if exc.retryable else "permanent"
            self.metrics.downloads.labels(outcome=outcome).inc()
            log.warning("download failed", path=ref.path, error=exc.message, kind=outcome)
            raise
        seconds = time.perf_counter() - started
        log.info(
            "downloaded",
            path=ref.path,
            bytes=got.size,
            seconds=round(seconds, 3),
            mib_per_s=round(got.size / 1048576 / max(seconds, 1e-6), 1),
        )
        self.metrics.downloads.labels(outcome="ok").inc()
        self.metrics.download_bytes.inc(got.size)
        return got

    async def _fetch(
        self,
        ref: FileRef,
        spool_dir: Path,
        *,
        keep: bool,
        into: Path | None,
        on_written: Callable[[int], None] | None,
    ) -> FetchedFile:
        fetcher, signer = self.fetcher, self.signer
        try:
            return await fetcher.fetch(ref, spool_dir, keep=keep, into=into, on_written=on_written)
        except FetchError as exc:
            if _refused_as_private(fetcher, exc):
                raise FetchPermanent(f"{exc.message}; {PRIVATE_HOSTS_HINT}") from None
            if exc.status not in SIGNABLE_STATUSES:
                raise
            if signer is None or not signer.applies(ref.url):
                if _looks_like_fal_storage(ref.url):
                    raise _with_private_file_hint(exc, ref) from None
                raise
            signed = await _signed(signer, ref, exc)
        # The signed URL is used here only: the event, its documents and logs keep fal's URL.
        got = await fetcher.fetch(
            dataclasses.replace(ref, url=signed),
            spool_dir,
            keep=keep,
            into=into,
            on_written=on_written,
        )
        log.info("downloaded a private fal file through a signed URL", path=ref.path)
        return dataclasses.replace(got, ref=ref)

    async def aclose(self) -> None:
        await self.fetcher.aclose()
        if self.signer is not None:
            await self.signer.aclose()


def make_downloader(
    settings: DownloadSettings,
    *,
    fal_key: str | None,
    metrics: Metrics,
    telemetry: Telemetry | None = None,
) -> Downloader:
    """The process's downloader: one fetcher (a span per download when tracing is on) and
    fal's signer with `fal_key` (None: a private fal file is a permanent error saying so)."""
    fetcher = Fetcher(
        max_file_bytes=settings.max_file_bytes,
        timeout=settings.timeout,
        allow_private_hosts=settings.allow_private_hosts,
        deadline=settings.deadline,
        min_rate=settings.min_rate,
        rate_window=settings.rate_window,
        ranges=RangePlan(settings.range_threshold, settings.range_size, settings.range_parts),
    )
    if telemetry is not None and telemetry.enabled:
        fetcher = TracedFetcher.around(fetcher, telemetry)
    signer = FalMediaSigner(settings.fal_sign_url, settings.fal_media_hosts, fal_key)
    return Downloader(fetcher, signer, metrics)


async def _signed(signer: FalMediaSigner, ref: FileRef, exc: FetchError) -> str:
    if not signer.has_key:
        hidden = " (a file hidden by its access rule looks missing)" if exc.status == 404 else ""
        raise FetchPermanent(
            f"{exc.message}: a private fal file{hidden} is read through a signed URL from "
            "fal's storage API, which needs FAL_KEY in falhook's environment"
        ) from None
    try:
        return await signer.signed_url(ref.url)
    except SigningError as err:
        message = f"{exc.message}; a signed URL could not be had: {err.message}"
        if err.retryable:
            raise FetchRetryable(message, status=exc.status) from None
        raise FetchPermanent(message, status=exc.status) from None


def _looks_like_fal_storage(url: str) -> bool:
    """fal's media URLs (and the emulator's) are `<host>/files/...`: a refusal of such a URL
    on a host falhook does not sign for may be a private fal file."""
    return urlsplit(url).path.startswith("/files/")


def _with_private_file_hint(exc: FetchError, ref: FileRef) -> FetchError:
    """A 401/403/404 of a fal-shaped URL on a host falhook does not sign for: the same error,
    saying how a private fal file there would be read (fal's own hosts are signed for)."""
    host = urlsplit(ref.url).hostname or "its host"
    hint = (
        f"; if it is a private fal file, add {host!r} to [downloads].fal_media_hosts and "
        "set FAL_KEY in falhook's environment: falhook then reads it through a signed URL"
    )
    kind = FetchRetryable if exc.retryable else FetchPermanent
    return kind(exc.message + hint, status=exc.status)


PRIVATE_HOSTS_HINT = (
    "set [downloads].allow_private_hosts = true to allow loopback and private addresses "
    "(for falhook emulate, or file servers on your own network)"
)


def _refused_as_private(fetcher: Fetcher, exc: FetchError) -> bool:
    """The address guard refused the host's address, and allow_private_hosts would have let
    it through."""
    return isinstance(exc, FetchRefused) and not fetcher.guard.allow_private


def names_of(refs: list[FileRef]) -> list[str]:
    return file_names((r.path, r.file_name, r.content_type, r.url) for r in refs)


def described_all(refs: list[FileRef], views: list[dict[str, Any]]) -> list[LocalFile]:
    """Every File described without a download (for sinks that only link files)."""
    by_path = {v.get("path"): v for v in views}
    return [
        described(ref, name, by_path.get(ref.path) or {})
        for ref, name in zip(refs, names_of(refs), strict=True)
    ]


def shown_url(ref: FileRef) -> str:
    """The File's URL as sinks get it: a data: URI (megabytes, maybe) only by its start."""
    return ref.url if not ref.is_data_uri else ref.url[:32] + "..."


def described(ref: FileRef, name: str, view: dict[str, Any]) -> LocalFile:
    """A File as a sink that reads no bytes sees it without a download: what the payload
    and earlier downloads (the stored view) say."""
    return LocalFile(
        path=ref.path,
        name=name,
        url=shown_url(ref),
        local_path=None,
        size=view.get("size", ref.file_size),
        sha256=view.get("sha256"),
        content_type=view.get("content_type") or ref.content_type,
        file_name=ref.file_name,
        extras=ref.extras,
    )


def local_file(fetched: FetchedFile, name: str) -> LocalFile:
    ref = fetched.ref
    return LocalFile(
        path=ref.path,
        name=name,
        url=shown_url(ref),
        local_path=fetched.local_path,
        size=fetched.size,
        sha256=fetched.sha256,
        content_type=fetched.content_type,
        file_name=ref.file_name,
        extras=ref.extras,
    )


def with_downloads(files: list[dict[str, Any]], local: list[LocalFile]) -> list[dict[str, Any]]:
    """The event's stored file list with what the downloads found out (size, sha256, type,
    the name sinks use)."""
    by_path = {f.path: f for f in local}
    updated = []
    for view in files:
        got = by_path.get(view.get("path", ""))
        if got is not None:
            view = view | {
                "size": got.size,
                "sha256": got.sha256,
                "content_type": got.content_type,
                "name": got.name,
            }
        updated.append(view)
    return updated
