"""The Store protocol's promises, for every backend in tests/support/stores.py."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from receiver.store.base import Finish, NewEvent, NewSubmission, Store, StoreUnavailable, utcnow
from receiver.store.sqlite import SQLiteStore
from tests.support.stores import STORE_BACKENDS, make_backend, open_backend


@pytest.fixture(params=STORE_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def store(backend: str, tmp_path: Path) -> AsyncIterator[Store]:
    async with open_backend(backend, tmp_path) as s:
        yield s


def event(route: str = "r", sinks: tuple[str, ...] = ("a", "b"), **kw: object) -> NewEvent:
    rid = str(kw.pop("request_id", uuid.uuid4()))
    fields: dict = {
        "request_id": rid,
        "route": route,
        "fal_status": "OK",
        "error": None,
        "payload_error": None,
        "gateway_request_id": None,
        "headers": {"x-fal-webhook-request-id": rid},
        "body": b'{"request_id": "%s"}' % rid.encode(),
        "files": [{"path": "video", "url": "https://x/v.mp4"}],
        "sinks": sinks,
    }
    fields.update(kw)
    return NewEvent(**fields)


async def lease_all(store: Store, owner: str = "w1", seconds: float = 60, **kw: object):
    return await store.lease(owner=owner, limit=100, lease_seconds=seconds, **kw)  # type: ignore[arg-type]


async def test_accept_stores_the_event_and_its_deliveries(store: Store) -> None:
    e = event()
    assert await store.accept(e) is True
    view = await store.get_event(e.request_id)
    assert view is not None and view.body == e.body and view.headers == e.headers
    assert sorted(view.deliveries) == ["a", "b"] and view.state == "pending"
    assert all(d.state == "pending" and d.attempts == 0 for d in view.deliveries.values())


async def test_a_second_accept_is_a_duplicate_even_on_another_route(store: Store) -> None:
    e = event()
    await store.accept(e)
    again = event(route="other", sinks=("c",), request_id=e.request_id, body=b"{}")
    assert await store.accept(again) is False
    view = await store.get_event(e.request_id)
    assert view is not None and view.route == "r" and sorted(view.deliveries) == ["a", "b"]


async def test_accepted_events_survive_a_reopen(backend: str, tmp_path: Path) -> None:
    e = event()
    async with open_backend(backend, tmp_path) as s:
        await s.accept(e)
    reopened = make_backend(backend, tmp_path)
    await reopened.open()
    try:
        assert (await reopened.get_event(e.request_id)) is not None
    finally:
        await reopened.close()


async def test_concurrent_accepts_share_commits(store: Store) -> None:
    events = [event() for _ in range(200)]
    before = getattr(store, "commits", None)
    results = await asyncio.gather(*(store.accept(e) for e in events))
    assert all(results)
    assert len(await store.list_events(limit=1000)) == 200
    if isinstance(store, SQLiteStore):
        assert store.commits - (before or 0) < 50  # group commit, not one fsync each


async def test_the_same_request_id_accepted_concurrently_is_stored_once(store: Store) -> None:
    e = event()
    results = await asyncio.gather(*(store.accept(e) for _ in range(10)))
    assert sorted(results) == [False] * 9 + [True]


async def test_lease_hands_out_due_deliveries_grouped_by_event(store: Store) -> None:
    e1, e2 = event(), event(sinks=("a",))
    await store.accept(e1)
    await store.accept(e2)
    jobs = await lease_all(store)
    by_id = {j.event.request_id: sorted(d.sink for d in j.deliveries) for j in jobs}
    assert by_id == {e1.request_id: ["a", "b"], e2.request_id: ["a"]}
    assert await lease_all(store, owner="w2") == []  # held: nobody else gets them


async def test_a_retry_is_not_leased_before_its_time(store: Store) -> None:
    e = event(sinks=("a",))
    await store.accept(e)
    [job] = await lease_all(store)
    later = utcnow() + timedelta(hours=1)
    token = job.deliveries[0].token
    ok = await store.finish(
        Finish(e.request_id, "a", token, "retry", "boom", next_attempt_at=later)
    )
    assert ok
    assert await lease_all(store) == []
    view = await store.get_event(e.request_id)
    d = view.deliveries["a"]  # type: ignore[union-attr]
    assert (d.state, d.attempts, d.last_error) == ("retrying", 1, "boom")
    assert view.state == "retrying"  # type: ignore[union-attr]


async def test_an_expired_lease_is_taken_over_and_the_old_holder_is_fenced(store: Store) -> None:
    e = event(sinks=("a",))
    await store.accept(e)
    [first] = await lease_all(store, owner="crashed", seconds=0.2)
    await asyncio.sleep(0.3)  # the lease's own expiry, not luck: 0.2 s was the lease
    [second] = await lease_all(store, owner="w2")
    assert second.deliveries[0].token != first.deliveries[0].token
    stale = Finish(e.request_id, "a", first.deliveries[0].token, "delivered")
    assert await store.finish(stale) is False
    fresh = Finish(e.request_id, "a", second.deliveries[0].token, "delivered", output={"k": 1})
    assert await store.finish(fresh) is True
    view = await store.get_event(e.request_id)
    assert view.deliveries["a"].attempts == 1  # the crash did not count  # type: ignore[union-attr]
    assert view.deliveries["a"].output == {"k": 1}  # type: ignore[union-attr]


async def test_extend_keeps_a_lease_from_expiring(store: Store) -> None:
    e = event(sinks=("a",))
    await store.accept(e)
    [job] = await lease_all(store, seconds=0.2)
    await store.extend([job.deliveries[0].token], 60)
    await asyncio.sleep(0.3)
    assert await lease_all(store, owner="w2") == []


async def test_finish_records_delivered_and_dead(store: Store) -> None:
    e = event()
    await store.accept(e)
    [job] = await lease_all(store)
    tokens = {d.sink: d.token for d in job.deliveries}
    await store.finish(Finish(e.request_id, "a", tokens["a"], "delivered"))
    await store.finish(Finish(e.request_id, "b", tokens["b"], "dead", "refused address"))
    view = await store.get_event(e.request_id)
    assert view.deliveries["a"].state == "delivered"  # type: ignore[union-attr]
    assert view.deliveries["b"].last_error == "refused address"  # type: ignore[union-attr]
    assert view.state == "dead"  # type: ignore[union-attr]
    assert (await store.counts()) == {"delivered": 1, "dead": 1}


async def test_release_makes_a_delivery_due_without_counting(store: Store) -> None:
    e = event(sinks=("a",))
    await store.accept(e)
    [job] = await lease_all(store)
    await store.release(e.request_id, "a", job.deliveries[0].token)
    [again] = await lease_all(store)
    assert again.deliveries[0].attempts == 0


async def test_replay_reschedules_dead_and_delivered_keeping_outputs(store: Store) -> None:
    e = event()
    await store.accept(e)
    [job] = await lease_all(store)
    tokens = {d.sink: d.token for d in job.deliveries}
    await store.finish(Finish(e.request_id, "a", tokens["a"], "delivered", output={"ts": "1"}))
    await store.finish(Finish(e.request_id, "b", tokens["b"], "dead", "x"))
    assert await store.replay(e.request_id, "b") == 1
    view = await store.get_event(e.request_id)
    assert view.deliveries["b"].state == "pending" and view.deliveries["b"].attempts == 0  # type: ignore[union-attr]
    assert view.deliveries["b"].last_error is None  # type: ignore[union-attr]
    assert view.deliveries["a"].state == "delivered"  # type: ignore[union-attr]
    assert await store.replay(e.request_id) == 2
    view = await store.get_event(e.request_id)
    assert view.deliveries["a"].output == {"ts": "1"}  # kept  # type: ignore[union-attr]
    await store.replay(e.request_id, force=True)
    view = await store.get_event(e.request_id)
    assert view.deliveries["a"].output is None  # type: ignore[union-attr]
    assert await store.replay("unknown") == 0 and await store.replay(e.request_id, "zz") == 0


async def test_a_targeted_lease_ignores_the_retry_time(store: Store) -> None:
    e, other = event(sinks=("a",)), event(sinks=("a",))
    await store.accept(e)
    await store.accept(other)
    [job] = await lease_all(store, request_id=e.request_id)
    later = utcnow() + timedelta(hours=1)
    await store.finish(Finish(e.request_id, "a", job.deliveries[0].token, "retry", "x", later))
    [again] = await lease_all(store, request_id=e.request_id)  # fal's retry is the schedule
    assert again.event.request_id == e.request_id


async def test_list_events_is_newest_first_and_filters(store: Store) -> None:
    base = utcnow()
    events = [
        event(route="x" if i % 2 else "y", received_at=base + timedelta(seconds=i))
        for i in range(5)
    ]
    for e in events:
        await store.accept(e)
    listed = await store.list_events()
    assert [v.request_id for v in listed] == [e.request_id for e in reversed(events)]
    assert {v.route for v in await store.list_events(route="x")} == {"x"}
    assert len(await store.list_events(limit=2)) == 2
    [job, *_] = await lease_all(store, request_id=events[0].request_id)
    await store.finish(Finish(events[0].request_id, "a", job.deliveries[0].token, "dead", "x"))
    assert [v.request_id for v in await store.list_events(state="dead")] == [events[0].request_id]
    assert len(await store.list_events(state="pending")) == 4
    assert [v.request_id for v in await store.list_events(state="delivering")] == [
        events[0].request_id
    ]


async def test_record_files_replaces_the_file_list(store: Store) -> None:
    e = event()
    await store.accept(e)
    await store.record_files(e.request_id, [{"path": "video", "sha256": "ab", "size": 3}])
    view = await store.get_event(e.request_id)
    assert view.files == [{"path": "video", "sha256": "ab", "size": 3}]  # type: ignore[union-attr]


async def test_submissions_have_a_derived_state(store: Store) -> None:
    def sub(**kw: object) -> NewSubmission:
        return NewSubmission(
            request_id=str(uuid.uuid4()),
            endpoint="luma/agent/ray/v3.2/reframe",
            route="r",
            input={"prompt": "p"},
            **kw,
        )  # type: ignore[arg-type]

    old = utcnow() - timedelta(hours=2)
    pending, done, recovered, lost = sub(submitted_at=old), sub(), sub(), sub(submitted_at=old)
    for s in (pending, done, recovered, lost):
        await store.record_submission(s)
    await store.accept(event(request_id=done.request_id))
    await store.accept(event(request_id=recovered.request_id, source="poll"))
    await store.update_submission(lost.request_id, state="lost", detail="fal: not found")
    states = {s.request_id: s.state for s in await store.list_submissions()}
    assert states == {
        pending.request_id: "pending",
        done.request_id: "completed",
        recovered.request_id: "recovered",
        lost.request_id: "lost",
    }
    overdue = await store.overdue_submissions(older_than=utcnow() - timedelta(hours=1), limit=10)
    assert [s.request_id for s in overdue] == [pending.request_id]
    view = await store.get_event(done.request_id)
    assert view.submission is not None and view.submission.endpoint.endswith("reframe")  # type: ignore[union-attr]
    assert [s.request_id for s in await store.list_submissions(state="recovered")] == [
        recovered.request_id
    ]


async def test_wait_for_work_wakes_on_accept(store: Store) -> None:
    waiter = asyncio.create_task(store.wait_for_work(30))
    await asyncio.sleep(0)
    await store.accept(event())
    await asyncio.wait_for(waiter, 5)  # woken by the accept, long before the 30 s


async def test_an_unwritable_store_raises_store_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "events.db"
    blocker.mkdir()  # a folder where the database file should be: even root cannot open it
    with pytest.raises(StoreUnavailable):
        await SQLiteStore(blocker).open()
