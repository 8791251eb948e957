"""A Worker as the runtime builds it, for tests that drive one directly: with its own
downloader (no FAL_KEY), closed with it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

from falhook.config import Settings
from falhook.delivery.worker import Worker
from falhook.downloads.files import Downloader, make_downloader
from falhook.metrics import Metrics
from falhook.store.roles import DeliveryQueue
from falhook_sinks.base import Sink


def downloader_for(settings: Settings) -> Downloader:
    return make_downloader(settings.downloads, fal_key=None, metrics=Metrics())


@contextlib.asynccontextmanager
async def worker_for(
    settings: Settings, store: DeliveryQueue, sinks: Mapping[str, Sink], **parts: Any
) -> AsyncIterator[Worker]:
    downloader = downloader_for(settings)
    worker = Worker(settings, store, sinks, downloader=downloader, **parts)
    try:
        yield worker
    finally:
        await worker.aclose()
        await downloader.aclose()
