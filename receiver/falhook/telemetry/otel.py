"""Tracing with OpenTelemetry (the ``falhook[otel]`` extra), after its messaging conventions.

One trace per event, across processes:

    receive {route}   SERVER    the webhook request (intake process); its W3C traceparent is
                                stored with the event (events.trace_context)
    └ process {route} CONSUMER  one leased event in a worker (any process, later): a child
      │                         of the stored context, and linked to it
      ├ download      CLIENT    each file
      └ send {sink}   PRODUCER  each delivery attempt to a sink, linked to the receive span;
                                its traceparent goes out with the message (ctx.headers)

While a span is current, log lines carry its ``trace_id`` and ``span_id``.

The tracer provider: the one the application (or ``opentelemetry-instrument``) installed, if
any; otherwise falhook makes one, once per process, with a batch exporter chosen by
``[telemetry].exporter`` or ``OTEL_TRACES_EXPORTER`` (``otlp`` over HTTP, ``console``,
``none``); the SDK reads the rest of the standard variables (sampler, batch sizes,
resource attributes, OTLP headers) itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import structlog
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind, Status, StatusCode, Tracer, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from falhook.config import ConfigError, TelemetrySettings
from falhook.telemetry import Span, Telemetry

SYSTEM = "falhook"  # messaging.system: falhook is the intermediary between fal and the sinks
FLUSH_TIMEOUT_MS = 5000
_W3C = TraceContextTextMapPropagator()  # what the store keeps, whatever OTEL_PROPAGATORS says
_FAILED = frozenset({"retry", "dead"})
_provider_lock = threading.Lock()
try:
    VERSION = importlib.metadata.version("falhook")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    VERSION = "unknown"


class OtelSpan(Span):
    """A started OpenTelemetry span, current while the `with` block runs."""

    __slots__ = ("_cm", "_span", "_tokens")

    def __init__(self, cm: contextlib.AbstractContextManager[trace.Span]) -> None:
        self._cm = cm
        self._span: trace.Span = trace.INVALID_SPAN
        self._tokens: Mapping[str, Any] = {}

    def __enter__(self) -> OtelSpan:
        self._span = self._cm.__enter__()
        ids = self._span.get_span_context()
        self._tokens = structlog.contextvars.bind_contextvars(
            trace_id=trace.format_trace_id(ids.trace_id),
            span_id=trace.format_span_id(ids.span_id),
        )
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        structlog.contextvars.reset_contextvars(**self._tokens)
        self._cm.__exit__(kind, exc, tb)

    @property
    def headers(self) -> Mapping[str, str]:
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(self._span))
        return carrier

    def set(self, **attributes: Any) -> None:
        self._span.set_attributes(
            {f"falhook.{k}": v for k, v in attributes.items() if v is not None}
        )

    def outcome(self, outcome: str, error: str | None = None) -> None:
        self._span.set_attribute("falhook.outcome", outcome)
        if outcome in _FAILED:
            self._span.set_attribute("error.type", outcome)
            self._span.set_status(Status(StatusCode.ERROR, error))

    def answered(self, status: int, outcome: str, reason: str | None = None) -> None:
        self._span.set_attributes({"http.response.status_code": status, "falhook.outcome": outcome})
        if reason:
            self._span.set_attribute("falhook.reason", reason)
        if status >= 500:  # HTTP server spans: only the server's own failures are errors
            self._span.set_attribute("error.type", str(status))
            self._span.set_status(Status(StatusCode.ERROR, reason))


class OtelTelemetry(Telemetry):
    enabled = True

    def __init__(self, settings: TelemetrySettings, environ: Mapping[str, str]) -> None:
        self.provider = tracer_provider(settings, environ)
        self.tracer: Tracer = self.provider.get_tracer("falhook", VERSION)

    def receive(self, route: str, *, known: bool) -> Span:
        # A route nobody configured is not named: scanners must not make span names up.
        name = f"receive {route}" if known else "receive"
        attributes = _messaging("receive", route if known else None)
        if known:
            attributes["falhook.route"] = route
        attributes |= {"http.request.method": "POST", "http.route": "/webhooks/{route}"}
        return self._start(name, SpanKind.SERVER, attributes)

    def job(self, request_id: str, route: str, trace_context: str | None) -> Span:
        received = context_of(trace_context)
        attributes = _messaging("process", route) | {
            "messaging.message.id": request_id,
            "falhook.request_id": request_id,
            "falhook.route": route,
        }
        links = _links(received)
        return self._start(f"process {route}", SpanKind.CONSUMER, attributes, received, links)

    def attempt(
        self, sink: str, attempt: int, *, request_id: str, trace_context: str | None
    ) -> Span:
        attributes = _messaging("send", sink) | {
            "messaging.operation.name": "deliver",
            "messaging.message.id": request_id,
            "falhook.sink": sink,
            "falhook.attempt": attempt,
        }
        links = _links(context_of(trace_context))
        return self._start(f"send {sink}", SpanKind.PRODUCER, attributes, None, links)

    def download(self, path: str, url: str) -> Span:
        attributes: dict[str, Any] = {"falhook.file.path": path}
        host = _host(url)
        if host:  # never the whole URL: fal's links may carry tokens, data: URIs are large
            attributes["server.address"] = host
        return self._start("download", SpanKind.CLIENT, attributes)

    def traceparent(self) -> str | None:
        return traceparent_of(None)

    def annotate(self, **attributes: Any) -> None:
        trace.get_current_span().set_attributes(
            {f"falhook.{k}": v for k, v in attributes.items() if v is not None}
        )

    async def aclose(self) -> None:
        flush = getattr(self.provider, "force_flush", None)
        if flush is not None:
            await asyncio.to_thread(flush, FLUSH_TIMEOUT_MS)

    def _start(
        self,
        name: str,
        kind: SpanKind,
        attributes: dict[str, Any],
        parent: Context | None = None,
        links: list[Link] | None = None,
    ) -> Span:
        cm = self.tracer.start_as_current_span(
            name, context=parent, kind=kind, attributes=attributes, links=links
        )
        return OtelSpan(cm)


def _messaging(operation: str, destination: str | None) -> dict[str, Any]:
    attributes = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
    }
    if destination is not None:
        attributes["messaging.destination.name"] = destination
    return attributes


def _links(received: Context | None) -> list[Link]:
    if received is None:
        return []
    span_context = trace.get_current_span(received).get_span_context()
    return [Link(span_context)] if span_context.is_valid else []


def _host(url: str) -> str | None:
    if url[:5].lower() == "data:":
        return None
    with contextlib.suppress(ValueError):
        return urlsplit(url).hostname
    return None


def traceparent_of(context: Context | None) -> str | None:
    """The W3C traceparent of the span current in `context` (None: the current context)."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context=context)
    return carrier.get("traceparent")


