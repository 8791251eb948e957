"""How much Python a call runs, counted in executed lines: a measure of work that, unlike
seconds, does not depend on what else the machine is doing. Tests use it to show that work
grows linearly with the input (time is measured by bench/, never asserted in tests)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import FrameType
from typing import Any


def count_lines(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """Lines of Python executed by fn(*args, **kwargs), in every function it calls."""
    count = 0

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return tracer

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        fn(*args, **kwargs)
    finally:
        sys.settrace(previous)
    return count
