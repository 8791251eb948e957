"""The sink API: how an event reaches the places users work.

A sink subclasses ``Sink`` (or is any object with ``async def deliver(ctx)``; the registry
wraps such an object so the worker sees a ``Sink``). It:
- never downloads (the worker already put every file on local disk: ``ctx.files``),
- never retries by itself (raise ``Retryable`` or ``Permanent``; the worker owns retries),
- writes idempotently (the same event twice leaves one copy),
- may return a small JSON-able dict (stored links, message ids) that sinks declared
  ``after = ["this one"]`` read from ``ctx.outputs``.

Sinks are built from ``[sinks.NAME]`` by a factory ``factory(name, options, env) -> Sink``;
built-in types and users' packages register factories under the ``falhook.sinks`` entry-point
group, and ``type = "python"`` loads ``handler = "pkg.mod:attr"`` directly. A factory (a Sink
class, usually) that declares ``options_type`` gets its options parsed into that
``SinkOptions`` Struct by the registry; one that does not gets the table as a dict, and raises
``OptionError`` naming ``[sinks.NAME].option`` when it rejects it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Protocol

from falhook_sinks.tables import Table


class DeliveryError(Exception):
    """Base of the errors a sink raises."""


class Retryable(DeliveryError):
    """Try again later (network trouble, 5xx, 429). ``retry_after`` in seconds, if known."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Permanent(DeliveryError):
    """Retrying will not help (bad credentials, missing bucket, 4xx): dead-letter at once."""


