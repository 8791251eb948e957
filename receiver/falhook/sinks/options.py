"""Deprecated since 0.3.0, removed in 0.4.0: import from ``falhook.sinks``, whose names are
the public sink API (this module's implementation moved to ``falhook_sinks.options``)."""

from __future__ import annotations

import warnings
from typing import Any

import falhook_sinks.options as _moved


def __getattr__(name: str) -> Any:
    warnings.warn(
        f"falhook.sinks.options.{name} is deprecated: import it from falhook.sinks",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(_moved, name)
