"""AWS Lambda entry point: ``receiver.serverless:handler`` (Function URLs and API Gateway HTTP
APIs, through Mangum; base64-encoded bodies included).

Two modes, from ``[serverless].mode``:
- ``enqueue``: verify, store, answer. Deliveries are made by `falhook worker` processes
  elsewhere, or by a scheduled drain function (``receiver.serverless:drain``), on a shared
  PostgreSQL store.
- ``inline``: verify, store, then run the route's sinks before answering, within
  ``inline_deadline``. A non-2xx answer hands the retry to fal's own schedule (10 tries over
  about 2 hours); idempotent sinks make those retries safe.

The app is built once per container, at first use, and its store connection and key cache
live as long as the container: Mangum's per-invocation lifespan is switched off for that.
"""

from __future__ import annotations

import asyncio
from typing import Any

from receiver.config import Settings, config_path_from, load_settings
from receiver.logs import get_logger

LAMBDA_MAX_BODY = 6 * 1024 * 1024  # Lambda's synchronous request payload limit
log = get_logger("falhook.serverless")
_handler: Any = None
_settings: Settings | None = None


def _load() -> Settings:
    global _settings
    if _settings is None:
        _settings = load_settings(config_path_from(None))
        if _settings.receiver.max_body_bytes > LAMBDA_MAX_BODY:
            from dataclasses import replace

            receiver = replace(_settings.receiver, max_body_bytes=LAMBDA_MAX_BODY)
            _settings = replace(_settings, receiver=receiver)
            log.info("max_body_bytes lowered to Lambda's request limit", limit=LAMBDA_MAX_BODY)
        if _settings.sqlite_path() is not None:
            log.warning("serverless with SQLite: events live only as long as this container")
    return _settings


def build_handler(settings: Settings) -> Any:
    from mangum import Mangum

    from receiver.app import create_app

    app = create_app(
        settings,
        run_worker=False,
        inline=settings.serverless.mode == "inline",
        managed_lifespan=False,
    )
    return Mangum(app, lifespan="off", api_gateway_base_path="/")


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The Lambda handler."""
    global _handler
    if _handler is None:
        _handler = build_handler(_load())
    return _handler(event, context)


def drain(event: dict[str, Any] | None = None, context: Any = None) -> dict[str, int]:
    """A scheduled function for enqueue mode: deliver what is due, within the invocation."""
    return asyncio.get_event_loop().run_until_complete(_drain(_load(), context))


async def _drain(settings: Settings, context: Any) -> dict[str, int]:
    from handlers.registry import build_sinks, close_sinks
    from receiver.store import make_store
    from receiver.worker import Worker

    store = make_store(settings)
    await store.open()
    sinks = build_sinks(settings)
    worker = Worker(settings, store, sinks)
    attempted = 0
    try:
        # Leave a margin before Lambda's own deadline; each batch is bounded by concurrency.
        while context is None or context.get_remaining_time_in_millis() > 30_000:
            done = await worker.run_once()
            attempted += done
            if done == 0 or context is None:
                break
    finally:
        await worker.aclose()
        await close_sinks(sinks)
        await store.close()
    return {"attempted": attempted}
