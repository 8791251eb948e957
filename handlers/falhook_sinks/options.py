"""A sink's options declared as data: a ``SinkOptions`` Struct per sink type, read from the
``[sinks.NAME]`` table with errors that name ``[sinks.NAME].option``.

    class DiskOptions(SinkOptions):
        root: str = "falhook-data/files"
        fsync: bool = True

    class DiskSink(Sink):
        options_type = DiskOptions           # the registry reads the table into it

Types, defaults and bounds (``Annotated[int, Meta(ge=1)]``) are the declaration; checks that
involve several options go in ``check()``, raising ``Invalid(option, problem)``. The reading
and the messages are falhook_sinks.tables', the same as for falhook's own settings.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any, TypeVar

from falhook_sinks.base import OptionError, SinkOptions
from falhook_sinks.tables import Invalid, Place, read_table

__all__ = ["Invalid", "SinkOptions", "option_key", "read_options", "require_extra"]

T = TypeVar("T", bound=SinkOptions)


class SinkPlace(Place):
    """Where a sink's options are: ``[sinks.NAME].option``."""

    def __init__(self, sink: str) -> None:
        self.sink = sink

    def key(self, path: tuple[str, ...]) -> str:
        return option_key(self.sink, ".".join(path))

    def noun(self, path: tuple[str, ...]) -> str:
        return "option"

    def error(self, key: str, problem: str) -> Exception:
        return OptionError(key, problem)


def read_options(sink: str, spec: type[T], options: Mapping[str, Any]) -> T:
    """The options of sink `sink` as a `spec`; OptionError naming the key when they are not."""
    return read_table(dict(options), spec, SinkPlace(sink))


def option_key(sink: str, option: str | None = None) -> str:
    return f"[sinks.{sink}]" + (f".{option}" if option else "")


def require_extra(sink: str, sink_type: str, module: str, package: str) -> None:
    """Client libraries are imported lazily, but a missing one stops start-up, naming the
    extra that brings it."""
    if importlib.util.find_spec(module) is None:
        raise OptionError(
            option_key(sink, "type"),
            f"the {sink_type} sink needs {package}: pip install 'falhook[{sink_type}]'",
        )
