"""The registry: a sink type is checked when it is loaded, its table is parsed into the
type's `options_type`, and what it builds is seen through one `Sink`."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Annotated, Any

import pytest
from msgspec import Meta

from falhook_sinks import registry
from falhook_sinks.base import (
    ArrivingFile,
    DeliveryContext,
    OptionError,
    Sink,
    SinkEnv,
    SinkOptions,
)
from falhook_sinks.options import read_options
from falhook_sinks.registry import build_sink, construct

ENV = SinkEnv(base_dir=Path("."))


class PingOptions(SinkOptions):
    url: str
    tries: Annotated[int, Meta(ge=1)] = 3


class Declared(Sink):
    """The built-ins' form: options declared on the class, parsed by the registry."""

    options_type = PingOptions

    def __init__(self, name: str, options: PingOptions, env: SinkEnv) -> None:
        self.options = options

    async def deliver(self, ctx: DeliveryContext) -> None:
        return None


class ReadsItself(Sink):
    """0.2's documented form: the constructor reads its own options from the dict."""

    def __init__(self, name: str, options: dict[str, Any], env: SinkEnv) -> None:
        self.options = read_options(name, PingOptions, options)

    async def deliver(self, ctx: DeliveryContext) -> None:
        return None


class StreamsWithoutMethod(Sink):
    streams_files = True

    def __init__(self, name: str, options: dict[str, Any], env: SinkEnv) -> None:
        pass

    async def deliver(self, ctx: DeliveryContext) -> None:
        return None


class KeepsWithoutReading(StreamsWithoutMethod):
    streams_files = False
    keeps_files = True
    reads_files = False


class StreamsWithoutReading(StreamsWithoutMethod):
    reads_files = False

    async def deliver_streaming(self, ctx: DeliveryContext, files: Sequence[ArrivingFile]) -> None:
        return None


class NoDeliver(Sink):
    def __init__(self, name: str, options: dict[str, Any], env: SinkEnv) -> None:
        pass


class WrongOptionsType(Declared):
    options_type = dict  # type: ignore[assignment]


class DuckStreamer:
    """Not a Sink: an object with deliver and deliver_streaming, as a factory may return."""

    streams_files = True
    reads_files = True

    async def deliver(self, ctx: Any) -> dict[str, Any]:
        return {"whole": True}

    async def deliver_streaming(self, ctx: Any, files: Sequence[Any]) -> dict[str, Any]:
        return {"streamed": len(files)}


class DuckStreamerWithoutMethod:
    streams_files = True

    async def deliver(self, ctx: Any) -> None:
        return None


def duck_factory(name: str, options: dict[str, Any], env: SinkEnv) -> Any:
    return DuckStreamer() if options.get("method", True) else DuckStreamerWithoutMethod()


@pytest.fixture(autouse=True)
def test_types(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sink types registered as a package would register them, under names of their own."""
    names = {
        "declared": "Declared",
        "reads-itself": "ReadsItself",
        "streams-no-method": "StreamsWithoutMethod",
        "keeps-no-reads": "KeepsWithoutReading",
        "streams-no-reads": "StreamsWithoutReading",
        "no-deliver": "NoDeliver",
        "wrong-options": "WrongOptionsType",
        "duck": "duck_factory",
    }
    points = [
        EntryPoint(n, f"{__name__}:{attr}", registry.ENTRY_POINT_GROUP) for n, attr in names.items()
    ]

    def fake(*, group: str, name: str | None = None) -> list[EntryPoint]:
        return [p for p in points if p.group == group and name in (None, p.name)]

    monkeypatch.setattr(registry, "entry_points", fake)


def test_a_declared_options_type_is_parsed_by_the_registry() -> None:
    sink = build_sink("ping", "declared", {"url": "https://x"}, ENV)
    assert isinstance(sink, Declared)
    assert sink.options == PingOptions(url="https://x", tries=3)


def test_parsing_mistakes_name_the_sinks_key() -> None:
    with pytest.raises(OptionError) as err:
        build_sink("ping", "declared", {"url": "https://x", "tris": 2}, ENV)
    assert str(err.value) == "[sinks.ping].tris: unknown option; did you mean tries?"
    with pytest.raises(OptionError, match=r"^\[sinks.ping\].tries: must be an integer >= 1"):
        construct(Declared, "ping", {"url": "https://x", "tries": 0}, ENV)


def test_a_sink_reading_its_own_options_keeps_working() -> None:
    sink = build_sink("ping", "reads-itself", {"url": "https://x", "tries": 5}, ENV)
    assert isinstance(sink, ReadsItself) and sink.options.tries == 5


@pytest.mark.parametrize(
    ("sink_type", "problem"),
    [
        ("streams-no-method", "sets streams_files = True but does not implement deliver_streaming"),
        ("keeps-no-reads", "sets keeps_files = True with reads_files = False"),
        ("streams-no-reads", "sets streams_files = True with reads_files = False"),
        ("no-deliver", "does not implement deliver"),
        ("wrong-options", "declares options_type"),
    ],
)
def test_a_sink_type_whose_capabilities_disagree_is_refused_at_start_up(
    sink_type: str, problem: str
) -> None:
    with pytest.raises(OptionError) as err:
        build_sink("broken", sink_type, {}, ENV)
    assert err.value.key == "[sinks.broken].type"
    assert f"sink type {sink_type!r} ({__name__}:" in err.value.problem
    assert problem in err.value.problem


def test_the_adapter_keeps_a_duck_typed_sinks_streaming() -> None:
    sink = build_sink("duck", "duck", {}, ENV)
    assert sink.streams_files and sink.reads_files and not isinstance(sink, DuckStreamer)
    out = asyncio.run(sink.deliver_streaming(None, ["a", "b"]))  # type: ignore[arg-type]
    assert out == {"streamed": 2}


def test_a_duck_typed_sink_streaming_without_the_method_is_refused() -> None:
    with pytest.raises(OptionError) as err:
        build_sink("duck", "duck", {"method": False}, ENV)
    assert err.value.key == "[sinks.duck].type"
    assert "does not implement deliver_streaming" in err.value.problem
