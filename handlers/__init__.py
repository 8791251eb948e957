"""falhook.sinks: where delivered events go (disk, S3, Slack, HTTP, your own Python handler),
and the API to write your own: subclass ``Sink``, declare options with ``SinkOptions``."""

from falhook.sinks.base import (
    ArrivingFile,
    DeliveryContext,
    DeliveryError,
    EventInfo,
    LocalFile,
    OptionError,
    Permanent,
    Retryable,
    Sink,
    SinkEnv,
    SinkProblem,
)
from falhook.sinks.options import Invalid, SinkOptions, read_options

__all__ = [
    "ArrivingFile",
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
    "SinkOptions",
    "SinkProblem",
    "read_options",
]
