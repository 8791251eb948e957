"""Submitting jobs to fal's queue with falhook's own URL as the webhook.

    sub = await submit("luma/agent/ray/v3.2/reframe", {...}, route="reframe",
                       settings=settings, store=store, files={"video_url": "clip.mp4"})
    sub.request_id

or `submit_sync(...)` outside an event loop. The flow: validate the input (known Ray 3.2
endpoints), upload local files, POST `<queue_url>/<endpoint>?fal_webhook=<public_url>/webhooks/
<route>` once, record the submission in the store.

A submit POST is never retried: if its answer is lost the job may be running, and billed,
already. That case raises SubmitUnknown and is recorded as an `unknown` submission.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from falhook.config import Settings
from falhook.fal.queue import FalQueue, SubmitError, SubmitUnknown, make_queue
from falhook.fal.ray import validate_input
from falhook.store.models import NewSubmission
from falhook.store.roles import SubmissionStore


class NotRecorded(RuntimeError):
    """The job was submitted (it runs) but the store could not record it."""

    def __init__(self, submission: Submission, reason: str) -> None:
        super().__init__(
            f"submitted as {submission.request_id}, but recording it failed ({reason}); "
            "its webhook will still be received, without the submission's details"
        )
        self.submission = submission


# --- the submit flow -------------------------------------------------------------------------


@dataclass(frozen=True)
class Submission:
    request_id: str
    endpoint: str
    route: str
    webhook_url: str
    input: dict[str, Any]
    status_url: str
    response_url: str
    cancel_url: str


def webhook_url_for(settings: Settings, route: str) -> str:
    return f"{settings.receiver.public_url.rstrip('/')}/webhooks/{route}"


async def submit(
    endpoint: str,
    input: Mapping[str, Any],
    *,
    route: str,
    settings: Settings,
    store: SubmissionStore | None = None,
    files: Mapping[str, str | os.PathLike[str]] | None = None,
    queue: FalQueue | None = None,
    validate: bool = True,
) -> Submission:
    """Validate, upload `files` (field -> local path) into the input, submit once, record.

    Raises ray.ValidationError (nothing sent), SubmitError (not started) or SubmitUnknown
    (maybe started; recorded as `unknown` when a store is given)."""
    if settings.routes and route not in settings.routes:
        known = ", ".join(sorted(settings.routes))
        raise SubmitError(f"route {route!r} is not configured (routes: {known})")
    files = dict(files or {})
    payload = prepare_input(endpoint, input, files, settings, validate=validate)
    own = queue is None
    client = queue or make_queue(settings)
    try:
        for name, path in files.items():
            payload[name] = await client.upload(path)
        hook = webhook_url_for(settings, route)
        try:
            done = await client.submit(endpoint, payload, webhook_url=hook)
        except SubmitUnknown as exc:
            if store is not None:
                with contextlib.suppress(Exception):  # the message matters more than the record
                    exc.local_id = await _record_unknown(
                        store, endpoint, route, payload, exc.reason
                    )
            raise
    finally:
        if own:
            await client.aclose()
    submission = Submission(
        request_id=done.request_id,
        endpoint=endpoint,
        route=route,
        webhook_url=hook,
        input=payload,
        status_url=done.status_url,
        response_url=done.response_url,
        cancel_url=done.cancel_url,
    )
    if store is not None:
        await _record(store, submission)
    return submission


async def _record(store: SubmissionStore, sub: Submission) -> None:
    try:
        await store.record_submission(
            NewSubmission(
                request_id=sub.request_id,
                endpoint=sub.endpoint,
                route=sub.route,
                input=sub.input,
                status_url=sub.status_url,
                response_url=sub.response_url,
                cancel_url=sub.cancel_url,
            )
        )
    except Exception as exc:  # the job runs regardless: never lose its request_id
        raise NotRecorded(sub, f"{type(exc).__name__}: {exc}") from exc


def prepare_input(
    endpoint: str,
    input: Mapping[str, Any],
    files: Mapping[str, str | os.PathLike[str]],
    settings: Settings,
    *,
    validate: bool = True,
) -> dict[str, Any]:
    """Check the files exist and the input is valid before anything is uploaded or paid."""
    for name, path in files.items():
        if not Path(path).is_file():
            raise SubmitError(f"--file {name}={path}: no such file")
    payload = dict(input)
    if validate:
        # Placeholders stand for the files until they are uploaded: validation comes first.
        placeholders = {name: Path(p).resolve().as_uri() for name, p in files.items()}
        validate_input(
            endpoint,
            payload | placeholders,
            extra_schemas=settings.submit.schemas,
            local_files=files,
        )
    return payload


async def _record_unknown(
    store: SubmissionStore, endpoint: str, route: str, payload: dict[str, Any], reason: str
) -> str:
    """Keep a trace of a submit that may have started: no request_id is known, so a local one."""
    local_id = f"unknown-{uuid.uuid4()}"
    await store.record_submission(
        NewSubmission(request_id=local_id, endpoint=endpoint, route=route, input=payload)
    )
    await store.update_submission(local_id, state="unknown", detail=reason)
    return local_id


def submit_sync(
    endpoint: str,
    input: Mapping[str, Any],
    *,
    route: str,
    settings: Settings,
    files: Mapping[str, str | os.PathLike[str]] | None = None,
    validate: bool = True,
    record: bool = True,
) -> Submission:
    """submit() for synchronous code: opens the configured store to record the submission."""

    async def run() -> Submission:
        if not record:
            return await submit(
                endpoint, input, route=route, settings=settings, files=files, validate=validate
            )
        from falhook.store import make_store

        store = make_store(settings)
        await store.open()
        try:
            return await submit(
                endpoint,
                input,
                route=route,
                settings=settings,
                store=store,
                files=files,
                validate=validate,
            )
        finally:
            await store.close()

    return asyncio.run(run())
