"""A Fetcher whose every download is a span (tracing on only: ``make_downloader`` wraps the
fetcher in one when telemetry is enabled, and uses the bare fetcher otherwise)."""

from __future__ import annotations

from typing import Any, cast

from falhook.downloads.fetch import FetchedFile, Fetcher
from falhook.intake.envelope import FileRef
from falhook.telemetry import Telemetry


class TracedFetcher:
    """Delegates everything to the fetcher it wraps; `fetch` runs inside a download span."""

    def __init__(self, inner: Fetcher, telemetry: Telemetry) -> None:
        self.inner = inner
        self.telemetry = telemetry

    @classmethod
    def around(cls, inner: Fetcher, telemetry: Telemetry) -> Fetcher:
        # Duck-typed: the downloader calls a Fetcher's methods, which this forwards.
        return cast(Fetcher, cls(inner, telemetry))

    async def fetch(self, ref: FileRef, *args: Any, **kwargs: Any) -> FetchedFile:
        with self.telemetry.download(ref.path, ref.url) as span:
            got = await self.inner.fetch(ref, *args, **kwargs)
            span.set(file_bytes=got.size)
            span.outcome("ok")
            return got

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
