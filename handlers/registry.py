"""Turning ``[sinks.NAME]`` tables into sink objects, at start-up, with errors naming the key."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from falhook.config import ConfigError, Settings
from falhook.sinks.base import Sink, SinkEnv, SinkFactory

ENTRY_POINT_GROUP = "falhook.sinks"

# Built-ins by module path, so a broken or missing optional dependency of one sink type only
# matters to configs that use it (the S3 sink needs the `s3` extra, boto3).
BUILTIN_SINKS: dict[str, str] = {
    "disk": "falhook.sinks.disk:DiskSink",
    "s3": "falhook.sinks.s3:S3Sink",
    "slack": "falhook.sinks.slack:SlackSink",
    "http": "falhook.sinks.http:HttpSink",
    "python": "falhook.sinks.python:python_sink",
}


def load_object(spec: str, key: str) -> Any:
    """Import ``pkg.module:attr`` (attr may be dotted); ConfigError naming key on failure."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(key, f"{spec!r} must look like 'package.module:attribute'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(key, f"cannot import {module_name!r}: {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(key, f"{module_name!r} has no attribute {attr!r}") from None
    return obj


def factory_for(sink_type: str, key: str) -> SinkFactory:
    if sink_type in BUILTIN_SINKS:
        return load_object(BUILTIN_SINKS[sink_type], key)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == sink_type:
            try:
                return ep.load()
            except Exception as exc:
                raise ConfigError(key, f"sink type {sink_type!r} failed to load: {exc}") from None
    known = sorted(set(BUILTIN_SINKS) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})
    raise ConfigError(key, f"unknown sink type {sink_type!r} (known: {', '.join(known)})")


def build_sinks(settings: Settings, only: set[str] | None = None) -> dict[str, Sink]:
    """Every configured sink (or those named in `only`), built and validated."""
    env = SinkEnv(base_dir=settings.base_dir, settings=settings)
    sinks: dict[str, Sink] = {}
    for name, conf in settings.sinks.items():
        if only is not None and name not in only:
            continue
        factory = factory_for(conf.type, f"[sinks.{name}].type")
        try:
            sink = factory(name, dict(conf.options), env)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(f"[sinks.{name}]", f"could not be set up: {exc}") from None
        if not callable(getattr(sink, "deliver", None)):
            raise ConfigError(f"[sinks.{name}].type", "the factory did not return a sink")
        sinks[name] = sink
    return sinks


async def close_sinks(sinks: dict[str, Sink]) -> None:
    for sink in sinks.values():
        close = getattr(sink, "aclose", None)
        if close is not None:
            await close()
