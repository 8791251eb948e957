"""`falhook events list` as the console's list on a terminal: why each dead or retrying event
is not done, the same filters and search as the console's API (one query path: the store's
ConsoleReader), paging by cursor, and exports as JSON Lines or CSV."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import subprocess
from datetime import UTC, datetime, timedelta

import pytest

from falhook.store import NewSubmission
from falhook.testing import FalSigner, webhook_body
from tests.support.contract import EVENT_KEYS
from tests.support.fileserver import FileServer
from tests.support.inprocess import InProcess, InProcessFactory

REFRAME = "luma/agent/ray/v3.2/reframe"


def ids_of(out: subprocess.CompletedProcess[str]) -> list[str]:
    assert out.returncode == 0, out.stderr
    return [e["request_id"] for e in json.loads(out.stdout)["events"]]


def next_cursor(out: subprocess.CompletedProcess[str]) -> str | None:
    found = re.search(r"more events: add --cursor (\S+)", out.stderr)
    return found[1] if found else None


@pytest.fixture
async def three(
    inprocess: InProcessFactory, signer: FalSigner, files: FileServer
) -> tuple[InProcess, str, str, str]:
    """A delivered event from a job falhook submitted (with a searchable payload), a dead one
    (its file is gone: 404) and a retrying one (its file server answers 503), oldest first."""
    fh = await inprocess(delivery={"backoff_initial": 120, "backoff_max": 120})
    files.add("/busy.mp4", data=b"v", fail_times=1000, fail_status=503)
    ok_id = "req-ok-0001"
    await fh.store.record_submission(
        NewSubmission(ok_id, REFRAME, "reframe", {"prompt": "a lighthouse at dusk"})
    )
    _, body = webhook_body(ok_id, payload={"prompt": "a lighthouse at dusk"})
    assert (await fh.post(body, signer.headers(body, ok_id), route="reframe")).status_code == 200
    await fh.wait_state(ok_id, "delivered")
    dead = await fh.send(signer, {"video": {"url": files.url("/gone.mp4")}})
    await fh.wait_state(dead, "dead")
    retrying = await fh.send(signer, {"video": {"url": files.url("/busy.mp4")}})
    await fh.wait_state(retrying, "retrying")
    return fh, ok_id, dead, retrying


async def test_the_table_says_why_dead_and_retrying_events_are_not_done(
    three: tuple[InProcess, str, str, str],
) -> None:
    fh, ok_id, dead, retrying = three
    table, only_dead = await asyncio.gather(
        fh.cli("events", "list"), fh.cli("events", "list", "--state", "dead")
    )
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["REQUEST_ID", "ROUTE", "STATE", "FAL", "RECEIVED_AT", "FILES",
                              "REASON"]  # fmt: skip
    by_id = {row.split()[0]: row for row in rows}
    assert list(by_id) == [retrying, dead, ok_id]
    assert by_id[dead].endswith("local: video: the file server answered 404")
    assert "local: video: the file server answered 503" in by_id[retrying]
    assert by_id[ok_id].split()[-1] == "0"  # delivered: no reason, the FILES column ends it
    [dead_row] = only_dead.stdout.splitlines()[1:]
    assert dead_row.startswith(dead) and "answered 404" in dead_row


async def test_filters_and_search_are_the_consoles(
    three: tuple[InProcess, str, str, str],
) -> None:
    fh, ok_id, dead, retrying = three
    hour_ago = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    searched, by_endpoint, by_status, recent, before, in_future = await asyncio.gather(
        fh.cli("events", "list", "--q", "lighthouse", "--json"),
        fh.cli("events", "list", "--endpoint", REFRAME, "--json"),
        fh.cli("events", "list", "--fal-status", "OK", "--route", "default", "--json"),
        fh.cli("events", "list", "--since", "10m", "--json"),
        fh.cli("events", "list", "--until", hour_ago, "--json"),
        fh.cli("events", "list", "--since", str(int(datetime.now(UTC).timestamp()) + 3600),
               "--json"),
    )  # fmt: skip
    assert ids_of(searched) == [ok_id] and ids_of(by_endpoint) == [ok_id]
    assert ids_of(by_status) == [retrying, dead]
    assert ids_of(recent) == [retrying, dead, ok_id]
    assert ids_of(before) == [] and ids_of(in_future) == []
    doc = json.loads(searched.stdout)
    assert set(doc) == {"events"} and set(doc["events"][0]) >= EVENT_KEYS  # the contract's shape


async def test_pages_follow_the_printed_cursor(three: tuple[InProcess, str, str, str]) -> None:
    fh, ok_id, dead, retrying = three
    first = await fh.cli("events", "list", "--limit", "2", "--json")
    assert ids_of(first) == [retrying, dead]
    cursor = next_cursor(first)
    assert cursor is not None
    second = await fh.cli("events", "list", "--limit", "2", "--cursor", cursor, "--json")
    assert ids_of(second) == [ok_id] and next_cursor(second) is None
    table = await fh.cli("events", "list", "--limit", "1")
    assert next_cursor(table) is not None and len(table.stdout.splitlines()) == 2
    bad = await fh.cli("events", "list", "--cursor", "not-a-cursor")
    assert bad.returncode == 2 and "--cursor 'not-a-cursor': not a cursor" in bad.stderr


async def test_exports_as_json_lines_and_csv(three: tuple[InProcess, str, str, str]) -> None:
    fh, ok_id, dead, retrying = three
    jsonl, as_csv, one_page = await asyncio.gather(
        fh.cli("events", "list", "--format", "jsonl", "--all", "--limit", "1"),
        fh.cli("events", "list", "--format", "csv", "--all", "--limit", "2"),
        fh.cli("events", "list", "--format", "jsonl", "--limit", "1"),
    )
    docs = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert [d["request_id"] for d in docs] == [retrying, dead, ok_id]
    assert all(set(d) >= EVENT_KEYS for d in docs) and next_cursor(jsonl) is None
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))  # one header across pages
    assert [r["request_id"] for r in rows] == [retrying, dead, ok_id]
    assert rows[2]["endpoint"] == REFRAME and rows[2]["reason"] == ""
    assert rows[1]["reason"] == "local: video: the file server answered 404"
    assert len(one_page.stdout.splitlines()) == 1 and next_cursor(one_page) is not None


async def test_a_bad_time_says_what_was_expected(inprocess: InProcessFactory) -> None:
    fh = await inprocess(run_worker=False)
    done = await fh.cli("events", "list", "--since", "yesterday")
    assert done.returncode == 2
    assert "argument --since: expected an ISO 8601 time, unix seconds or a duration" in done.stderr


async def test_show_says_when_a_submitted_jobs_webhook_has_not_come(
    inprocess: InProcessFactory,
) -> None:
    fh = await inprocess(run_worker=False)
    await fh.store.record_submission(NewSubmission("req-waiting", REFRAME, "reframe", {}))
    shown, other = await asyncio.gather(
        fh.cli("events", "show", "req-waiting"), fh.cli("events", "show", "req-nobody")
    )
    assert shown.returncode == 1 and shown.stdout == ""
    assert "no event with request_id 'req-waiting' yet: its job was submitted" in shown.stderr
    assert f"to {REFRAME} and its webhook has not come (submission state: pending" in shown.stderr
    assert other.returncode == 1 and "yet" not in other.stderr
