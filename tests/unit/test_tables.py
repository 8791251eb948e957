"""The one loader and error mapper (falhook_sinks.tables) behind falhook's settings and every
sink's options: each kind of message, pinned, and none of them read from msgspec's English."""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import pytest
from msgspec import Meta

from falhook.config import ConfigError, settings_from_dict
from falhook_sinks.base import OptionError, SinkOptions
from falhook_sinks.options import Invalid, read_options


class Inner(SinkOptions):
    name: str
    size: Annotated[int, Meta(ge=1)] = 1


class Demo(SinkOptions):
    url: Annotated[str, Meta(min_length=1, examples=["https://a.example"])]
    enabled: bool = True
    count: Annotated[int, Meta(ge=1)] = 1
    ratio: Annotated[float, Meta(gt=0, lt=1)] = 0.5
    page: Annotated[int, Meta(ge=1, le=500)] = 50
    step: Annotated[int, Meta(multiple_of=4)] = 4
    factor: float = 1.0
    mode: Literal["fast", "safe"] = "safe"
    limit: Annotated[int, Meta(ge=1)] | None = None
    either: int | str | None = None
    tag: Annotated[str, Meta(max_length=8)] = "x"
    code: Annotated[str, Meta(pattern="^[a-z]+$")] = "abc"
    host: Annotated[str, Meta(pattern="^[^/]+$", description="a host name")] = "h"
    command: Annotated[list[str], Meta(min_length=1)] = msgspec.field(default_factory=lambda: ["x"])
    pair: Annotated[list[int], Meta(min_length=2, max_length=3)] = msgspec.field(
        default_factory=lambda: [1, 2]
    )
    headers: dict[str, str] = {}
    inner: Inner | None = None
    items: list[Inner] = []
    low: int = 0
    high: int = 1
    anything: Any = None

    def check(self) -> None:
        if self.high < self.low:
            raise Invalid("high", "must be >= low")


class Dated(SinkOptions):
    when: datetime | None = None


def problem(options: dict[str, Any], spec: type[SinkOptions] = Demo) -> str:
    with pytest.raises(OptionError) as err:
        read_options("demo", spec, {"url": "https://a.example", **options})
    return str(err.value)


