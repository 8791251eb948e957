"""The unit tier: pure logic, in milliseconds. No network, no processes, no store server;
files only under tmp_path. `pytest tests/unit` runs it alone."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.tiers import guard


@pytest.fixture(autouse=True)
def unit_tier() -> Iterator[None]:
    yield from guard("unit", network=False)
