"""Scale-out on PostgreSQL: two receivers (`falhook serve --no-worker`) and three `falhook
worker` processes on one database, concurrent signed webhooks to both receivers, files served
slowly so deliveries are in flight, and one worker killed with SIGKILL while it holds leases.
Every accepted event ends delivered, once, and the killed worker's leases are taken over by
the others."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from falhook.testing import FalSigner, webhook_body
from tests.support.falhook_server import Falhook, wait_for
from tests.support.fileserver import FileServer
from tests.support.stores import PG_URL

EVENTS = 80  # bounded load: the senders stop by themselves
SENDERS = 8
FILE_BYTES = 96 * 1024
FILE_RATE = 192 * 1024  # bytes/s: about half a second per download, so leases are in flight
LEASE_SECONDS = 4  # how long the killed worker's leases outlive it
VICTIM_DELIVERS_FIRST = 5  # the victim is killed once it has delivered this many


def pg_fetch(schema: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """One query on the test's schema, from synchronous test code."""

    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(PG_URL, timeout=10, server_settings={"search_path": schema})
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


def log_lines(fh: Falhook) -> list[dict[str, Any]]:
    return [json.loads(line) for line in fh.logs().splitlines() if line.startswith("{")]


def delivered_lines(fh: Falhook) -> list[tuple[bool, str]]:
    """(lease lost, request id) of each delivery a worker's log says it recorded: the ids of
    the deliveries recorded together share one line, and one whose lease was lost has a
    line of its own."""
    found = []
    for line in log_lines(fh):
        if line.get("event") == "deliveries recorded":
            found += [(False, rid) for rid in line.get("delivered", {}).get("local", [])]
        elif line.get("event") == "delivery delivered" and line.get("lease_lost"):
            found.append((True, line["request_id"]))
    return found


def owner_of(worker: Falhook) -> str | None:
    for line in log_lines(worker):
        if line.get("event") == "worker started":
            return str(line["owner"])
    return None


