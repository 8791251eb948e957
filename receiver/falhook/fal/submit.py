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
import ipaddress
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog

from falhook.config import Settings
from falhook.fal.queue import (
    FalQueue,
    SubmitRefused,
    SubmitUnknown,
    is_fal_queue,
    make_queue,
)
from falhook.fal.ray import validate_input
from falhook.metadata import MetadataError, check_metadata
from falhook.progress import Progress
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


log = structlog.get_logger("falhook.submit")
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".lan", ".home.arpa")
# What people write when they put the webhook into the input instead of ?fal_webhook=.
_WEBHOOK_FIELDS = {"webhook", "webhookurl", "falwebhook", "webhookuri", "callbackurl"}


def webhook_fields(input: Mapping[str, Any]) -> list[str]:
    """Top-level input fields that look like a webhook URL (a common mistake)."""
    return [
        name for name in input if name.replace("_", "").replace("-", "").lower() in _WEBHOOK_FIELDS
    ]


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
    metadata: dict[str, str] = field(default_factory=dict)  # kept here, never sent to fal


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
    allow_unreachable_webhook: bool = False,
    show_progress: bool = False,
    metadata: Mapping[str, str] | None = None,
) -> Submission:
    """Validate, upload `files` (field -> local path) into the input, submit once, record.

    `metadata`: the user's own labels for the job (customer, order), stored with the
    submission and carried by its event as `submission.metadata`, never sent to fal
    (falhook.metadata has the rules). Raises ray.ValidationError or SubmitRefused (nothing
    sent: bad input or config), SubmitError (not started) or SubmitUnknown (maybe started;
    recorded as `unknown` when a store is given). `show_progress`: upload progress on
    stderr when it is a terminal."""
    labels = checked_metadata(metadata)
    check_before_sending(settings, route, allow_unreachable_webhook=allow_unreachable_webhook)
    files = dict(files or {})
    payload = prepare_input(endpoint, input, files, settings, validate=validate)
    own = queue is None
    client = queue or make_queue(settings)
    hook = webhook_url_for(settings, route)
    try:
        for name, path in files.items():
            payload[name] = await _upload(client, path, show_progress)
        try:
            done = await client.submit(
                endpoint, payload, webhook_url=hook, store_io=settings.submit.store_io
            )
        except SubmitUnknown as exc:
            if store is not None:
                with contextlib.suppress(Exception):  # the message matters more than the record
                    exc.local_id = await _record_unknown(
                        store, endpoint, route, payload, exc.reason, labels
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
        metadata=labels,
    )
    if store is not None:
        await _record(store, submission)
    return submission


async def _upload(client: FalQueue, path: str | os.PathLike[str], show_progress: bool) -> str:
    if not show_progress:
        return await client.upload(path)
    size = (await asyncio.to_thread(os.stat, path)).st_size
    with Progress(f"uploading {Path(path).name}", total=size, unit="bytes") as progress:
        return await client.upload(path, progress)


def checked_metadata(metadata: Mapping[str, Any] | None) -> dict[str, str]:
    """The metadata as stored; SubmitRefused (nothing sent) when it breaks a rule."""
    try:
        return check_metadata(metadata)
    except MetadataError as exc:
        raise SubmitRefused(str(exc)) from None


def check_before_sending(
    settings: Settings, route: str, *, allow_unreachable_webhook: bool = False
) -> None:
    """Refuse what would spend money for nothing: an unknown route, or a job on fal's real
    queue whose webhook fal cannot deliver."""
    if route not in settings.routes:
        known = ", ".join(sorted(settings.routes))
        where = f"routes: {known}" if known else f"{settings.source} has no routes"
        raise SubmitRefused(f"route {route!r} is not configured ({where})")
    queue_url = settings.receiver.queue_url
    if not is_fal_queue(queue_url) or allow_unreachable_webhook:
        return  # the emulator, or another queue: its own network rules
    problem = unreachable_reason(settings.receiver.public_url)
    if problem is not None:
        raise SubmitRefused(
            f"[receiver].public_url: {problem}, so fal ({queue_url}) could never deliver the "
            "webhook of this billed job. Set it to the public https address of this falhook, "
            "or pass --allow-unreachable-webhook to submit anyway (the result can then only "
            "be fetched by reconciliation)."
        )


def unreachable_reason(public_url: str) -> str | None:
    """Why fal's cloud cannot reach `public_url`, or None when it may (a public https URL).
    Names are not resolved: a split-horizon DNS answer here says nothing about fal's view."""
    parts = urlsplit(public_url)
    host = (parts.hostname or "").rstrip(".").lower()
    if parts.scheme != "https":
        return f"{public_url} is not https (fal delivers webhooks to public https URLs)"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if host == "localhost" or host.endswith(_LOCAL_SUFFIXES) or "." not in host:
            return f"{public_url} names a local host ({host})"
        return None
    if not address.is_global:
        return f"{public_url} is a loopback, private or reserved address ({host})"
    return None


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
                metadata=sub.metadata,
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
            raise SubmitRefused(f"--file {name}={path}: no such file")
    payload = dict(input)
    for field_name in webhook_fields(payload):
        log.warning(
            "the input carries a webhook URL field; fal ignores it (falhook registers the "
            "webhook itself, as ?fal_webhook=), so it is sent as an ordinary input field",
            field=f"input.{field_name}",
        )
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
    store: SubmissionStore,
    endpoint: str,
    route: str,
    payload: dict[str, Any],
    reason: str,
    metadata: dict[str, str],
) -> str:
    """Keep a trace of a submit that may have started: no request_id is known, so a local one."""
    local_id = f"unknown-{uuid.uuid4()}"
    await store.record_submission(
        NewSubmission(
            request_id=local_id, endpoint=endpoint, route=route, input=payload, metadata=metadata
        )
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
    allow_unreachable_webhook: bool = False,
    show_progress: bool = False,
    metadata: Mapping[str, str] | None = None,
) -> Submission:
    """submit() for synchronous code: opens the configured store to record the submission."""

    async def run() -> Submission:
        options: dict[str, Any] = {
            "route": route,
            "settings": settings,
            "files": files,
            "validate": validate,
            "allow_unreachable_webhook": allow_unreachable_webhook,
            "show_progress": show_progress,
            "metadata": metadata,
        }
        if not record:
            return await submit(endpoint, input, **options)
        # A config mistake (or metadata breaking a rule) is refused before the store is
        # opened (a missing --file or an input Ray refuses is found later, by submit itself).
        checked_metadata(metadata)
        check_before_sending(settings, route, allow_unreachable_webhook=allow_unreachable_webhook)
        from falhook.store import make_store

        store = make_store(settings)
        await store.open()
        try:
            return await submit(endpoint, input, store=store, **options)
        finally:
            await store.close()

    return asyncio.run(run())
