"""Turning ``[sinks.NAME]`` tables into sinks, at start-up, with errors naming the key.

A sink type is loaded from its entry point and checked once loaded (a Sink class whose
capability flags disagree, or whose ``options_type`` is not a SinkOptions, is refused before
any sink is built); the table is then parsed into the type's ``options_type`` with the loader
every table of the config uses (falhook_sinks.tables), and the sink constructed with the
parsed options. Factories without ``options_type`` get the table as a dict, as before.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol, TypeVar

from falhook_sinks.base import (
    ArrivingFile,
    BatchResult,
    BatchSink,
    DeliveryContext,
    OptionError,
    Sink,
    SinkEnv,
    SinkFactory,
    SinkOptions,
    SinkProblem,
)
from falhook_sinks.options import read_options

ENTRY_POINT_GROUP = "falhook.sinks"
S = TypeVar("S")


class SinkSpec(Protocol):
    """One ``[sinks.NAME]`` table: its name, type and the type's own options."""

    @property
    def name(self) -> str: ...

    @property
    def type(self) -> str: ...

    @property
    def options(self) -> Mapping[str, Any]: ...


def load_object(spec: str, key: str, *, folder: Path | None = None) -> Any:
    """Import ``pkg.module:attr`` (attr may be dotted); OptionError naming key on failure.
    A module found nowhere on Python's path is looked for in `folder` (the config file's),
    which then joins the path, after the installed packages."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise OptionError(key, f"{spec!r} must look like 'package.module:attribute'")
    try:
        obj: Any = _import(module_name, folder)
    except ImportError as exc:
        raise OptionError(key, f"cannot import {module_name!r}: {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise OptionError(key, f"{module_name!r} has no attribute {attr!r}") from None
    return obj


def _import(module_name: str, folder: Path | None) -> Any:
    top = module_name.split(".", 1)[0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != top or folder is None:
            raise
        if not ((folder / f"{top}.py").is_file() or (folder / top).is_dir()):
            raise ModuleNotFoundError(
                f"{exc}; not in the config's folder ({folder}) either: put {top}.py there, "
                "or install it (pip install, or PYTHONPATH)",
                name=exc.name,
            ) from None
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
        importlib.invalidate_caches()
    return importlib.import_module(module_name)


def known_types() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def factory_for(sink_type: str, key: str) -> SinkFactory:
    """The factory registered for `sink_type`: built-in types and users' packages alike come
    from the entry-point group, each loaded only when a config uses it (so a missing
    optional dependency matters only to configs that name that type), and checked once
    loaded (`type_problem`)."""
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=sink_type):
        try:
            loaded: SinkFactory = ep.load()
        except OptionError:
            raise
        except Exception as exc:
            raise OptionError(key, f"sink type {sink_type!r} failed to load: {exc}") from None
        problem = type_problem(loaded)
        if problem:
            raise OptionError(key, f"sink type {sink_type!r} ({ep.value}) {problem}")
        return loaded
    raise OptionError(key, f"unknown sink type {sink_type!r} (known: {', '.join(known_types())})")


def type_problem(factory: Any) -> str | None:
    """What is wrong with a loaded sink type, before any sink of it is built."""
    spec = getattr(factory, "options_type", None)
    if spec is not None and not (isinstance(spec, type) and issubclass(spec, SinkOptions)):
        return f"declares options_type {spec!r}, which is not a SinkOptions Struct"
    if isinstance(factory, type) and issubclass(factory, Sink):
        return capability_problem(factory)
    return None


def capability_problem(sink: Any) -> str | None:
    """Capability flags that cannot work together, on a Sink class or any sink object:
    streaming or keeping files needs the files downloaded (``reads_files``), and streaming
    needs ``deliver_streaming``."""
    if not _implements(sink, "deliver"):
        return "does not implement deliver"
    reads = bool(getattr(sink, "reads_files", True))
    for flag in ("streams_files", "keeps_files"):
        if getattr(sink, flag, False) and not reads:
            return f"sets {flag} = True with reads_files = False (it would never get a file)"
    if getattr(sink, "streams_files", False) and not _implements(sink, "deliver_streaming"):
        return "sets streams_files = True but does not implement deliver_streaming"
    if getattr(sink, "takes_batches", False) and _batches_unwritten(sink):
        return "takes batches (a BatchSink) but does not implement deliver_batch"
    return None


def _batches_unwritten(sink: Any) -> bool:
    cls = sink if isinstance(sink, type) else type(sink)
    return isinstance(cls, type) and getattr(cls, "deliver_batch", None) is BatchSink.deliver_batch


def _implements(sink: Any, method: str) -> bool:
    """`sink` (a class or an object) has `method`, other than Sink's placeholder."""
    cls = sink if isinstance(sink, type) else type(sink)
    found = getattr(sink, method, None)
    return callable(found) and getattr(cls, method, None) is not getattr(Sink, method, None)


