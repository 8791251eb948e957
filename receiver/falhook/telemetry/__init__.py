"""Tracing, off unless asked for.

Callers hold a ``Telemetry`` and open spans through it::

    with telemetry.job(request_id, route, trace_context) as span:
        ...
        span.outcome("delivered")

The base class is tracing switched off: every span is the same do-nothing object, and
OpenTelemetry is not even imported. ``make_telemetry(settings)`` returns the OpenTelemetry
implementation (falhook.telemetry.otel, the ``falhook[otel]`` extra) when ``[telemetry]
enabled = true``, or when it is left unset and the standard variables ask for traces
(``OTEL_TRACES_EXPORTER`` other than ``none``, ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``); ``OTEL_SDK_DISABLED=true`` turns it off whatever
else is set.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import MappingProxyType, TracebackType
from typing import Any

import structlog

from falhook.config import ConfigError, Settings, TelemetrySettings

log = structlog.get_logger("falhook.telemetry")
_NO_HEADERS: Mapping[str, str] = MappingProxyType({})
_ASKING_FOR_TRACES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


class Span:
    """What callers do with a span. This one does nothing: tracing is off."""

    __slots__ = ()

    @property
    def headers(self) -> Mapping[str, str]:
        """Propagation headers (W3C traceparent) naming this span, for outgoing messages."""
        return _NO_HEADERS

    def set(self, **attributes: Any) -> None:
        """Attributes known only once the span has started (request_id, outcome...)."""

    def outcome(self, outcome: str, error: str | None = None) -> None:
        """How the work ended: "delivered", "retry", "dead", "skipped", an HTTP answer..."""

    def answered(self, status: int, outcome: str, reason: str | None = None) -> None:
        """How a request span ended: the HTTP status, accepted/duplicate/rejected, why."""

    def __enter__(self) -> Span:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


NO_SPAN = Span()


class Telemetry:
    """Tracing switched off. `falhook.telemetry.otel.OtelTelemetry` is the real one."""

    enabled = False

    def receive(self, route: str, *, known: bool) -> Span:
        """The span of one webhook request (`POST /webhooks/{route}`)."""
        return NO_SPAN

    def job(self, request_id: str, route: str, trace_context: str | None) -> Span:
        """The span of one leased event in a worker, linked to the receive span whose W3C
        traceparent the store kept (`trace_context`)."""
        return NO_SPAN

    def attempt(
        self, sink: str, attempt: int, *, request_id: str, trace_context: str | None
    ) -> Span:
        """The span of one delivery attempt to one sink (inside a job span)."""
        return NO_SPAN

    def download(self, path: str, url: str) -> Span:
        """The span of one file download (inside a job span)."""
        return NO_SPAN

    def traceparent(self) -> str | None:
        """The W3C traceparent of the current span, if any."""
        return None

    def annotate(self, **attributes: Any) -> None:
        """Attributes (as falhook.NAME) on the current span."""

    async def aclose(self) -> None:
        """Export what is still buffered (the process may be about to exit)."""


def tracing_wanted(settings: TelemetrySettings, environ: Mapping[str, str]) -> bool | None:
    """True: asked for in the config; None: asked for by OTEL_* variables only (a missing
    extra is then a warning, not an error); False: off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if settings.enabled is not None:
        return settings.enabled
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if (exporter and exporter != "none") or any(environ.get(v) for v in _ASKING_FOR_TRACES):
        return None
    return False


def make_telemetry(settings: Settings, environ: Mapping[str, str] | None = None) -> Telemetry:
    """The process's tracing: off (no OpenTelemetry import at all) unless asked for."""
    env = os.environ if environ is None else environ
    wanted = tracing_wanted(settings.telemetry, env)
    if wanted is False:
        return Telemetry()
    try:
        from falhook.telemetry.otel import OtelTelemetry
    except ImportError as exc:
        if wanted is True:
            raise ConfigError(
                "[telemetry].enabled", "tracing needs OpenTelemetry: pip install 'falhook[otel]'"
            ) from exc
        log.warning("OTEL_* asks for traces but falhook[otel] is not installed: tracing off")
        return Telemetry()
    return OtelTelemetry(settings.telemetry, env)