def context_of(traceparent: str | None) -> Context | None:
    """The remote span context a stored traceparent names (None if it names none)."""
    if not traceparent:
        return None
    context = _W3C.extract({"traceparent": traceparent})
    return context if trace.get_current_span(context).get_span_context().is_valid else None


def tracer_provider(settings: TelemetrySettings, environ: Mapping[str, str]) -> TracerProvider:
    """The provider installed globally, or the one falhook makes for this process."""
    with _provider_lock:
        current = trace.get_tracer_provider()
        if not isinstance(current, trace.ProxyTracerProvider):
            return current
        made = _make_provider(settings, environ)
        trace.set_tracer_provider(made)
        return made


def _make_provider(settings: TelemetrySettings, environ: Mapping[str, str]) -> TracerProvider:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = settings.service_name or environ.get("OTEL_SERVICE_NAME") or "falhook"
    provider = SdkProvider(
        resource=Resource.create({"service.name": name, "service.version": VERSION})
    )
    exporter = _exporter(settings, environ)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _exporter(settings: TelemetrySettings, environ: Mapping[str, str]) -> Any:
    chosen = settings.exporter or environ.get("OTEL_TRACES_EXPORTER", "").split(",")[0].strip()
    chosen = chosen.lower() or "otlp"
    if chosen == "none":
        return None
    if chosen == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if chosen != "otlp":
        raise ConfigError("[telemetry].exporter", f"unsupported exporter {chosen!r}")
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise ConfigError(
            "[telemetry].exporter",
            "otlp needs opentelemetry-exporter-otlp-proto-http: pip install 'falhook[otel]'",
        ) from None
    endpoint = settings.endpoint.rstrip("/") + "/v1/traces" if settings.endpoint else None
    return OTLPSpanExporter(endpoint=endpoint)
