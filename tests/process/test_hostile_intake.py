"""Hostile webhooks: bodies built to break the parser, bodies that never finish, payloads
with thousands of Files. Each gets the contract's answer; nothing crashes, nothing stalls."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from falhook.testing import FalSigner
from tests.inprocess.test_hostile_intake import signed
from tests.support.falhook_server import Falhook, wait_for


def open_request(port: int, length: int, headers: dict[str, str] | None = None) -> socket.socket:
    """A POST whose head says `length` bytes of body, with none of them sent yet."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    lines = [
        "POST /webhooks/default HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: application/json",
        f"Content-Length: {length}",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


@pytest.mark.one_store("the body is read before the store is involved")
def test_a_body_trickled_at_one_byte_a_second_gets_408_and_the_connection_closes(
    falhook_factory: Callable[..., Falhook], signer: FalSigner
) -> None:
    fh = falhook_factory(receiver={"body_timeout": 1.0, "body_min_rate": 1024.0}).start()
    rid = str(uuid.uuid4())
    raw = json.dumps({"request_id": rid, "status": "OK", "payload": None}).encode()
    sock = open_request(fh.port, len(raw), signed(signer, raw, rid))
    sock.settimeout(1.0)  # one byte a second, and a look for the answer in between
    answer, closed = b"", False
    try:
        for byte in raw:  # bounded by the body's length; the server ends it first
            try:
                sock.sendall(bytes([byte]))
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:  # reset: the server closed the connection
                closed = True
                break
            if not chunk:
                closed = True
                break
            answer += chunk
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"connection: close" in answer.lower()
    assert b'"error":"body_timeout"' in answer
    assert closed


def unread_bytes(port: int) -> int:
    """Bytes the kernel holds for the server's connections on `port` that it has not read
    yet (Linux's /proc/net/tcp: the rx_queue of each established socket)."""
    unread = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, queues = fields[1], fields[3], fields[4]
        if int(local.split(":")[1], 16) == port and state == "01":  # ESTABLISHED
            unread += int(queues.split(":")[1], 16)
    return unread


def held_body_bytes(fh: Falhook) -> float:
    text = httpx.get(fh.url("/metrics"), timeout=10).text
    [line] = [ln for ln in text.splitlines() if ln.startswith("falhook_unfinished_body_bytes ")]
    return float(line.split()[1])


@pytest.mark.one_store("the body is read before the store is involved")
def test_unsigned_bodies_one_byte_short_of_the_limit_hold_no_memory(
    falhook_factory: Callable[..., Falhook], signer: FalSigner
) -> None:
    """100 unsigned requests, each one byte short of max_body_bytes and never finished: a
    bad signature needs no body, so they keep none of it, and a real webhook as large as
    the whole budget still gets through while they hang."""
    limit = 256 * 1024
    fh = falhook_factory(
        receiver={"max_body_bytes": limit, "max_buffered_bytes": limit, "body_timeout": 60.0}
    ).start()
    socks = []
    try:
        for _ in range(100):
            sock = open_request(fh.port, limit)
            sock.sendall(b"x" * (limit - 1))
            socks.append(sock)
        # The server has read every byte sent (not just the kernel): only then does "holds
        # nothing" say something.
        wait_for(lambda: unread_bytes(fh.port) == 0, timeout=30, what="the bodies to be read")
        assert held_body_bytes(fh) == 0
        rid = str(uuid.uuid4())
        raw = json.dumps({"request_id": rid, "status": "OK", "payload": None}).encode()
        raw = raw[:-1] + b" " * (limit - len(raw)) + b"}"  # exactly max_body_bytes
        resp = httpx.post(
            fh.url("/webhooks/default"), content=raw, headers=signed(signer, raw, rid), timeout=30
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["status"] == "accepted"
    finally:
        for sock in socks:
            sock.close()
