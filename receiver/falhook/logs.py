"""Logging in one place: structlog, JSON lines when not on a TTY, pretty on one.

Request and delivery code binds ``request_id`` and ``route`` with structlog's contextvars, so
every line they write carries both. Secrets never reach a log: the processors below drop
keys that name them, as a last line of defence behind not logging them at all.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import MutableMapping
from typing import Any

import msgspec
import structlog

_SECRET_WORDS = ("signature", "secret", "token", "password", "authorization", "fal_key", "api_key")
_configured = False
_secret_key: dict[str, bool] = {}  # key name -> names a secret? (memoised: few distinct keys)


def _is_secret(key: str) -> bool:
    verdict = _secret_key.get(key)
    if verdict is None:
        verdict = _secret_key[key] = any(word in key.lower() for word in _SECRET_WORDS)
    return verdict


def _drop_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in event:
        if _is_secret(key):
            event[key] = "[redacted]"
    return event


class _UtcTimestamp:
    """The line's time as ISO 8601 in UTC with microseconds (2026-12-01T19:34:05.996477Z),
    the format structlog's TimeStamper(fmt="iso", utc=True) writes, at a fraction of its
    cost (it was the costliest step of logging): the date and time of day are formatted
    once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(
        self, _: Any, __: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        event["timestamp"] = f"{self._prefix}.{int((now - second) * 1e6):06d}Z"
        return event


def _json_line(event: dict[str, Any], **_: Any) -> bytes:
    # msgspec renders a log line much faster than json.dumps; str() for the rest.
    return msgspec.json.encode(event, enc_hook=str)


class _FdLogger:
    """Writes each line with one os.write: no Python-level buffering to flush, and a line
    written is in the kernel's hands even if the process is killed right after."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def msg(self, message: bytes) -> None:
        os.write(self.fd, message + b"\n")

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def _fd_logger_factory(*_: Any) -> _FdLogger:
    return _FdLogger(sys.stderr.fileno())


def configure_logging(level: str | None = None, *, json: bool | None = None) -> None:
    """Idempotent; FALHOOK_LOG_LEVEL and FALHOOK_LOG_FORMAT=json|console override."""
    global _configured
    level_name = (level or os.environ.get("FALHOOK_LOG_LEVEL") or "info").upper()
    fmt = os.environ.get("FALHOOK_LOG_FORMAT")
    if json is None:
        json = fmt == "json" if fmt else not sys.stderr.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_json_line)
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _UtcTimestamp(),
            _drop_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level_name, logging.INFO)
        ),
        logger_factory=(
            _fd_logger_factory if json else structlog.PrintLoggerFactory(file=sys.stderr)
        ),
        cache_logger_on_first_use=True,
    )
    # Libraries that use stdlib logging (uvicorn's errors, httpx) go to stderr too.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
    _configured = True


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name) if name else structlog.get_logger()


class LineBatch:
    """One log line for what happens to many events at once, where a hot path would write
    a line for each (a webhook accepted, a delivery recorded): the request ids are gathered
    by kind and group and written in one line on the event loop's next turn, as

        {"event": "deliveries recorded", "count": 3, "delivered": {"local": ["id1", "id2"]},
         "skipped": {"team": ["id3"]}}

    Each id is in the line as text, as findable as in a line of its own; the events answered
    by one commit share one line. docs/performance.md has what a line per event cost."""

    def __init__(self, logger: Any, event: str, *, at_once: bool = False) -> None:
        self.logger = logger
        self.event = event
        self.at_once = at_once  # a line per event (serverless: the loop may not turn again)
        self._lines: dict[str, dict[str, list[str]]] = {}
        self._count = 0

    def add(self, kind: str, group: str, request_id: str) -> None:
        if not self._count and not self.at_once:
            asyncio.get_running_loop().call_soon(self.flush)
        self._lines.setdefault(kind, {}).setdefault(group, []).append(request_id)
        self._count += 1
        if self.at_once:
            self.flush()

    def flush(self) -> None:
        if self._count:
            lines, count = self._lines, self._count
            self._lines, self._count = {}, 0
            self.logger.info(self.event, count=count, **lines)
