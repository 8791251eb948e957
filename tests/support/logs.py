"""Capturing falhook's log events in a test. falhook's logging config caches each module's
logger on first use, and a cached logger bypasses structlog's capture_logs: so the modules
whose lines a test reads get fresh logger proxies for the capture."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import structlog
from structlog.testing import capture_logs


@contextmanager
def captured(*modules: ModuleType) -> Iterator[list[MutableMapping[str, Any]]]:
    saved = [(module, module.log) for module in modules]
    for module in modules:
        module.log = structlog.get_logger(module.__name__)
    try:
        with capture_logs() as logs:
            yield logs
    finally:
        for module, logger in saved:
            module.log = logger
