"""type = "python": handlers load at start-up, options are checked by name, both forms run."""

from __future__ import annotations

import sys
import types
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog

from falhook_sinks.base import DeliveryContext, EventInfo, OptionError, Retryable, SinkEnv
from falhook_sinks.python import as_sink_factory, python_sink

ENV = SinkEnv(base_dir=Path("."))


def _ctx() -> DeliveryContext:
    event = EventInfo(
        request_id="req-9",
        route="default",
        fal_status="OK",
        error=None,
        payload_error=None,
        payload={},
        gateway_request_id=None,
        received_at=datetime(2026, 1, 1, tzinfo=UTC),
        files=[],
        file_problems=[],
    )
    return DeliveryContext(
        event=event, files=[], sink="mine", attempt=1, log=structlog.get_logger()
    )


@pytest.fixture
def module() -> Any:
    """A throwaway module holding handlers of every shape, importable by name."""
    mod = types.ModuleType("falhook_test_handlers")

    async def handle(ctx: DeliveryContext, *, greeting: str, times: int = 1) -> dict[str, Any]:
        return {"said": greeting * times, "rid": ctx.event.request_id}

    async def no_options(ctx: DeliveryContext) -> None:
        return None

    async def flaky(ctx: DeliveryContext) -> None:
        raise Retryable("later", retry_after=3)

    class Counter:
        def __init__(self, *, start: int) -> None:
            if start < 0:
                raise ValueError("start must be >= 0")
            self.n = start

        async def deliver(self, ctx: DeliveryContext) -> dict[str, Any]:
            self.n += 1
            return {"n": self.n}

    def closure_factory(*, prefix: str) -> Any:
        async def deliver(ctx: DeliveryContext) -> dict[str, Any]:
            return {"key": prefix + ctx.event.request_id}

        return deliver

    def bad_factory() -> int:
        return 3

    async def kw_only_ctx(*, ctx: DeliveryContext) -> None:
        return None

    for obj in (handle, no_options, flaky, Counter, closure_factory, bad_factory, kw_only_ctx):
        setattr(mod, obj.__name__, obj)
    mod.not_callable = 42
    sys.modules[mod.__name__] = mod
    yield mod
    del sys.modules[mod.__name__]


def _spec(attr: str) -> str:
    return f"falhook_test_handlers:{attr}"


async def test_async_function_gets_its_options(module: Any) -> None:
    sink = python_sink("mine", {"handler": _spec("handle"), "greeting": "hi", "times": 2}, ENV)
    assert await sink.deliver(_ctx()) == {"said": "hihi", "rid": "req-9"}


async def test_function_returning_none_is_delivered_without_output(module: Any) -> None:
    sink = python_sink("mine", {"handler": _spec("no_options")}, ENV)
    assert await sink.deliver(_ctx()) is None


async def test_errors_pass_through_to_the_worker(module: Any) -> None:
    sink = python_sink("mine", {"handler": _spec("flaky")}, ENV)
    with pytest.raises(Retryable) as err:
        await sink.deliver(_ctx())
    assert err.value.retry_after == 3


async def test_class_factory_is_built_once(module: Any) -> None:
    sink = python_sink("mine", {"handler": _spec("Counter"), "start": 5}, ENV)
    assert await sink.deliver(_ctx()) == {"n": 6}
    assert await sink.deliver(_ctx()) == {"n": 7}


async def test_factory_returning_an_async_function(module: Any) -> None:
    sink = python_sink("mine", {"handler": _spec("closure_factory"), "prefix": "p/"}, ENV)
    assert await sink.deliver(_ctx()) == {"key": "p/req-9"}


async def test_entry_point_adapter_uses_the_same_rules(module: Any) -> None:
    factory = as_sink_factory(module.handle)
    sink = factory("mine", {"greeting": "yo"}, ENV)
    assert (await sink.deliver(_ctx()))["said"] == "yo"
    with pytest.raises(OptionError, match=r"\[sinks.mine\].greeting"):
        factory("mine", {}, ENV)


@pytest.mark.parametrize(
    ("options", "key", "problem"),
    [
        ({}, "[sinks.mine].handler", "is required"),
        ({"handler": "no_colon"}, "[sinks.mine].handler", "package.module:attribute"),
        ({"handler": "no_such_pkg_xyz.mod:f"}, "[sinks.mine].handler", "cannot import"),
        ({"handler": _spec("missing")}, "[sinks.mine].handler", "has no attribute"),
        ({"handler": _spec("not_callable")}, "[sinks.mine].handler", "async function"),
        ({"handler": _spec("handle")}, "[sinks.mine].greeting", "is required"),
        (
            {"handler": _spec("handle"), "greeting": "x", "tims": 2},
            "[sinks.mine].tims",
            "unknown option; did you mean times?",
        ),
        ({"handler": _spec("no_options"), "extra": 1}, "[sinks.mine].extra", "unknown option"),
        ({"handler": _spec("Counter")}, "[sinks.mine].start", "is required"),
        ({"handler": _spec("Counter"), "start": -1}, "[sinks.mine]", "start must be >= 0"),
        ({"handler": _spec("bad_factory")}, "[sinks.mine].handler", "neither a sink"),
        ({"handler": _spec("kw_only_ctx")}, "[sinks.mine].handler", "context first"),
    ],
)
def test_start_up_errors_name_the_key(
    module: Any, options: dict[str, Any], key: str, problem: str
) -> None:
    with pytest.raises(OptionError) as err:
        python_sink("mine", options, ENV)
    assert err.value.key == key
    assert problem in err.value.problem


@pytest.fixture
def config_folder(tmp_path: Path) -> Any:
    """A config's folder holding a handler module (and a helper it imports), as a user
    writes them; the modules and the path entry are gone after the test."""
    name = f"mysink_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}_helpers.py").write_text("SUFFIX = '!'\n")
    (tmp_path / f"{name}.py").write_text(
        f"from {name}_helpers import SUFFIX\n\n"
        "async def handle(ctx, *, word):\n"
        "    return {'said': word + SUFFIX}\n"
    )
    path_before = list(sys.path)
    yield tmp_path, name
    sys.path[:] = path_before
    for mod in (name, f"{name}_helpers"):
        sys.modules.pop(mod, None)


async def test_a_handler_module_beside_the_config_is_importable(config_folder: Any) -> None:
    folder, name = config_folder
    sink = python_sink("mine", {"handler": f"{name}:handle", "word": "hi"}, SinkEnv(folder))
    assert await sink.deliver(_ctx()) == {"said": "hi!"}
    assert sys.path[-1] == str(folder)  # after the installed packages: they win on a clash


def test_a_handler_found_nowhere_names_the_folders_looked_in(tmp_path: Path) -> None:
    with pytest.raises(OptionError) as err:
        python_sink("mine", {"handler": "no_such_mod_xyz:handle"}, SinkEnv(tmp_path))
    assert err.value.key == "[sinks.mine].handler"
    assert "no_such_mod_xyz" in err.value.problem
    assert f"the config's folder ({tmp_path})" in err.value.problem
    assert str(tmp_path) not in sys.path  # nothing there: the path is left alone


def test_a_missing_dependency_of_the_handler_is_reported_as_such(tmp_path: Path) -> None:
    name = f"needs_dep_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text("import not_installed_anywhere_xyz\n")
    try:
        with pytest.raises(OptionError, match="not_installed_anywhere_xyz"):
            python_sink("mine", {"handler": f"{name}:handle"}, SinkEnv(tmp_path))
    finally:
        sys.modules.pop(name, None)
        if str(tmp_path) in sys.path:
            sys.path.remove(str(tmp_path))