class OptionError(ValueError):
    """A sink's option is wrong; ``key`` names it as ``[sinks.NAME].option``."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


class SinkOptions(Table):
    """Base of every sink's options: a msgspec Struct with the type, bounds
    (``Annotated[int, Meta(ge=1)]``) and default beside each option, and rules across options
    in ``check()``, raising ``Invalid(option, problem)``. Unknown options are errors."""


@dataclass(frozen=True)
class LocalFile:
    """A file of the event, shared by every sink: downloaded once by the worker for the
    sinks that read files, described (its URL and what the payload says) for those that do
    not.

    Treat ``local_path`` as read-only: other sinks of the same event read it too, and it is
    kept for the event's later attempts. A sink that reads files (``Sink.reads_files``, the
    default) always gets ``local_path``, ``size`` and ``sha256``; one that only links them
    gets ``None`` for what is not known without a download.
    """

    path: str  # JSON path in the payload: "video", "images[0]"
    name: str  # sanitised, unique within the event: "clip.mp4", "images_0.png"
    url: str  # fal's URL (a data: URI is cut short: its bytes are in local_path)
    local_path: Path | None
    size: int | None
    sha256: str | None
    content_type: str | None
    file_name: str | None = None  # as the payload gave it, unsanitised: display only
    extras: dict[str, Any] = field(default_factory=dict)  # width, height, ...


def on_disk(file: LocalFile) -> Path:
    """`file.local_path`, for a sink that reads files (the worker downloads every file for
    such a sink, so it is always there)."""
    if file.local_path is None:
        raise Retryable(f"{file.path}: the file was not downloaded for this sink")
    return file.local_path


@dataclass(frozen=True)
class EventInfo:
    """The event as fal sent it (and as falhook submitted it): what every sink may read.

    Delivery state is not part of it: it changes after the sink ran, and lives in the store
    (``falhook events show``).
    """

    request_id: str
    route: str
    fal_status: str  # "OK" or "ERROR"
    error: str | None
    payload_error: str | None
    payload: Any
    gateway_request_id: str | None
    received_at: datetime
    files: list[dict[str, Any]]  # the file views (path, url, content_type, size, sha256...)
    file_problems: list[dict[str, str]]  # malformed Files: {"path", "reason"}
    submission: dict[str, Any] | None = None  # endpoint/input when falhook submitted the job
    source: str = "webhook"  # or "poll": recovered from fal's queue

    @property
    def ok(self) -> bool:
        return self.fal_status == "OK"

    @property
    def endpoint(self) -> str | None:
        return (self.submission or {}).get("endpoint")

    @property
    def metadata(self) -> dict[str, str]:
        """The submission's metadata (`falhook submit --meta`): the user's own labels for
        the job, such as a customer or order id; empty when falhook did not submit it."""
        return dict((self.submission or {}).get("metadata") or {})

    @property
    def alert(self) -> dict[str, Any] | None:
        """For an alert event (source "alert", raised by a route's `on_dead`): what it
        reports, ``{"kind": "delivery_dead", "request_id", "route", "sink", "attempts",
        "last_error", "console_url", ...}``; None for a fal result."""
        if self.source == "alert" and isinstance(self.payload, dict):
            return self.payload
        return None

    @property
    def event_type(self) -> str:
        """fal.request.completed / fal.request.failed, or falhook.alert.delivery_dead: the
        type the HTTP sink's body and the AMQP sink's message carry."""
        alert = self.alert
        if alert is not None:
            return f"falhook.alert.{alert.get('kind', 'unknown')}"
        return "fal.request.completed" if self.ok else "fal.request.failed"

    def document(self) -> dict[str, Any]:
        """The event as JSON (what event.json holds): the keys of ``falhook events show
        --json`` that describe the event itself, and its payload."""
        doc = {
            "request_id": self.request_id,
            "route": self.route,
            "fal_status": self.fal_status,
            "error": self.error,
            "payload_error": self.payload_error,
            "received_at": iso_utc(self.received_at),
            "files": self.files,
            "gateway_request_id": self.gateway_request_id,
            "source": self.source,
            "submission": self.submission,
            "payload": self.payload,
        }
        alert = self.alert
        if alert is not None:  # an alert says what it is at the top: "delivery_dead"
            doc["kind"] = alert.get("kind")
        return doc

    def to_json_bytes(self) -> bytes:
        return json_document(self.document())


def json_document(doc: dict[str, Any]) -> bytes:
    """A document as the files falhook writes hold it (event.json): indented, keys sorted."""
    return json.dumps(doc, indent=2, sort_keys=True, default=str).encode() + b"\n"


def iso_utc(at: datetime) -> str:
    """2026-11-23T19:12:29Z: how every document of falhook writes a time."""
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class DeliveryContext:
    event: EventInfo
    files: list[LocalFile]
    sink: str  # this sink's name in the config
    attempt: int  # 1 for the first attempt
    log: Any  # a structlog logger bound to request_id, route and sink
    outputs: Mapping[str, dict[str, Any]] = field(default_factory=dict)  # earlier sinks' returns
    # This sink's own output from an earlier successful delivery of the same event (kept
    # across replays unless `events replay --force`): lets a sink that cannot overwrite,
    # like a Slack post, skip a repeat.
    previous: dict[str, Any] | None = None
    # Propagation headers for outgoing messages (W3C traceparent when tracing is on): sinks
    # that publish messages copy them into each message's headers or attributes.
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SinkProblem:
    """What a sink's ``check`` found. ``key`` names the option (``[sinks.NAME].root``).
    A fatal problem stops falhook from starting; another one is a warning (logged, and shown
    by ``/readyz``)."""

    key: str
    problem: str
    fatal: bool = True

    def __str__(self) -> str:
        return f"{self.key}: {self.problem}"


class ArrivingFile(Protocol):
    """A file still downloading, for a sink that consumes files as they arrive
    (``Sink.streams_files``). ``local_path`` grows; ``wait`` says how much of it is there."""

    path: str
    name: str
    url: str
    content_type: str | None
    file_name: str | None
    local_path: Path
    expected_size: int | None  # from Content-Length or the payload's file_size, when known

    async def wait(self, size: int) -> int:
        """Return once at least `size` bytes are in local_path, or the download is complete:
        the bytes there now. Raises Retryable or Permanent when the download failed."""

    @property
    def complete(self) -> bool: ...

    async def finished(self) -> LocalFile:
        """The whole file (size and sha256 known); raises as `wait` does."""


# One event's result in a batch: its output, or the exception it failed with.
BatchResult = dict[str, Any] | None | Exception


class Sink:
    """What the worker calls. Subclass it and implement ``deliver``.

    ``reads_files``: the sink reads the files' bytes (``local_path``). One that only links
    them (Slack, an HTTP forward, a queue message) sets it False, and never makes the worker
    download a file for it alone.
    ``keeps_files``: the sink keeps the spool file itself instead of reading it (the disk
    sink hard-links it under its root); the download then writes the file back to disk as
    it arrives, so the sink's fsync has little left to do.
    ``streams_files``: the sink implements ``deliver_streaming`` and consumes each file while
    it is still arriving (the S3 sink uploads parts as the download produces them).
    Both need ``reads_files``; the registry refuses a sink type whose flags disagree.
    ``options_type``: the ``SinkOptions`` Struct of the sink's options. Set, the registry
    parses ``[sinks.NAME]`` into it and calls ``cls(name, options, env)`` with the Struct;
    unset, with the table as a dict.
    ``shows_posters``: the sink shows a video's poster (``falhook[media]``): it runs once
    the posters exist. Other sinks run as soon as the files are there; one that stores files
    (``keeps_files`` or ``streams_files``) is then called once more with the posters.
    ``takes_batches``: set by ``BatchSink``: the worker hands it the events bound for it at
    about the same time in one ``deliver_batch`` call.
    """

    reads_files: bool = True
    keeps_files: bool = False
    streams_files: bool = False
    shows_posters: bool = False
    takes_batches: bool = False
    options_type: ClassVar[type[SinkOptions] | None] = None

    async def deliver(self, ctx: DeliveryContext) -> dict[str, Any] | None:
        raise NotImplementedError

    async def deliver_batch(self, batch: Sequence[DeliveryContext]) -> list[BatchResult]:
        """Deliver several events: one result per event, in order: its output (a dict, or
        None), or the exception it failed with (``Retryable``, ``Permanent``). Here: each
        event's ``deliver``, all at once; a ``BatchSink`` does it in one round trip."""
        results = await asyncio.gather(
            *(self.deliver(ctx) for ctx in batch), return_exceptions=True
        )
        return [_as_result(r) for r in results]

    async def deliver_streaming(
        self, ctx: DeliveryContext, files: Sequence[ArrivingFile]
    ) -> dict[str, Any] | None:
        """Deliver while the event's files download (``ctx.files`` is empty: `files` are
        the same files, arriving). Used only when ``streams_files`` is set and the files are
        not in the spool yet; otherwise ``deliver`` is called."""
        raise NotImplementedError

    async def check(self) -> list[SinkProblem]:
        """Problems that can be found without delivering anything (a folder that cannot be
        written, a bucket that cannot be reached). Called when falhook starts, and by
        ``/readyz``; the default finds none. Must be quick and have no lasting effect."""
        return []

    async def aclose(self) -> None:
        """Release clients and threads; called once when falhook stops."""


class BatchSink(Sink):
    """A sink that delivers several events per call: the queue sinks, whose cost is a round
    trip to the broker. Implement ``deliver_batch``; ``deliver`` is its one-event case.

    The worker gathers the events bound for the sink while one of its calls is in flight,
    up to ``[delivery].batch_size`` or for ``[delivery].linger`` seconds (an event alone is
    sent at once). Each event's result is its own: an event whose message the broker refused
    is retried (or dead-lettered) alone, and its neighbours count as delivered. Raising from
    ``deliver_batch`` fails every event of the batch with that error.
    """

    takes_batches = True

    async def deliver(self, ctx: DeliveryContext) -> dict[str, Any] | None:
        (result,) = await self.deliver_batch([ctx])
        if isinstance(result, BaseException):
            raise result
        return result

    async def deliver_batch(self, batch: Sequence[DeliveryContext]) -> list[BatchResult]:
        raise NotImplementedError


def _as_result(result: dict[str, Any] | BaseException | None) -> BatchResult:
    if isinstance(result, Exception):
        return result
    if isinstance(result, BaseException):  # cancelled, or an exit: not one event's failure
        raise result
    return result if isinstance(result, dict) else None


@dataclass(frozen=True)
class SinkEnv:
    """What a factory may need besides its own options."""

    base_dir: Path  # the config file's folder: resolve relative paths against it


SinkFactory = Callable[[str, dict[str, Any], SinkEnv], Any]
HandlerFunc = Callable[[DeliveryContext], Awaitable[dict[str, Any] | None]]
