"""Custom Python sinks: ``type = "python"`` with ``handler = "pkg.mod:attr"``.

``pkg`` is imported from Python's path, or else from the config file's folder (a
``mysink.py`` beside ``falhook.toml`` is ``handler = "mysink:handle"``).

The other options of ``[sinks.NAME]`` become keyword arguments, checked against the
handler's signature at start-up (a missing one, or one it does not take, is a OptionError
naming ``[sinks.NAME].option``). ``attr`` is one of:

- an async function ``async def handle(ctx, *, opt1, opt2="x")``: called per delivery with
  the context and the options;
- a factory (a class or a plain function) ``Factory(*, opt1, opt2="x")``, called once at
  start-up, returning a sink (an object with ``async def deliver(ctx)``, optionally
  ``async def aclose()``) or an async function of ``ctx``. It may raise ValueError or
  TypeError to reject its options; falhook then refuses to start and names the sink.

``as_sink_factory(attr)`` turns the same handler into a ``factory(name, options, env)`` for
the ``falhook.sinks`` entry-point group, so a packaged handler is used by its ``type``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from falhook_sinks.base import DeliveryContext, OptionError, Sink, SinkEnv, SinkFactory
from falhook_sinks.options import SinkPlace
from falhook_sinks.registry import as_sink, load_object


class FunctionSink(Sink):
    """An async handler function with its options bound once, at start-up."""

    def __init__(self, func: Callable[..., Any], options: dict[str, Any]) -> None:
        self.func = func
        self.options = options

    async def deliver(self, ctx: DeliveryContext) -> dict[str, Any] | None:
        result = await self.func(ctx, **self.options)
        return result if isinstance(result, dict) else None


class CallableSink(Sink):
    """An async callable of ``ctx`` returned by a user's factory (closures, partials)."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func

    async def deliver(self, ctx: DeliveryContext) -> dict[str, Any] | None:
        result = await self.func(ctx)
        return result if isinstance(result, dict) else None


def python_sink(name: str, options: dict[str, Any], env: SinkEnv) -> Sink:
    """The ``type = "python"`` factory: ``handler`` names the target, every other option is
    the handler's."""
    rest = dict(options)
    spec = rest.pop("handler", None)
    key = f"[sinks.{name}].handler"
    if spec is None:
        raise OptionError(key, "is required")
    if not isinstance(spec, str) or not spec:
        raise OptionError(key, "must be a non-empty string")
    return build(name, load_object(spec, key, folder=env.base_dir), rest, handler_key=key)


def as_sink_factory(target: Any) -> SinkFactory:
    """A registry factory for a handler, for packages using the ``falhook.sinks`` group."""

    def factory(name: str, options: dict[str, Any], env: SinkEnv) -> Sink:
        return build(name, target, dict(options), handler_key=f"[sinks.{name}].type")

    return factory


def build(name: str, target: Any, options: dict[str, Any], *, handler_key: str) -> Sink:
    if not callable(target):
        raise OptionError(handler_key, "must name an async function or a factory")
    if inspect.iscoroutinefunction(target):
        _check_options(name, target, options, handler_key, skip_first=True)
        return FunctionSink(target, options)
    _check_options(name, target, options, handler_key, skip_first=False)
    try:
        made = target(**options)
    except (ValueError, TypeError) as exc:
        raise OptionError(f"[sinks.{name}]", f"rejected by the handler: {exc}") from None
    if callable(getattr(made, "deliver", None)):
        return as_sink(made, handler_key)
    if callable(made) and inspect.iscoroutinefunction(made):
        return CallableSink(made)
    raise OptionError(handler_key, "the factory returned neither a sink nor an async function")


def _check_options(
    name: str, target: Any, options: dict[str, Any], handler_key: str, *, skip_first: bool
) -> None:
    """Missing and unknown options, named by key, before anything runs."""
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature: nothing to check
        return
    if skip_first:
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        if not params or params[0].kind not in positional:
            raise OptionError(handler_key, "an async handler must take the context first")
        params = params[1:]
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    named = {
        p.name: p
        for p in params
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    }
    for p in named.values():
        if p.default is inspect.Parameter.empty and p.name not in options:
            raise OptionError(f"[sinks.{name}].{p.name}", "is required")
    if not takes_any:
        for key in options:
            if key not in named:
                problem = SinkPlace(name).unknown((key,), list(named))
                raise OptionError(f"[sinks.{name}].{key}", problem)
    extra = [
        p.name
        for p in params
        if p.kind is inspect.Parameter.POSITIONAL_ONLY and p.default is inspect.Parameter.empty
    ]
    if extra:
        raise OptionError(handler_key, f"takes positional-only parameters {extra}")
