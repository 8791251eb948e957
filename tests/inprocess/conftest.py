"""The in-process tier: falhook's app through httpx's ASGI transport or uvicorn in a thread,
real stores (SQLite and PostgreSQL), real loopback servers and brokers; no processes of its
own. `pytest tests/unit tests/inprocess -m "not slow"` is the fast loop while editing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.tiers import guard


@pytest.fixture(autouse=True)
def inprocess_tier() -> Iterator[None]:
    yield from guard("in-process", network=True)
