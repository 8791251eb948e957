"""A sink's options declared as data: a msgspec Struct per sink type, read from the
``[sinks.NAME]`` table with errors that name ``[sinks.NAME].option``.

    class DiskOptions(SinkOptions):
        root: str = "falhook-data/files"
        fsync: bool = True

    opts = read_options(name, DiskOptions, options)

Types, defaults and bounds (``Annotated[int, Meta(ge=1)]``) are the declaration; checks that
involve several options go in ``check()``, raising ``Invalid(option, problem)``.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec

from falhook_sinks.base import OptionError


class Invalid(ValueError):
    """Raised by ``SinkOptions.check``: `option` is wrong because of `problem`."""

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(problem)
        self.option = option
        self.problem = problem


class SinkOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of every sink's option Struct: unknown options are errors."""

    def check(self) -> None:
        """Checks across options; raise Invalid(option, problem)."""


T = TypeVar("T", bound=SinkOptions)

_AT = re.compile(r" - at `\$\.?([^`]*)`$")
_FIELD = re.compile(r"field `([^`]+)`")
_EXPECTED = re.compile(r"^Expected `(\w+)`(?: of length ([<>=]+) (\d+))?(?: ([<>=]+) (\S+))?")
_GOT = re.compile(r", got `(\w+)`")
_KINDS = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "array": "a list",
    "object": "a table",
    "null": "nothing",
}


def read_options(sink: str, spec: type[T], options: Mapping[str, Any]) -> T:
    """The options of sink `sink` as a `spec`; OptionError naming the key when they are not."""
    try:
        opts = msgspec.convert(dict(options), spec)
    except msgspec.ValidationError as exc:
        option, problem = _explain(spec, str(exc))
        raise OptionError(option_key(sink, option), problem) from None
    try:
        opts.check()
    except Invalid as exc:
        raise OptionError(option_key(sink, exc.option), exc.problem) from None
    return opts


def option_key(sink: str, option: str | None = None) -> str:
    return f"[sinks.{sink}]" + (f".{option}" if option else "")


def _explain(spec: type[SinkOptions], message: str) -> tuple[str | None, str]:
    """msgspec's message as (option, problem in falhook's words)."""
    at = _AT.search(message)
    path = at.group(1) if at else ""
    text = message[: at.start()] if at else message
    option = re.split(r"[.\[]", path, maxsplit=1)[0] or None
    if text.startswith("Object missing required field"):
        return _field(text), "is required"
    if text.startswith("Object contains unknown field"):
        return _field(text), "unknown option"
    if text.startswith("Invalid enum value"):
        return option, "must be one of " + ", ".join(repr(v) for v in _choices(spec, option))
    expected = _EXPECTED.match(text)
    if expected is None:
        return option, text
    kind, length_op, length, op, bound = expected.groups()
    what = _KINDS.get(kind, kind)
    where = _where(path, option)
    if (length_op, length) == (">=", "1"):
        return option, f"must be a non-empty {what.split(' ', 1)[-1]}{where}"
    if length_op:
        return option, f"must be {what} of length {length_op} {length}{where}"
    if op:
        return option, f"must be {what} {op} {bound}{where}"
    got = _GOT.search(text)
    instead = f", not {_KINDS.get(got.group(1), got.group(1))}" if got else ""
    return option, f"must be {what}{where}{instead}"


def _where(path: str, option: str | None) -> str:
    """Which part of a list or table option is wrong."""
    rest = path[len(option or "") :]
    if not rest:
        return ""
    return " (each value)" if rest.startswith("[...]") else f" (at {rest.lstrip('.')})"


def _field(text: str) -> str | None:
    match = _FIELD.search(text)
    return match.group(1) if match else None


def _choices(spec: type[SinkOptions], option: str | None) -> tuple[Any, ...]:
    info = msgspec.inspect.type_info(spec)
    for f in getattr(info, "fields", ()):
        if f.name == option:
            values = getattr(f.type, "values", None)
            return tuple(values) if values else ()
    return ()


def require_extra(sink: str, sink_type: str, module: str, package: str) -> None:
    """Client libraries are imported lazily, but a missing one stops start-up, naming the
    extra that brings it."""
    if importlib.util.find_spec(module) is None:
        raise OptionError(
            option_key(sink, "type"),
            f"the {sink_type} sink needs {package}: pip install 'falhook[{sink_type}]'",
        )
