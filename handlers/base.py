"""The sink API: how an event reaches the places users work.

A sink is an object with ``async def deliver(ctx: DeliveryContext) -> dict | None``. It:
- never downloads (the worker already put every file on local disk: ``ctx.files``),
- never retries by itself (raise ``Retryable`` or ``Permanent``; the worker owns retries),
- writes idempotently (the same event twice leaves one copy),
- may return a small JSON-able dict (stored links, message ids) that sinks declared
  ``after = ["this one"]`` read from ``ctx.outputs``,
- may set ``keeps_files = True`` when it keeps the spool file itself instead of reading it
  (the disk sink links it): the download then writes the file back to disk as it arrives.

Sinks are built from ``[sinks.NAME]`` by a factory ``factory(name, options, env) -> sink``;
built-in types and users' packages register factories under the ``falhook.sinks`` entry-point
group, and ``type = "python"`` loads ``handler = "pkg.mod:attr"`` directly.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


class DeliveryError(Exception):
    """Base of the errors a sink raises."""


class Retryable(DeliveryError):
    """Try again later (network trouble, 5xx, 429). ``retry_after`` in seconds, if known."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Permanent(DeliveryError):
    """Retrying will not help (bad credentials, missing bucket, 4xx): dead-letter at once."""


@dataclass(frozen=True)
class LocalFile:
    """A file of the event, downloaded once by the worker and shared by every sink.

    Treat ``local_path`` as read-only: other sinks of the same event read it too.
    """

    path: str  # JSON path in the payload: "video", "images[0]"
    name: str  # sanitised, unique within the event: "clip.mp4", "images_0.png"
    url: str  # fal's URL (or the data: URI's first bytes are not kept here)
    local_path: Path
    size: int
    sha256: str
    content_type: str | None
    file_name: str | None = None  # as the payload gave it, unsanitised: display only
    extras: dict[str, Any] = field(default_factory=dict)  # width, height, ...


@dataclass(frozen=True)
class EventInfo:
    """What a sink knows of the event."""

    request_id: str
    route: str
    fal_status: str  # "OK" or "ERROR"
    error: str | None
    payload_error: str | None
    payload: Any
    gateway_request_id: str | None
    received_at: datetime
    files: list[dict[str, Any]]  # the FileView dicts (path, url, content_type, size, sha256...)
    file_problems: list[dict[str, str]]  # malformed Files: {"path", "reason"}
    document: dict[str, Any]  # the event as JSON (what event.json holds)
    submission: dict[str, Any] | None = None  # endpoint/input when falhook submitted the job

    @property
    def ok(self) -> bool:
        return self.fal_status == "OK"

    @property
    def endpoint(self) -> str | None:
        return (self.submission or {}).get("endpoint")

    def to_json_bytes(self) -> bytes:
        return json.dumps(self.document, indent=2, sort_keys=True, default=str).encode() + b"\n"


@dataclass(frozen=True)
class DeliveryContext:
    event: EventInfo
    files: list[LocalFile]
    route: str
    sink: str  # this sink's name in the config
    attempt: int  # 1 for the first attempt
    log: Any  # a structlog logger bound to request_id, route and sink
    outputs: Mapping[str, dict[str, Any]] = field(default_factory=dict)  # earlier sinks' returns
    # This sink's own output from an earlier successful delivery of the same event (kept
    # across replays unless `events replay --force`): lets a sink that cannot overwrite,
    # like a Slack post, skip a repeat.
    previous: dict[str, Any] | None = None


@runtime_checkable
class Sink(Protocol):
    async def deliver(self, ctx: DeliveryContext) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class SinkEnv:
    """What a factory may need besides its own options."""

    base_dir: Path  # the config file's folder: resolve relative paths against it
    settings: Any  # falhook.config.Settings


SinkFactory = Callable[[str, dict[str, Any], SinkEnv], Sink]
HandlerFunc = Callable[[DeliveryContext], Awaitable[dict[str, Any] | None]]


class Options:
    """Reads a sink's options, raising ConfigError that names ``[sinks.NAME].key``."""

    def __init__(self, sink: str, options: dict[str, Any]) -> None:
        self.sink = sink
        self._options = dict(options)
        self._used: set[str] = set()

    def key(self, name: str) -> str:
        return f"[sinks.{self.sink}].{name}"

    def error(self, name: str, problem: str) -> Exception:
        from falhook.config import ConfigError

        return ConfigError(self.key(name), problem)

    def str(self, name: str, default: str | None = None, *, required: bool = False) -> str | None:
        self._used.add(name)
        value = self._options.get(name, default)
        if value is None:
            if required:
                raise self.error(name, "is required")
            return None
        if not isinstance(value, str) or (required and not value):
            raise self.error(name, "must be a non-empty string" if required else "must be a string")
        return value

    def number(self, name: str, default: float) -> float:
        self._used.add(name)
        value = self._options.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise self.error(name, "must be a positive number")
        return float(value)

    def bool(self, name: str, default: bool) -> bool:
        self._used.add(name)
        value = self._options.get(name, default)
        if not isinstance(value, bool):
            raise self.error(name, "must be true or false")
        return value

    def raw(self, name: str, default: Any = None) -> Any:
        self._used.add(name)
        return self._options.get(name, default)

    def rest(self) -> dict[str, Any]:
        """Options not read so far (passed through to a user's handler)."""
        return {k: v for k, v in self._options.items() if k not in self._used}

    def no_unknown(self) -> None:
        for name in self._options:
            if name not in self._used:
                raise self.error(name, "unknown option")
