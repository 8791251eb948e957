"""Turning ``[sinks.NAME]`` tables into sinks, at start-up, with errors naming the key."""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from importlib.metadata import entry_points
from typing import Any, Protocol

from falhook_sinks.base import (
    DeliveryContext,
    OptionError,
    Sink,
    SinkEnv,
    SinkFactory,
    SinkProblem,
)

ENTRY_POINT_GROUP = "falhook.sinks"


class SinkSpec(Protocol):
    """One ``[sinks.NAME]`` table: its name, type and the type's own options."""

    @property
    def name(self) -> str: ...

    @property
    def type(self) -> str: ...

    @property
    def options(self) -> Mapping[str, Any]: ...


def load_object(spec: str, key: str) -> Any:
    """Import ``pkg.module:attr`` (attr may be dotted); OptionError naming key on failure."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise OptionError(key, f"{spec!r} must look like 'package.module:attribute'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise OptionError(key, f"cannot import {module_name!r}: {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise OptionError(key, f"{module_name!r} has no attribute {attr!r}") from None
    return obj


def known_types() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def factory_for(sink_type: str, key: str) -> SinkFactory:
    """The factory registered for `sink_type`: built-in types and users' packages alike come
    from the entry-point group, each loaded only when a config uses it (so a missing
    optional dependency matters only to configs that name that type)."""
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=sink_type):
        try:
            loaded: SinkFactory = ep.load()
        except OptionError:
            raise
        except Exception as exc:
            raise OptionError(key, f"sink type {sink_type!r} failed to load: {exc}") from None
        return loaded
    raise OptionError(key, f"unknown sink type {sink_type!r} (known: {', '.join(known_types())})")


def build_sink(name: str, sink_type: str, options: Mapping[str, Any], env: SinkEnv) -> Sink:
    """One sink, built and validated (OptionError naming the key when it cannot be)."""
    factory = factory_for(sink_type, f"[sinks.{name}].type")
    try:
        made = factory(name, dict(options), env)
    except OptionError:
        raise
    except Exception as exc:
        raise OptionError(f"[sinks.{name}]", f"could not be set up: {exc}") from None
    return as_sink(made, f"[sinks.{name}].type")


def build_sinks(specs: Iterable[SinkSpec], env: SinkEnv) -> dict[str, Sink]:
    return {spec.name: build_sink(spec.name, spec.type, spec.options, env) for spec in specs}


def as_sink(made: Any, key: str) -> Sink:
    """A Sink, or an object with ``deliver`` (and maybe ``aclose``, ``keeps_files``) seen
    through one: the worker never has to ask what an object can do."""
    if isinstance(made, Sink):
        return made
    if not callable(getattr(made, "deliver", None)):
        raise OptionError(key, "the factory did not return a sink (an object with deliver)")
    return _Adapted(made)


class _Adapted(Sink):
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.keeps_files = bool(getattr(inner, "keeps_files", False))
        self.reads_files = bool(getattr(inner, "reads_files", True))

    async def deliver(self, ctx: DeliveryContext) -> dict[str, Any] | None:
        result = await self.inner.deliver(ctx)
        return result if isinstance(result, dict) else None

    async def check(self) -> list[SinkProblem]:
        check = getattr(self.inner, "check", None)
        return list(await check()) if check is not None else []

    async def aclose(self) -> None:
        close = getattr(self.inner, "aclose", None)
        if close is not None:
            await close()


async def close_sinks(sinks: Mapping[str, Sink]) -> None:
    for sink in sinks.values():
        await sink.aclose()


async def check_sinks(sinks: Mapping[str, Sink]) -> dict[str, list[SinkProblem]]:
    """Every sink's start-up check, by sink; a check that raises is a problem of its own."""
    found: dict[str, list[SinkProblem]] = {}
    for name, sink in sinks.items():
        try:
            found[name] = await sink.check()
        except Exception as exc:
            found[name] = [SinkProblem(f"[sinks.{name}]", f"its check failed: {exc!r}", False)]
    return found
