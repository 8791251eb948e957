"""Sinks: where delivered events go (disk, S3, Slack, HTTP, your own Python handler)."""

from falhook.sinks.base import (
    DeliveryContext,
    DeliveryError,
    EventInfo,
    LocalFile,
    Options,
    Permanent,
    Retryable,
    Sink,
    SinkEnv,
)

__all__ = [
    "DeliveryContext",
    "DeliveryError",
    "EventInfo",
    "LocalFile",
    "Options",
    "Permanent",
    "Retryable",
    "Sink",
    "SinkEnv",
]
