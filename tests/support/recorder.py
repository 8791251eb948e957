"""Python handlers for routing tests, loaded as `type = "python"` sinks in the test process:
`record` keeps every context it is called with (by `key`, one per test), `refuse` fails every
attempt permanently, as a target answering 400 would."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import structlog

from falhook_sinks.base import DeliveryContext, Permanent

RECEIVED: defaultdict[str, list[DeliveryContext]] = defaultdict(list)
# What every log line written during the call carries besides its own keys.
LOG_CONTEXT: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)


async def record(ctx: DeliveryContext, *, key: str) -> dict[str, Any]:
    RECEIVED[key].append(ctx)
    LOG_CONTEXT[key].append(structlog.contextvars.get_contextvars())
    return {"recorded": ctx.event.request_id}


async def refuse(ctx: DeliveryContext, *, key: str = "") -> None:
    if key:
        RECEIVED[key].append(ctx)
    raise Permanent("target answered 400: bad request")
