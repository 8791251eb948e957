"""falhook.sinks: the API for writing a sink of your own, and the only import a sink needs.

    from falhook.sinks import DeliveryContext, Retryable, Sink

Subclass ``Sink`` (or write ``async def handle(ctx)`` for ``type = "python"``), declare
options with ``SinkOptions`` and name them on the class (``options_type``), raise
``Retryable`` or ``Permanent``. The implementation, and
the built-in sinks, live in the ``falhook_sinks`` package (handlers/falhook_sinks/).
"""

from __future__ import annotations

from falhook_sinks.base import (
    ArrivingFile,
    BatchResult,
    BatchSink,
    DeliveryContext,
    DeliveryError,
    EventInfo,
    LocalFile,
    OptionError,
    Permanent,
    Retryable,
    Sink,
    SinkEnv,
    SinkFactory,
    SinkProblem,
    json_document,
    on_disk,
)
from falhook_sinks.options import Invalid, SinkOptions, read_options
from falhook_sinks.python import as_sink_factory

__all__ = [
    "ArrivingFile",
    "BatchResult",
    "BatchSink",
    "DeliveryContext",
    "DeliveryError",
    "EventInfo",
    "Invalid",
    "LocalFile",
    "OptionError",
    "Permanent",
    "Retryable",
    "Sink",
    "SinkEnv",
    "SinkFactory",
    "SinkOptions",
    "SinkProblem",
    "as_sink_factory",
    "json_document",
    "on_disk",
    "read_options",
]