def content(rid: str) -> bytes:
    return (rid.encode() * (FILE_BYTES // len(rid) + 1))[:FILE_BYTES]


@pytest.mark.slow
@pytest.mark.one_store("several processes sharing one database", backend="postgres")
def test_two_receivers_three_workers_one_killed_mid_delivery(
    falhook_factory: Callable[..., Falhook],
    signer: FalSigner,
    files: FileServer,
    store_section: dict[str, str],
) -> None:
    schema = store_section["schema"]
    delivery = {"lease_seconds": LEASE_SECONDS, "concurrency": 4}
    receivers = [
        falhook_factory(name=f"receiver-{n}", command=("serve", "--no-worker"), delivery=delivery)
        for n in "ab"
    ]
    workers = [
        falhook_factory(name=f"worker-{n}", command=("worker",), delivery=delivery)
        for n in (1, 2, 3)
    ]
    for proc in receivers + workers:  # all five start at once
        proc.start(wait=False)
    for r in receivers:
        r.wait_healthy()
    owners: dict[str, Falhook] = {}
    for w in workers:
        owner = wait_for(lambda w=w: owner_of(w), timeout=30, what=f"{w.log_path.name} to start")
        owners[owner] = w
    victim, survivors = workers[0], workers[1:]
    victim_owner = next(o for o, w in owners.items() if w is victim)

    # --- concurrent signed webhooks to both receivers ------------------------------------------
    accepted: list[str] = []
    lock = threading.Lock()
    counter = iter(range(EVENTS))

    def sender() -> None:
        with httpx.Client(timeout=30) as client:
            while True:
                with lock:
                    n = next(counter, None)
                if n is None:
                    return
                rid = str(uuid.uuid4())
                files.add(f"/f/{rid}.mp4", data=content(rid), bytes_per_second=FILE_RATE)
                _, body = webhook_body(
                    rid,
                    payload={"video": {"url": files.url(f"/f/{rid}.mp4"), "file_name": "c.mp4"}},
                )
                target = receivers[n % 2]
                resp = client.post(
                    target.url("/webhooks/default"), content=body, headers=signer.headers(body, rid)
                )
                assert resp.status_code == 200, resp.text
                assert resp.json() == {"status": "accepted", "request_id": rid}
                with lock:
                    accepted.append(rid)

    threads = [threading.Thread(target=sender) for _ in range(SENDERS)]
    for t in threads:
        t.start()

    # --- kill one worker while it holds a lease whose download is under way ---------------------
    assert victim.proc is not None

    def victim_frozen_mid_download() -> list[str]:
        """Once the victim has delivered a few events, freeze it (SIGSTOP) and read what it
        holds; keep it frozen only when a held delivery's file is still being sent to it (a
        file already whole in the shared spool is reused by the worker that takes over, not
        fetched again), so the kill lands mid-load and mid-delivery."""
        delivered = [rid for _, rid in delivered_lines(victim)]
        if len(delivered) < VICTIM_DELIVERS_FIRST:
            return []
        victim.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
        held = [
            r["request_id"]
            for r in pg_fetch(
                schema,
                "SELECT request_id FROM deliveries WHERE state = 'delivering' AND lease_owner = $1",
                victim_owner,
            )
        ]
        if any(files.hits(f"/f/{rid}.mp4") > files.served(f"/f/{rid}.mp4") for rid in held):
            return held
        victim.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
        return []

    held = wait_for(
        victim_frozen_mid_download, timeout=60, interval=0.1, what="the victim to hold a lease"
    )
    victim.stop(signal.SIGKILL)
    assert victim.proc.returncode == -signal.SIGKILL
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert len(accepted) == EVENTS  # every webhook was answered 200 by a receiver

    # --- every accepted event ends delivered ----------------------------------------------------
    def all_delivered() -> bool:
        rows = pg_fetch(schema, "SELECT request_id, state FROM deliveries")
        states = {r["request_id"]: r["state"] for r in rows}
        return all(states.get(rid) == "delivered" for rid in accepted)

    wait_for(all_delivered, timeout=180, interval=0.5, what="every accepted event delivered")
    for rid in held:  # the contract's view of a taken-over delivery
        event = receivers[0].event(rid)
        assert event is not None and event["state"] == "delivered"
        assert event["deliveries"]["local"]["state"] == "delivered"

    # --- once each, on disk and by the workers --------------------------------------------------
    root = Path(receivers[0].config["sinks"]["local"]["root"]) / "default"
    for rid in accepted:
        assert sorted(p.name for p in (root / rid).iterdir()) == ["c.mp4", "event.json"], rid
        assert (root / rid / "c.mp4").read_bytes() == content(rid)
    assert [p for p in root.rglob("*") if p.name.endswith(".tmp")] == []

    for w in survivors:
        w.stop()
    finals: dict[str, list[str]] = {}  # request_id -> owners whose finish counted
    fenced: set[str] = set()  # request_ids some worker finished after losing its lease
    for owner, w in owners.items():
        for lost, rid in delivered_lines(w):
            if lost:
                fenced.add(rid)
            else:
                finals.setdefault(rid, []).append(owner)
    # Fencing: no delivery was finished twice. (A delivery the victim finished just before the
    # kill may lack its log line: the kill can land between the commit and the line.)
    assert [rid for rid in accepted if len(finals.get(rid, [])) > 1] == []
    assert all(rid in finals for rid in accepted if rid in held or rid in fenced)

    # The killed worker's leases were taken over: another worker delivered each of them, and
    # the file whose download the kill cut short was fetched again.
    assert held
    for rid in held:
        assert len(finals[rid]) == 1 and finals[rid] != [victim_owner], rid
    assert any(files.hits(f"/f/{rid}.mp4") >= 2 for rid in held), {
        rid: (files.hits(f"/f/{rid}.mp4"), files.served(f"/f/{rid}.mp4")) for rid in held
    }

    # Leases never overlapped: a delivery nobody lost a lease on and the victim never held
    # was leased once, downloaded once, and counted one attempt.
    attempts = {
        r["request_id"]: r["attempts"]
        for r in pg_fetch(schema, "SELECT request_id, attempts FROM deliveries")
    }
    for rid in set(accepted) - set(held) - fenced:
        if finals.get(rid, [victim_owner]) == [victim_owner]:
            continue  # delivered by the victim before it was killed
        assert (files.hits(f"/f/{rid}.mp4"), attempts[rid]) == (1, 1), rid
