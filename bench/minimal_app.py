"""A second intake reference: the least a durable, verifying receiver does. It checks fal's
signature (sha256 of the body, one PyNaCl verify) and inserts (request_id, body) into SQLite
(WAL, synchronous=FULL) through one writer thread that commits everything queued at once.
No envelope parsing, no files, no delivery rows, no logs, no metrics, no error bodies.

The issue that set the intake target quotes such a receiver at about 0.28 of the bare app;
bench/intake.py --minimal measures it in the same run, so the gap between it and falhook is
the price of what falhook does beyond it.

    FALHOOK_BENCH_JWKS=http://... FALHOOK_BENCH_DB=/tmp/x.db uvicorn bench.minimal_app:app
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import queue
import sqlite3
import threading
from typing import Any

import httpx
from nacl.exceptions import BadSignatureError

from falhook.intake.keys import parse_jwks

_WANTED = {
    b"x-fal-webhook-request-id",
    b"x-fal-webhook-user-id",
    b"x-fal-webhook-timestamp",
    b"x-fal-webhook-signature",
}


class Writer(threading.Thread):
    """Group commit: every insert queued while the last commit ran shares the next one."""

    def __init__(self, path: str) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.ops: queue.SimpleQueue[tuple[str, bytes, asyncio.Future[None]]] = queue.SimpleQueue()

    def run(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("CREATE TABLE IF NOT EXISTS events (request_id TEXT PRIMARY KEY, body BLOB)")
        while True:
            batch = [self.ops.get()]
            while True:
                try:
                    batch.append(self.ops.get_nowait())
                except queue.Empty:
                    break
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT OR IGNORE INTO events VALUES (?, ?)", [(r, b) for r, b, _ in batch]
            )
            db.execute("COMMIT")
            loop = batch[0][2].get_loop()
            loop.call_soon_threadsafe(_settle, [f for _, _, f in batch])


def _settle(futures: list[asyncio.Future[None]]) -> None:
    for f in futures:
        if not f.done():
            f.set_result(None)


class App:
    def __init__(self) -> None:
        self.keys: tuple[Any, ...] = ()
        self.writer = Writer(os.environ.get("FALHOOK_BENCH_DB", "minimal.db"))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            doc = httpx.get(os.environ["FALHOOK_BENCH_JWKS"]).json()
            self.keys = parse_jwks(doc)
            self.writer.start()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        h = {k.decode(): v.decode() for k, v in scope["headers"] if k in _WANTED}
        rid = h.get("x-fal-webhook-request-id", "")
        message_signed = (
            f"{rid}\n{h.get('x-fal-webhook-user-id')}\n{h.get('x-fal-webhook-timestamp')}\n"
            f"{hashlib.sha256(body).hexdigest()}"
        ).encode()
        status = 401
        try:
            signature = bytes.fromhex(h.get("x-fal-webhook-signature", ""))
            for key in self.keys:
                try:
                    key.verify(message_signed, signature)
                    status = 200
                    break
                except BadSignatureError:
                    continue
        except ValueError:
            pass
        if status == 200:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.writer.ops.put((rid, body, done))
            await done
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})


app = App()
