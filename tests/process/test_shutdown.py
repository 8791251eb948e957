"""Graceful shutdown: SIGTERM lets in-flight deliveries finish or hands them back. (What the
worker does on stop, grace and hand-back, is tests/inprocess/test_worker.py's, in-process; here the
signal reaches it through `falhook serve`.)"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Callable

import httpx

from falhook.store.models import utcnow
from falhook.testing import FalSigner, webhook_body
from tests.support.falhook_server import Falhook, wait_for
from tests.support.fileserver import FileServer


def test_sigterm_mid_delivery_hands_the_work_back_due_at_once(
    falhook_factory: Callable[..., Falhook], signer: FalSigner, files: FileServer
) -> None:
    fh = falhook_factory(delivery={"shutdown_grace": 0.0, "lease_seconds": 300}).start()
    # The body stops half-way until resumed: the delivery is in flight when SIGTERM arrives.
    files.add("/big.bin", size=1024 * 1024, pause_after=512 * 1024)
    rid, body = webhook_body(str(uuid.uuid4()), payload={"video": {"url": files.url("/big.bin")}})
    httpx.post(fh.url("/webhooks/default"), content=body, headers=signer.headers(body, rid))
    wait_for(lambda: files.hits("/big.bin") >= 1, timeout=30, what="the download to start")
    # uvicorn re-raises the signal after its graceful shutdown, so the status says SIGTERM;
    # what matters is that the worker stopped on its own terms and gave the lease back.
    assert fh.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert '"worker stopped"' in fh.logs()
    view = fh.reader.view(rid)
    assert view is not None
    local = view.deliveries["local"]
    assert (local.state, local.attempts) == ("pending", 0)  # handed back, not counted
    # Due now, not after lease_seconds (300 s): the next worker to look takes it.
    assert local.next_attempt_at is not None and local.next_attempt_at <= utcnow()
