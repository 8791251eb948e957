"""OpenTelemetry's in-memory exporter behind the process's global tracer provider, installed
once per test process (a provider can be set only once): tests with tracing on call
`memory_exporter()` before any falhook runtime starts, and read the finished spans."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

_exporter: InMemorySpanExporter | None = None


def memory_exporter() -> InMemorySpanExporter:
    global _exporter
    if _exporter is None:
        provider = TracerProvider()
        exporter = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        assert trace.get_tracer_provider() is provider, "a tracer provider was set before"
        _exporter = exporter
    return _exporter


def spans_of(trace_id: int) -> list[ReadableSpan]:
    assert _exporter is not None
    return [s for s in _exporter.get_finished_spans() if s.context.trace_id == trace_id]