def build_sink(name: str, sink_type: str, options: Mapping[str, Any], env: SinkEnv) -> Sink:
    """One sink, built and validated (OptionError naming the key when it cannot be)."""
    factory = factory_for(sink_type, f"[sinks.{name}].type")
    return as_sink(construct(factory, name, options, env), f"[sinks.{name}].type")


def construct(
    factory: Callable[[str, Any, SinkEnv], S], name: str, options: Mapping[str, Any], env: SinkEnv
) -> S:
    """`factory(name, options, env)`, its options parsed into the ``options_type`` it
    declares (else passed as a dict); OptionError naming the key when they are wrong or it
    fails."""
    spec: type[SinkOptions] | None = getattr(factory, "options_type", None)
    parsed: Any = read_options(name, spec, options) if spec is not None else dict(options)
    try:
        return factory(name, parsed, env)
    except OptionError:
        raise
    except Exception as exc:
        raise OptionError(f"[sinks.{name}]", f"could not be set up: {exc}") from None


def build_sinks(specs: Iterable[SinkSpec], env: SinkEnv) -> dict[str, Sink]:
    return {spec.name: build_sink(spec.name, spec.type, spec.options, env) for spec in specs}


def as_sink(made: Any, key: str) -> Sink:
    """A Sink, or an object with ``deliver`` (and maybe ``aclose``, ``check``, the capability
    flags, ``deliver_streaming`` and ``deliver_batch``) seen through one: the worker never has
    to ask what an object can do. Flags that cannot work together are refused here, naming
    the sink."""
    if not isinstance(made, Sink) and not callable(getattr(made, "deliver", None)):
        raise OptionError(key, "the factory did not return a sink (an object with deliver)")
    problem = capability_problem(made)
    if problem:
        raise OptionError(key, f"the sink {problem}")
    return made if isinstance(made, Sink) else _Adapted(made)


class _Adapted(Sink):
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.keeps_files = bool(getattr(inner, "keeps_files", False))
        self.reads_files = bool(getattr(inner, "reads_files", True))
        self.streams_files = bool(getattr(inner, "streams_files", False))
        self.shows_posters = bool(getattr(inner, "shows_posters", False))
        self.takes_batches = callable(getattr(inner, "deliver_batch", None))

    async def deliver(self, ctx: DeliveryContext) -> dict[str, Any] | None:
        result = await self.inner.deliver(ctx)
        return result if isinstance(result, dict) else None

    async def deliver_streaming(
        self, ctx: DeliveryContext, files: Sequence[ArrivingFile]
    ) -> dict[str, Any] | None:
        result = await self.inner.deliver_streaming(ctx, files)
        return result if isinstance(result, dict) else None

    async def deliver_batch(self, batch: Sequence[DeliveryContext]) -> list[BatchResult]:
        if not self.takes_batches:
            return await super().deliver_batch(batch)
        return list(await self.inner.deliver_batch(batch))

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