def config_problem(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as err:
        settings_from_dict(raw, base_dir=Path("."))
    return str(err.value)


MESSAGES = [
    # missing and unknown
    ({"url": msgspec.UNSET}, '[sinks.demo].url: is required (e.g. "https://a.example")'),
    ({"mdoe": "fast"}, "[sinks.demo].mdoe: unknown option; did you mean mode?"),
    ({"zzz": 1}, "[sinks.demo].zzz: unknown option"),
    # wrong type, one per kind
    ({"enabled": "yes"}, "[sinks.demo].enabled: must be true or false, not a string"),
    ({"enabled": 1}, "[sinks.demo].enabled: must be true or false, not 1"),
    ({"count": "3"}, "[sinks.demo].count: must be an integer, not a string"),
    ({"count": 2.5}, "[sinks.demo].count: must be an integer, not 2.5"),
    ({"count": True}, "[sinks.demo].count: must be an integer, not true"),
    ({"factor": "2"}, "[sinks.demo].factor: must be a number, not a string"),
    ({"factor": False}, "[sinks.demo].factor: must be a number, not false"),
    ({"url": 3}, "[sinks.demo].url: must be a string, not 3"),
    ({"url": ["a"]}, "[sinks.demo].url: must be a string, not a list"),
    ({"url": datetime(2026, 1, 1)}, "[sinks.demo].url: must be a string, not a date and time"),
    ({"command": "ffmpeg -i x"}, "[sinks.demo].command: must be a list of strings, not a string"),
    ({"headers": ["a"]}, "[sinks.demo].headers: must be a table of strings, not a list"),
    ({"inner": "x"}, "[sinks.demo].inner: must be a table, not a string"),
    ({"mode": 3}, '[sinks.demo].mode: must be one of "fast", "safe"'),
    ({"either": 1.5}, "[sinks.demo].either: must be an integer or a string, not 1.5"),
    # bounds
    ({"count": 0}, "[sinks.demo].count: must be an integer >= 1, not 0"),
    ({"ratio": 0}, "[sinks.demo].ratio: must be a number > 0 and < 1, not 0"),
    ({"ratio": 1.5}, "[sinks.demo].ratio: must be a number > 0 and < 1, not 1.5"),
    ({"page": 501}, "[sinks.demo].page: must be an integer from 1 to 500, not 501"),
    ({"step": 6}, "[sinks.demo].step: must be an integer (a multiple of 4), not 6"),
    ({"limit": 0}, "[sinks.demo].limit: must be an integer >= 1, not 0"),
    ({"factor": math.nan}, "[sinks.demo].factor: must be a finite number"),
    ({"ratio": math.inf}, "[sinks.demo].ratio: must be a finite number"),
    # lengths and patterns
    ({"url": ""}, "[sinks.demo].url: must be a non-empty string"),
    ({"tag": "123456789"}, "[sinks.demo].tag: must be a string of at most 8 characters"),
    ({"command": []}, "[sinks.demo].command: must be a non-empty list of strings"),
    ({"pair": [1]}, "[sinks.demo].pair: must be a list of 2 to 3 items of integers"),
    ({"code": "ABC"}, "[sinks.demo].code: must be a string matching '^[a-z]+$'"),
    ({"host": "a/b"}, "[sinks.demo].host: must be a host name"),
    # enum
    ({"mode": "always"}, '[sinks.demo].mode: must be one of "fast", "safe"'),
    # inside lists and tables
    ({"command": ["ffmpeg", 3]}, "[sinks.demo].command: [1] must be a string, not 3"),
    ({"headers": {"x-a": 1}}, '[sinks.demo].headers: "x-a" must be a string, not 1'),
    (
        {"inner": {"name": "a", "size": 0}},
        "[sinks.demo].inner.size: must be an integer >= 1, not 0",
    ),
    ({"inner": {"size": 2}}, "[sinks.demo].inner.name: is required"),
    (
        {"items": [{"name": "a"}, {"name": 3}]},
        "[sinks.demo].items: [1].name must be a string, not 3",
    ),
    # rules across fields
    ({"low": 5, "high": 1}, "[sinks.demo].high: must be >= low"),
]


@pytest.mark.parametrize(("options", "message"), MESSAGES, ids=[m for _, m in MESSAGES])
def test_every_kind_of_mistake_has_its_message(options: dict[str, Any], message: str) -> None:
    given = {"url": "https://a.example", **options}
    given = {k: v for k, v in given.items() if v is not msgspec.UNSET}
    with pytest.raises(OptionError) as err:
        read_options("demo", Demo, given)
    assert str(err.value) == message
    assert err.value.key == message.split(": ", 1)[0]


@pytest.mark.parametrize(("options", "message"), MESSAGES, ids=[m for _, m in MESSAGES])
def test_messages_do_not_depend_on_msgspecs_wording(
    options: dict[str, Any], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """msgspec may word its errors differently in a later version: the messages are worked
    out from the Struct's types and the value, so they stay the same."""
    real = msgspec.convert

    def reworded(obj: Any, spec: Any, **kwargs: Any) -> Any:
        try:
            return real(obj, spec, **kwargs)
        except msgspec.ValidationError:
            raise msgspec.ValidationError("Ungültiger Wert (at somewhere else)") from None

    monkeypatch.setattr(msgspec, "convert", reworded)
    given = {"url": "https://a.example", **options}
    given = {k: v for k, v in given.items() if v is not msgspec.UNSET}
    with pytest.raises(OptionError) as err:
        read_options("demo", Demo, given)
    assert str(err.value) == message


def test_a_type_the_mapper_does_not_describe_falls_back_to_msgspecs_path() -> None:
    with pytest.raises(OptionError) as err:
        read_options("demo", Dated, {"when": "yesterday"})
    assert err.value.key == "[sinks.demo].when"
    assert err.value.problem.startswith("is not valid (")


def test_a_valid_table_reads_into_its_struct() -> None:
    got = read_options("demo", Demo, {"url": "u", "ratio": 1 / 3, "inner": {"name": "n"}})
    assert got.inner == Inner(name="n") and got.ratio == pytest.approx(1 / 3)
    assert isinstance(read_options("demo", Demo, {"url": "u", "factor": 2}).factor, float)


# --- the same mapper for falhook's own sections ----------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"delivry": {}}, "[delivry]: unknown section; did you mean [delivery]?"),
        ({"nope": {}}, "[nope]: unknown section (known: console, delivery, downloads,"),
        ({"delivery": {"max_attemps": 3}}, "[delivery].max_attemps: unknown key; did you mean"),
        ({"delivery": 3}, "[delivery]: must be a table, not 3"),
        ({"delivery": {"max_attempts": 0}}, "[delivery].max_attempts: must be an integer >= 1"),
        ({"console": {"page_size": 501}}, "[console].page_size: must be an integer from 1 to 500"),
        ({"telemetry": {"enabled": "yes"}}, "[telemetry].enabled: must be true or false, not a"),
        ({"serverless": {"mode": "x"}}, '[serverless].mode: must be one of "enqueue", "inline"'),
        ({"receiver": {"allowed_user_ids": [1]}}, "[receiver].allowed_user_ids: [0] must be a"),
        ({"submit": {"schemas": {"a/b": 1}}}, '[submit].schemas: "a/b" must be a string, not 1'),
        ({"receiver": {"public_url": "x"}}, "[receiver].public_url: must be a URL starting with"),
        ({"downloads": {"fal_media_hosts": ["a/b"]}}, "[downloads].fal_media_hosts: [0] must be"),
        ({"store": {"schema": "Up"}}, "[store].schema: must be lower-case letters, digits and"),
        ({"delivery": {"backoff_initial": 9, "backoff_max": 1}}, "[delivery].backoff_max: must"),
        ({"sinks": {"a b": {"type": "disk"}}}, "[sinks.a b]: the name must be 1 to 64 letters"),
        ({"sinks": {"x": {}}}, '[sinks.x].type: is required (e.g. "disk", "s3"'),
        ({"sinks": 3}, "[sinks]: must be a table of [sinks.NAME] tables, not 3"),
        ({"routes": {"r": {"sink": ["x"]}}}, "[routes.r].sink: unknown key; did you mean sinks?"),
        ({"routes": {"r": {"sinks": "x"}}}, "[routes.r].sinks: must be a non-empty list of sink"),
    ],
)
def test_settings_mistakes_use_the_same_messages(raw: dict[str, Any], message: str) -> None:
    assert config_problem(raw).startswith(message)


def test_nan_and_inf_are_refused_where_a_number_is_expected() -> None:
    assert config_problem({"delivery": {"poll_interval": math.inf}}) == (
        "[delivery].poll_interval: must be a finite number"
    )
    assert config_problem({"delivery": {"backoff_max": math.nan}}) == (
        "[delivery].backoff_max: must be a finite number"
    )


def test_nan_is_left_alone_where_any_value_is_allowed(tmp_path: Path) -> None:
    """A sink's options beyond its declared ones (a python handler's) are not checked here."""
    raw = {"sinks": {"x": {"type": "python", "handler": "m:f", "ratio": math.nan}}}
    settings = settings_from_dict(raw, base_dir=tmp_path)
    assert math.isnan(settings.sinks["x"].options["ratio"])
