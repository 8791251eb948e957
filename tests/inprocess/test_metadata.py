"""Metadata that travels with the job: `submit(..., metadata=...)` stores it with the
submission and never sends it to fal; the event the job becomes carries it as
`submission.metadata` in its document, its filters and the console's API, and every sink
gets it (disk and S3 event.json, the HTTP body, a queue message, Slack's context). The
command line's `--meta` is tests/process/test_metadata.py's."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from falhook.fal.emulate import Emulator
from falhook.fal.queue import FalQueue, SubmitRefused
from falhook.fal.submit import submit
from falhook.store import postgres_schema, sqlite_schema
from falhook.store.models import EventQuery
from falhook.store.postgres import PostgresStore
from falhook.store.sqlite import SQLiteStore
from tests.support.brokers import Broker, open_broker
from tests.support.emulator import SharedEmulator
from tests.support.http_target import HttpTarget
from tests.support.inprocess import InProcessFactory
from tests.support.moto import BUCKET, MotoServer
from tests.support.slack_stub import SlackStub

REFRAME = "luma/agent/ray/v3.2/reframe"
KEY = "test-key-0123456789"
INPUT = {"prompt": "wider", "video_url": "https://example.invalid/v.mp4", "aspect_ratio": "21:9"}
LABELS = {"customer": "42", "order": "9001"}
SECRET = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="


@pytest.fixture
def emulated_fal(fal_host: SharedEmulator) -> SharedEmulator:
    return fal_host.use(Emulator(delay=0.2))


@pytest.fixture
def redis(request: pytest.FixtureRequest) -> Iterator[Broker]:
    yield from open_broker("redis", request)


@pytest.fixture
def target() -> Iterator[HttpTarget]:
    with HttpTarget() as server:
        yield server


def every_sink(tmp_path: Path, moto: MotoServer, slack: SlackStub, target: HttpTarget,
               redis: Broker) -> dict[str, Any]:  # fmt: skip
    return {
        "local": {"type": "disk", "root": str(tmp_path / "files")},
        "archive": {"type": "s3", "bucket": BUCKET, "endpoint_url": moto.url,
                    "region": "us-east-1", "prefix": "fal/{request_id}/"},
        "forward": {"type": "http", "url": target.url, "secret": SECRET},
        "queue": redis.options(),
        "team": {"type": "slack", "webhook_url": slack.webhook_url},
    }  # fmt: skip


async def test_metadata_is_stored_never_sent_and_carried_to_every_sink(
    inprocess: InProcessFactory,
    emulated_fal: SharedEmulator,
    tmp_path: Path,
    moto: MotoServer,
    s3: Any,
    aws_env: None,
    slack: SlackStub,
    target: HttpTarget,
    redis: Broker,
) -> None:
    fal = emulated_fal
    sinks = every_sink(tmp_path, moto, slack, target, redis)
    fh = await inprocess(
        listen=True,
        jwks_url=fal.jwks_url,
        receiver={"queue_url": fal.url},
        sinks=sinks,
        routes={"reframe": {"sinks": list(sinks)}},
        console={"token": "console-token-0123456789"},
    )
    async with FalQueue(fal.url, key=KEY) as queue:
        sub = await submit(REFRAME, INPUT, route="reframe", settings=fh.settings,
                           store=fh.store, queue=queue, metadata=LABELS)  # fmt: skip
        other = await submit(REFRAME, INPUT, route="reframe", settings=fh.settings,
                             store=fh.store, queue=queue, metadata={"customer": "7"})  # fmt: skip
    rid = sub.request_id
    assert sub.metadata == LABELS
    # fal is asked exactly what it was asked before: the labels are nowhere in the request.
    for post in fal.emulator.submits():
        assert post.json() == INPUT and post.query == {"fal_webhook": sub.webhook_url}
        assert "9001" not in json.dumps(post.headers)
    event = await fh.wait_state(rid, "delivered", timeout=60)
    await fh.wait_state(other.request_id, "delivered", timeout=60)
    assert event["submission"]["metadata"] == LABELS
    recorded = await fh.store.get_submission(rid)
    assert recorded is not None and recorded.metadata == LABELS

    on_disk = json.loads((tmp_path / "files" / "reframe" / rid / "event.json").read_text())
    assert on_disk["submission"]["metadata"] == LABELS
    in_s3 = json.loads(s3.get_object(Bucket=BUCKET, Key=f"fal/{rid}/event.json")["Body"].read())
    assert in_s3["submission"]["metadata"] == LABELS
    [posted] = [b for b in target.bodies() if b["data"]["request_id"] == rid]
    assert posted["data"]["metadata"] == LABELS
    [message] = [m for m in await redis.messages() if m.event["request_id"] == rid]
    assert message.event["submission"]["metadata"] == LABELS
    [slack_post] = [p.json for p in slack.posts() if rid in json.dumps(p.json)]
    contexts = [e["text"] for b in slack_post["blocks"] if b["type"] == "context"
                for e in b["elements"]]  # fmt: skip
    assert "customer=42 · order=9001" in contexts

    # Filters: the store's, and the console's `meta.KEY=VALUE`.
    found = await fh.store.find_events(EventQuery(meta=(("customer", "42"),)))
    assert [v.request_id for v in found.events] == [rid]
    both = EventQuery(meta=(("customer", "42"), ("order", "1")))
    assert (await fh.store.find_events(both)).events == []
    assert fh.app is not None
    transport = httpx.ASGITransport(app=fh.app, client=("127.0.0.1", 4321))
    headers = {"Authorization": "Bearer console-token-0123456789"}
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        listed = await client.get("/console/api/events", params={"meta.customer": "7"},
                                  headers=headers)  # fmt: skip
        bad = await client.get("/console/api/events", params={"meta.no good": "1"},
                               headers=headers)  # fmt: skip
        page = await client.get(f"/console/events/{rid}", headers=headers)
    assert [e["request_id"] for e in listed.json()["events"]] == [other.request_id]
    assert bad.status_code == 400 and bad.json()["error"]
    assert page.status_code == 200 and "9001" in page.text


@pytest.mark.one_store("refused before anything is stored or sent")
async def test_bad_metadata_is_refused_before_anything_is_sent(
    inprocess: InProcessFactory, emulated_fal: SharedEmulator
) -> None:
    fal = emulated_fal
    fh = await inprocess(receiver={"queue_url": fal.url})
    mistakes: list[Any] = [{"not a name": "1"}, {"n": 1}, {"big": "x" * 600}, ["k=v"]]
    async with FalQueue(fal.url, key=KEY) as queue:
        for metadata in mistakes:
            with pytest.raises(SubmitRefused, match="metadata"):
                await submit(REFRAME, INPUT, route="reframe", settings=fh.settings,
                             store=fh.store, queue=queue, metadata=metadata)  # fmt: skip
    assert fal.emulator.submits() == []
    assert await fh.store.list_submissions() == []


async def test_submissions_stored_before_the_column_migrate_with_empty_metadata(
    tmp_path: Path,
) -> None:
    """SQLite: a file at the version before metadata keeps its submissions, each with {}."""
    path = tmp_path / "events.db"
    before = len(sqlite_schema.MIGRATIONS) - 1
    conn = sqlite_schema.connect(path, busy_timeout=1)
    for statements in sqlite_schema.MIGRATIONS[:before]:
        for statement in statements:
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {before}")
    conn.execute(
        "INSERT INTO submissions (request_id, endpoint, route, input, submitted_at)"
        " VALUES ('old', 'e', 'reframe', '{}', 0)"
    )
    conn.close()
    store = SQLiteStore(path)
    await store.open()
    try:
        old = await store.get_submission("old")
        assert old is not None and old.metadata == {}
    finally:
        await store.close()
    with sqlite3.connect(path) as check:
        assert check.execute("PRAGMA user_version").fetchone()[0] == before + 1


@pytest.mark.one_store("PostgreSQL's migration", backend="postgres")
async def test_postgres_submissions_stored_before_the_column_get_empty_metadata(
    tmp_path: Path, store_section: dict[str, str]
) -> None:
    schema = store_section["schema"]
    before = len(postgres_schema.MIGRATIONS) - 1
    conn = await asyncpg.connect(store_section["url"])
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(f'SET search_path = "{schema}"')
        await conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for number, statements in enumerate(postgres_schema.MIGRATIONS[:before], start=1):
            for statement in statements:
                await conn.execute(statement)
            await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", number)
        await conn.execute(
            "INSERT INTO submissions (request_id, endpoint, route, input, submitted_at)"
            " VALUES ('old', 'e', 'reframe', '{}', now())"
        )
    finally:
        await conn.close()
    store = PostgresStore(store_section["url"], schema=schema)
    await store.open()
    try:
        old = await store.get_submission("old")
        assert old is not None and old.metadata == {}
    finally:
        await store.close()
