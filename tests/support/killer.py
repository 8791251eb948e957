"""A `type = "python"` sink that kills its own process (SIGKILL) the first time it runs: put
`after = ["other"]` on it and it dies after `other` has delivered and before the worker
records that, the window a crash test needs, without a hook in falhook's code."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from falhook_sinks.base import DeliveryContext


async def kill_once(ctx: DeliveryContext, *, marker: str) -> dict[str, Any]:
    path = Path(marker)
    if not path.exists():
        path.write_text(ctx.event.request_id)
        os.kill(os.getpid(), signal.SIGKILL)
    return {"killed": False}
