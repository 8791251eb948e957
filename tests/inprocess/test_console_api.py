"""The console's JSON API (CONTRACT.md, "Console") on both stores, in process: every
endpoint, its access rules (401, 403, CSRF) and cursor paging while events arrive. The
live stream is read over real HTTP (uvicorn on loopback): ASGITransport buffers answers."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import pytest

from falhook.testing import FalSigner
from tests.support.fileserver import FileServer
from tests.support.inprocess import InProcess, InProcessFactory, serve_asgi, wait_until

TOKEN = "console-token-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
CONSOLE = {"token": TOKEN, "stream_interval": 0.05}


async def console_app(inprocess: InProcessFactory, **overrides: Any) -> InProcess:
    overrides.setdefault("console", CONSOLE)
    return await inprocess(**overrides)


def client(fh: InProcess, address: tuple[str, int] = ("127.0.0.1", 4321)) -> httpx.AsyncClient:
    assert fh.app is not None
    transport = httpx.ASGITransport(app=fh.app, client=address)
    return httpx.AsyncClient(transport=transport, base_url="http://falhook.test")


async def api(fh: InProcess, path: str, **params: Any) -> Any:
    async with client(fh) as c:
        resp = await c.get(f"/console/api{path}", params=params, headers=BEARER)
    assert resp.status_code == 200, resp.text
    return resp.json()


async def post(fh: InProcess, path: str, body: Any = None) -> httpx.Response:
    async with client(fh) as c:
        return await c.post(f"/console/api{path}", json=body, headers=BEARER)


async def test_events_are_listed_newest_first_filtered_and_shown(
    inprocess: InProcessFactory, signer: FalSigner, files: FileServer
) -> None:
    fh = await console_app(inprocess)
    files.add("/v.mp4", data=b"\x00" * 2048, content_type="video/mp4")
    first = await fh.send(signer, {"video": {"url": files.url("/v.mp4")}}, route="reframe")
    second = await fh.send(signer, {"prompt": "a lighthouse at night"})
    failed = await fh.send(signer, {"detail": []}, status="ERROR", error="GPU quota exceeded")
    await fh.wait_state(first, "delivered")
    listed = await api(fh, "/events")
    assert [e["request_id"] for e in listed["events"]] == [failed, second, first]
    assert listed["next_cursor"] is None
    assert listed["events"][2]["deliveries"]["local"]["history"][0]["outcome"] == "delivered"
    assert [e["request_id"] for e in (await api(fh, "/events", route="reframe"))["events"]] == [
        first
    ]
    assert [e["request_id"] for e in (await api(fh, "/events", fal_status="ERROR"))["events"]] == [
        failed
    ]
    assert [e["request_id"] for e in (await api(fh, "/events", q="lighthouse"))["events"]] == [
        second
    ]
    assert [e["request_id"] for e in (await api(fh, "/events", q="quota"))["events"]] == [failed]
    assert (await api(fh, "/events/count", route="default"))["count"] == 2
    shown = await api(fh, f"/events/{first}")
    assert shown["payload"] == {"video": {"url": files.url("/v.mp4")}}
    assert shown["files"][0]["size"] == 2048 and shown["state"] == "delivered"
    assert "x-fal-webhook-signature" in {k.lower() for k in shown["headers"]}


async def test_unknown_events_and_bad_parameters_are_json_errors(
    inprocess: InProcessFactory,
) -> None:
    fh = await console_app(inprocess)
    async with client(fh) as c:
        missing = await c.get("/console/api/events/nope", headers=BEARER)
        replay = await c.post("/console/api/events/nope/replay", headers=BEARER)
        bad_state = await c.get("/console/api/events?state=weird", headers=BEARER)
        bad_cursor = await c.get("/console/api/events?cursor=zzz", headers=BEARER)
        bad_body = await c.post("/console/api/replay", content=b"[1]", headers=BEARER)
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert replay.status_code == 404 and "nope" in replay.json()["detail"]
    assert bad_state.status_code == 400 and bad_state.json()["detail"].startswith("state")
    assert bad_cursor.status_code == 400 and "cursor" in bad_cursor.json()["detail"]
    assert bad_body.status_code == 400


async def test_the_api_needs_the_token_and_pages_show_the_login(
    inprocess: InProcessFactory,
) -> None:
    fh = await console_app(inprocess)
    async with client(fh) as c:
        bare = await c.get("/console/api/events")
        wrong = await c.get("/console/api/events", headers={"Authorization": "Bearer nope"})
        page = await c.get("/console/")
        posted = await c.post("/console/api/replay", json={})
    assert bare.status_code == 401 and bare.json()["error"] == "unauthorized"
    assert bare.headers["www-authenticate"] == "Bearer"
    assert wrong.status_code == 401
    assert page.status_code == 401 and 'name="token"' in page.text
    assert posted.status_code == 401
    assert TOKEN not in page.text + bare.text + wrong.text


async def test_without_a_token_only_loopback_clients_are_answered(
    inprocess: InProcessFactory,
) -> None:
    fh = await inprocess()
    async with client(fh, ("203.0.113.5", 1234)) as remote:
        assert (await remote.get("/console/api/events")).status_code == 403
        assert (await remote.get("/console/")).status_code == 403
    async with client(fh) as local:
        assert (await local.get("/console/api/events")).status_code == 200
        assert (await local.get("/console/")).status_code == 200
        proxied = await local.get("/console/api/events", headers={"X-Forwarded-For": "1.2.3.4"})
        assert proxied.status_code == 403  # a proxy on loopback forwards other clients


async def test_a_token_opens_the_console_to_any_client(inprocess: InProcessFactory) -> None:
    fh = await console_app(inprocess)
    async with client(fh, ("203.0.113.5", 1234)) as remote:
        assert (await remote.get("/console/api/events", headers=BEARER)).status_code == 200


async def test_a_disabled_console_is_not_there(inprocess: InProcessFactory) -> None:
    fh = await inprocess(console={"enabled": False})
    async with client(fh) as c:
        assert (await c.get("/console/api/events")).status_code == 404
        assert (await c.get("/console/")).status_code == 404


async def login(c: httpx.AsyncClient) -> str:
    """Log in through the form; the CSRF token of the session's pages."""
    resp = await c.post("/console/login", data={"token": TOKEN, "next": "/console/"})
    assert resp.status_code == 303 and resp.headers["location"] == "/console/"
    cookie = resp.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    page = await c.get("/console/")
    assert page.status_code == 200
    match = re.search(r'data-csrf="([0-9a-f]+)"', page.text)
    assert match is not None
    return match.group(1)


async def test_posts_from_a_session_need_the_csrf_token_and_the_same_origin(
    inprocess: InProcessFactory, signer: FalSigner
) -> None:
    fh = await console_app(inprocess)
    rid = await fh.send(signer, {"prompt": "p"})
    await fh.wait_state(rid, "delivered")
    async with client(fh) as c:
        wrong = await c.post("/console/login", data={"token": "x" * 20})
        assert wrong.status_code == 401 and "Wrong token" in wrong.text
        csrf = await login(c)
        url = f"/console/api/events/{rid}/replay"
        assert (await c.post(url)).status_code == 403  # no CSRF token
        cross = await c.post(url, headers={"X-CSRF-Token": csrf, "Origin": "https://evil.example"})
        assert cross.status_code == 403 and cross.json()["error"] == "csrf"
        site = await c.post(url, headers={"X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"})
        assert site.status_code == 403
        form = await c.post(f"/console/events/{rid}/replay", data={"csrf": "0" * 64})
        assert form.status_code == 403
        ok = await c.post(url, headers={"X-CSRF-Token": csrf, "Origin": "http://falhook.test"})
        assert ok.status_code == 200 and ok.json() == {"scheduled": 1}
        page = await c.post(f"/console/events/{rid}/replay", data={"csrf": csrf})
        assert page.status_code == 303 and "Scheduled" in page.headers["location"]


async def test_loopback_browsers_need_the_csrf_token_too(
    inprocess: InProcessFactory, signer: FalSigner
) -> None:
    fh = await inprocess()
    rid = await fh.send(signer, {"prompt": "p"})
    async with client(fh) as c:
        url = f"/console/api/events/{rid}/replay"
        forged = await c.post(url, headers={"Origin": "http://falhook.test"})
        assert forged.status_code == 403  # a page on any site could send this
        page = await c.get("/console/")
        csrf = re.search(r'data-csrf="([0-9a-f]+)"', page.text)
        assert csrf is not None
        ok = await c.post(url, headers={"Origin": "http://falhook.test", "X-CSRF-Token": csrf[1]})
        assert ok.status_code == 200
    async with client(fh) as curl:  # no browser: no cookie, no Origin
        assert (await curl.post(url)).status_code == 200


async def test_replay_one_sink_or_all_and_bulk_replay_by_filter(
    inprocess: InProcessFactory, signer: FalSigner, tmp_path: Any
) -> None:
    sinks = {"local": {"type": "disk", "root": str(tmp_path / "files")},
             "copy": {"type": "disk", "root": str(tmp_path / "copy")}}  # fmt: skip
    routes = {"default": {"sinks": ["local", "copy"]}, "reframe": {"sinks": ["local"]}}
    fh = await console_app(inprocess, sinks=sinks, routes=routes)
    ids = [await fh.send(signer, {"prompt": f"p{i}"}) for i in range(5)]
    other = await fh.send(signer, {"prompt": "other"}, route="reframe")
    for rid in [*ids, other]:
        await fh.wait_state(rid, "delivered")
    one = await post(fh, f"/events/{ids[0]}/replay", {"sink": "copy", "force": True})
    assert one.json() == {"scheduled": 1}
    doc = await fh.wait_event(ids[0], lambda d: len(d["deliveries"]["copy"]["history"]) == 2)
    assert len(doc["deliveries"]["local"]["history"]) == 1
    no_sink = await post(fh, f"/events/{ids[0]}/replay", {"sink": "nope"})
    assert no_sink.status_code == 404
    bulk = await post(fh, "/replay", {"route": "default"})
    assert bulk.json() == {"scheduled": 10, "events": 5}
    batch = await post(fh, "/replay", {"route": "default", "sink": "local", "limit": 3})
    assert batch.json()["events"] == 3 and batch.json()["next_cursor"]
    rest = await post(
        fh, "/replay", {"route": "default", "sink": "local", "limit": 3,
                        "cursor": batch.json()["next_cursor"]},
    )  # fmt: skip
    assert rest.json() == {"scheduled": 2, "events": 2, "next_cursor": None}
    for rid in ids:
        await fh.wait_state(rid, "delivered")
    other_doc = await fh.event(other)
    assert other_doc is not None and len(other_doc["deliveries"]["local"]["history"]) == 1


async def test_cursor_paging_has_no_duplicates_or_gaps_while_events_arrive(
    inprocess: InProcessFactory, signer: FalSigner
) -> None:
    fh = await console_app(inprocess, routes={"default": {"sinks": ["local"]}})
    before = {await fh.send(signer, {"n": i}) for i in range(12)}
    seen: list[str] = []
    cursor = None
    for _ in range(20):
        params = {"limit": 5, **({"cursor": cursor} if cursor else {})}
        page = await api(fh, "/events", **params)
        seen += [e["request_id"] for e in page["events"]]
        await fh.send(signer, {"late": True})  # arrives between pages
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert cursor is None
    assert len(seen) == len(set(seen)) == len(before) and set(seen) == before


async def test_submissions_stats_and_dead_groups(
    inprocess: InProcessFactory, signer: FalSigner, files: FileServer, monkeypatch: Any
) -> None:
    fh = await console_app(inprocess, delivery={"max_attempts": 1})
    files.add("/gone.mp4", status=404)
    dead = await fh.send(signer, {"video": {"url": files.url("/gone.mp4")}})
    fine = await fh.send(signer, {"prompt": "ok"})
    await fh.wait_state(dead, "dead")
    await fh.wait_state(fine, "delivered")
    stats = await api(fh, "/stats")
    assert stats["dead"] == 1 and stats["backlog"] == 0
    assert stats["last_hour"]["outcomes_by_sink"]["local"] == {"dead": 1, "delivered": 1}
    assert stats["delivery_latency_seconds"]["samples"] == 1
    assert stats["delivery_latency_seconds"]["p99"] >= 0
    groups = await api(fh, "/dead")
    assert groups["dead"] == 1 and groups["groups"][0]["request_ids"] == [dead]
    assert "404" in groups["groups"][0]["error"]
    assert await api(fh, "/submissions") == {"submissions": []}
    assert (await api(fh, "/submissions", state="lost")) == {"submissions": []}
    async with client(fh) as c:
        bad = await c.get("/console/api/submissions?state=weird", headers=BEARER)
    assert bad.status_code == 400
    monkeypatch.delenv("FAL_KEY", raising=False)
    refused = await post(fh, "/submissions/reconcile")
    assert refused.status_code == 409 and "FAL_KEY" in refused.json()["detail"]


async def test_the_stream_sends_an_event_per_accept_and_state_change(
    inprocess: InProcessFactory, signer: FalSigner
) -> None:
    fh = await console_app(inprocess, listen=True)
    assert fh.base_url is not None
    messages: list[dict[str, Any]] = []
    async with (
        httpx.AsyncClient(base_url=fh.base_url, timeout=30) as c,
        c.stream("GET", "/console/api/stream", headers=BEARER) as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = resp.aiter_lines()
        assert (await anext(lines)).startswith("retry:")  # subscribed from here on
        rid = await fh.send(signer, {"prompt": "live"})

        async def delivered() -> bool:
            line = await anext(lines)
            if line.startswith("data: "):
                messages.append(json.loads(line[6:]))
            return any(m.get("state") == "delivered" for m in messages)

        async with asyncio.timeout(30):  # a read that waits on a silent stream is bounded too
            await wait_until(delivered, what="a delivered message")
    assert messages[0] == {"request_id": rid, "kind": "accepted", "route": "default"}
    # States a delivery passes through within one stream_interval are reported as the last.
    assert messages[-1] == {"request_id": rid, "kind": "delivery", "sink": "local",
                            "state": "delivered"}  # fmt: skip
    assert len(messages) == len({json.dumps(m, sort_keys=True) for m in messages})


async def test_a_disk_copy_is_served_and_nothing_outside_the_sink(
    inprocess: InProcessFactory, signer: FalSigner, files: FileServer
) -> None:
    fh = await console_app(inprocess)
    files.add("/v.mp4", data=b"\x01" * 4096, content_type="video/mp4")
    files.add("/page.html", data=b"<script>alert(1)</script>", content_type="text/html")
    payload = {"video": {"url": files.url("/v.mp4")}, "page": {"url": files.url("/page.html")}}
    rid = await fh.send(signer, payload)
    await fh.wait_state(rid, "delivered")
    async with client(fh) as c:
        video = await c.get(f"/console/files/{rid}", params={"sink": "local", "path": "video"},
                            headers=BEARER)  # fmt: skip
        ranged = await c.get(
            f"/console/files/{rid}",
            params={"sink": "local", "path": "video"},
            headers={**BEARER, "Range": "bytes=0-99"},
        )
        html = await c.get(f"/console/files/{rid}", params={"sink": "local", "path": "page"},
                           headers=BEARER)  # fmt: skip
        nothing = await c.get(f"/console/files/{rid}", params={"sink": "local", "path": "x"},
                              headers=BEARER)  # fmt: skip
    assert video.status_code == 200 and video.content == b"\x01" * 4096
    assert video.headers["content-type"] == "video/mp4"
    assert ranged.status_code == 206 and len(ranged.content) == 100
    assert html.headers["content-type"] == "application/octet-stream"
    assert html.headers["content-disposition"].startswith("attachment")
    assert "sandbox" in html.headers["content-security-policy"]
    assert nothing.status_code == 404


@pytest.mark.one_store("rendering does not depend on the store")
async def test_pages_render_payload_text_escaped(
    inprocess: InProcessFactory, signer: FalSigner, store_backend: str
) -> None:
    fh = await console_app(inprocess)
    rid = await fh.send(signer, {"prompt": "<script>alert('x')</script>", "file_name": "<b>"})
    async with client(fh) as c:
        await login(c)
        page = await c.get(f"/console/events/{rid}")
        listing = await c.get("/console/")
    assert page.status_code == 200
    assert "<script>alert" not in page.text and "&lt;script&gt;alert" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "<script>alert" not in listing.text
    assert TOKEN not in page.text


@pytest.mark.one_store("rendering does not depend on the store")
async def test_the_event_page_previews_images_and_lists_a_zip(
    inprocess: InProcessFactory, signer: FalSigner, files: FileServer, store_backend: str
) -> None:
    import io
    import zipfile

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        for n in range(3):
            z.writestr(f"frame_{n:04d}.exr", b"\x76\x2f\x31\x01")
    files.add("/frames.zip", data=archive.getvalue(), content_type="application/zip")
    files.add("/still.png", data=b"\x89PNG\r\n\x1a\n", content_type="image/png")
    fh = await inprocess()
    payload = {"exr_file": {"url": files.url("/frames.zip"), "file_name": "frames.zip"},
               "images": [{"url": files.url("/still.png")}]}  # fmt: skip
    rid = await fh.send(signer, payload, route="reframe")
    await fh.wait_state(rid, "delivered")
    async with client(fh) as c:
        page = await c.get(f"/console/events/{rid}")
    assert page.status_code == 200
    assert "3 entries" in page.text and "frame_0002.exr" in page.text
    assert f'<img src="/console/files/{rid}?sink=local&amp;path=images%5B0%5D"' in page.text


# --- mounted under a prefix (ASGI root_path) ---------------------------------------------------

PREFIX = "/fal"
LINK = re.compile(r'(?:href|src|action|data-base)="([^"]*)"')


def host_app(fh: InProcess) -> Any:
    """A host application that mounts falhook under PREFIX, as a user's own app would."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    assert fh.app is not None
    return Starlette(routes=[Mount(PREFIX, app=fh.app)])


def hosted(fh: InProcess) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=host_app(fh), client=("127.0.0.1", 4321))
    return httpx.AsyncClient(transport=transport, base_url="http://falhook.test")


def links_of(html: str) -> list[str]:
    """Every path a page points at (links, forms, scripts, styles, images, its base)."""
    return [v for v in LINK.findall(html) if v and not v.startswith(("http:", "https:", "#"))]


async def test_under_a_prefix_every_link_redirect_cookie_and_call_stays_under_it(
    inprocess: InProcessFactory, signer: FalSigner, files: FileServer
) -> None:
    fh = await console_app(inprocess)
    files.add("/v.mp4", data=b"\x00" * 2048, content_type="video/mp4")
    rid = await fh.send(signer, {"video": {"url": files.url("/v.mp4")}})
    await fh.wait_state(rid, "delivered")
    async with hosted(fh) as c:
        bare = await c.get(f"{PREFIX}/console")
        assert bare.status_code == 308 and bare.headers["location"] == f"{PREFIX}/console/"
        login_page = await c.get(f"{PREFIX}/console/")
        assert login_page.status_code == 401
        assert f'action="{PREFIX}/console/login"' in login_page.text
        assert f'value="{PREFIX}/console/"' in login_page.text  # where to go next
        overview = f"{PREFIX}/console/overview"
        resp = await c.post(f"{PREFIX}/console/login", data={"token": TOKEN, "next": overview})
        assert resp.status_code == 303 and resp.headers["location"] == overview
        assert f"Path={PREFIX}/console" in resp.headers["set-cookie"]
        pages = [f"{PREFIX}/console/", f"{PREFIX}/console/events/{rid}",
                 f"{PREFIX}/console/actions", f"{PREFIX}/console/submissions",
                 f"{PREFIX}/console/overview", f"{PREFIX}/console/replay"]  # fmt: skip
        seen: set[str] = set()
        for path in pages:
            page = await c.get(path)
            assert page.status_code == 200, (path, page.text[:300])
            found = links_of(page.text)
            assert found, path
            outside = [link for link in found if not link.startswith(f"{PREFIX}/console")]
            assert outside == [], (path, outside)
            seen.update(found)
        assets = [s for s in seen if "/static/" in s or "/files/" in s]
        assert {a.split("?")[0].rsplit("/", 1)[-1] for a in assets} >= {
            "console.css",
            "console.js",
            rid,
        }
        for asset in assets:  # the stylesheet, the script, the video's disk copy
            assert (await c.get(asset.replace("&amp;", "&"))).status_code == 200, asset
        csrf = re.search(r'data-csrf="([0-9a-f]+)"', (await c.get(f"{PREFIX}/console/")).text)
        assert csrf is not None
        replay = await c.post(f"{PREFIX}/console/events/{rid}/replay", data={"csrf": csrf[1]})
        assert replay.status_code == 303
        assert replay.headers["location"].startswith(f"{PREFIX}/console/events/{rid}?flash=")
        listed = await c.get(f"{PREFIX}/console/api/events", headers=BEARER)
        assert listed.status_code == 200 and listed.json()["events"][0]["request_id"] == rid
        out = await c.post(f"{PREFIX}/console/logout", data={"csrf": csrf[1]})
        assert out.status_code == 303 and out.headers["location"] == f"{PREFIX}/console/login"
        assert f"Path={PREFIX}/console" in out.headers["set-cookie"]


async def test_under_a_prefix_a_login_never_sends_the_browser_elsewhere(
    inprocess: InProcessFactory,
) -> None:
    fh = await console_app(inprocess)
    async with hosted(fh) as c:
        for target in ("https://evil.example/", "//evil.example/x", "/console/", "/falx/console/"):
            resp = await c.post(f"{PREFIX}/console/login", data={"token": TOKEN, "next": target})
            assert resp.headers["location"] == f"{PREFIX}/console/", target


async def test_under_a_prefix_the_live_stream_and_the_loopback_cookie_follow_it(
    inprocess: InProcessFactory, signer: FalSigner
) -> None:
    fh = await inprocess()  # no token: loopback clients, with a CSRF binding cookie
    async with hosted(fh) as c:
        page = await c.get(f"{PREFIX}/console/")
        assert page.status_code == 200
        assert f"Path={PREFIX}/console" in page.headers["set-cookie"]
        assert f'data-base="{PREFIX}/console"' in page.text
    served = await serve_asgi(host_app(fh))
    try:
        async with (
            httpx.AsyncClient(base_url=served.url, timeout=30) as c,
            c.stream("GET", f"{PREFIX}/console/api/stream") as resp,
        ):
            assert resp.status_code == 200
            lines = resp.aiter_lines()
            assert (await anext(lines)).startswith("retry:")
            rid = await fh.send(signer, {"prompt": "under a prefix"})
            async with asyncio.timeout(30):
                async for line in lines:
                    if line.startswith("data: ") and json.loads(line[6:])["request_id"] == rid:
                        break
    finally:
        await served.close()


# --- who may reach the console ------------------------------------------------------------------


async def test_x_real_ip_marks_a_proxied_request_like_x_forwarded_for(
    inprocess: InProcessFactory,
) -> None:
    fh = await inprocess()
    async with client(fh) as local:
        for header in ("X-Real-IP", "X-Forwarded-For", "Forwarded"):
            proxied = await local.get("/console/api/events", headers={header: "198.51.100.7"})
            assert proxied.status_code == 403, header


async def test_a_console_without_a_token_stays_off_behind_a_public_url(
    inprocess: InProcessFactory, capfd: pytest.CaptureFixture[str]
) -> None:
    fh = await inprocess(receiver={"public_url": "https://hooks.example.com"})
    async with client(fh) as local:
        assert (await local.get("/console/")).status_code == 404
        assert (await local.get("/console/api/events")).status_code == 404
        assert (await local.get("/healthz")).status_code == 200  # the rest is served
    warnings = [line for line in capfd.readouterr().err.splitlines() if "[console]" in line]
    [warning] = [json.loads(line) for line in warnings]
    assert warning["level"] == "warning"
    assert warning["event"].startswith("[console].token: is empty")
    assert "https://hooks.example.com" in warning["event"]
    guarded = await inprocess(
        name="guarded", receiver={"public_url": "https://hooks.example.com"}, console=CONSOLE
    )
    async with client(guarded, ("203.0.113.5", 1234)) as remote:
        assert (await remote.get("/console/api/events", headers=BEARER)).status_code == 200


async def test_wrong_tokens_are_limited_per_client_then_overall(
    inprocess: InProcessFactory,
) -> None:
    from falhook.console import limits

    fh = await console_app(inprocess)
    async with client(fh, ("203.0.113.5", 1234)) as guesser:
        for _ in range(limits.PER_CLIENT - 1):
            wrong = await guesser.post("/console/login", data={"token": "x" * 24})
            assert wrong.status_code == 401
        guess = {"Authorization": "Bearer x"}
        wrong_bearer = await guesser.get("/console/api/events", headers=guess)
        assert wrong_bearer.status_code == 401  # a wrong bearer token is a guess too
        locked = await guesser.post("/console/login", data={"token": TOKEN})
        assert locked.status_code == 429 and "too many wrong tokens" in locked.text
        assert 1 <= int(locked.headers["retry-after"]) <= limits.WINDOW
        api = await guesser.get("/console/api/events", headers=BEARER)
        assert api.status_code == 429 and api.json()["error"] == "too_many_requests"
        assert int(api.headers["retry-after"]) >= 1
        assert TOKEN not in locked.text + api.text
    async with client(fh, ("203.0.113.6", 1234)) as other:
        assert (await other.get("/console/api/events", headers=BEARER)).status_code == 200
        ok = await other.post("/console/login", data={"token": TOKEN})
        assert ok.status_code == 303  # another client is not locked out
    failures = limits.PER_CLIENT
    for n in range(limits.OVERALL):  # guesses from many addresses: everyone waits
        async with client(fh, (f"198.51.100.{n % 250}", 1000 + n)) as many:
            resp = await many.post("/console/login", data={"token": "y" * 24})
            failures += resp.status_code == 401
            if failures >= limits.OVERALL:
                break
    async with client(fh, ("192.0.2.1", 1234)) as anyone:
        late = await anyone.post("/console/login", data={"token": TOKEN})
        assert late.status_code == 429


# --- what the pages show (issue 26) -------------------------------------------------------------


@pytest.mark.one_store("rendering does not depend on the store")
async def test_a_file_that_cannot_be_fetched_says_why_instead_of_a_dead_player(
    inprocess: InProcessFactory, signer: FalSigner, files: FileServer, store_backend: str
) -> None:
    fh = await console_app(inprocess, delivery={"max_attempts": 1})
    files.add("/gone.mp4", status=403)
    rid = await fh.send(signer, {"video": {"url": files.url("/gone.mp4")}})
    await fh.wait_state(rid, "dead")
    async with client(fh) as c:
        page = await c.get(f"/console/events/{rid}", headers=BEARER)
    assert page.status_code == 200
    assert "preview not available: the file server answered 403" in page.text
    assert "<video" not in page.text
    assert "not downloaded: the file server answered 403" in page.text
    assert "not downloaded yet" not in page.text


@pytest.mark.one_store("rendering does not depend on the store")
async def test_pages_link_an_icon_and_say_the_filters_time_zone(
    inprocess: InProcessFactory, store_backend: str
) -> None:
    fh = await console_app(inprocess)
    async with client(fh) as c:
        events = await c.get("/console/", headers=BEARER)
        login_page = await c.get("/console/login")
        icon = await c.get("/console/static/favicon.svg")
        bulk = await c.get("/console/replay?route=reframe", headers=BEARER)
    for page in (events, login_page):
        assert '<link rel="icon" href="/console/static/favicon.svg"' in page.text
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    assert "from (UTC)" in events.text and "to (UTC)" in events.text
    assert 'href="/console/?route=reframe">See these events' in bulk.text  # after "Done"


async def test_the_overview_charts_the_last_day_and_the_api_gives_its_series(
    inprocess: InProcessFactory, signer: FalSigner, files: FileServer
) -> None:
    fh = await console_app(inprocess, delivery={"max_attempts": 1})
    files.add("/gone.png", status=404)
    done = [await fh.send(signer, {"prompt": f"p{i}"}) for i in range(3)]
    dead = await fh.send(signer, {"images": [{"url": files.url("/gone.png")}]})
    for rid in done:
        await fh.wait_state(rid, "delivered")
    await fh.wait_state(dead, "dead")
    trends = await api(fh, "/trends")
    assert trends["step_seconds"] == 900 and len(trends["buckets"]) == 96
    assert sum(trends["received"]) == 4 and trends["received"][-1] == 4
    assert sum(trends["outcomes"]["delivered"]) == 3 and sum(trends["outcomes"]["dead"]) == 1
    assert trends["backlog"][-1] == 0
    p50 = trends["latency_seconds"]["local"]["p50"]
    assert [v is not None for v in p50].count(True) == 1 and p50[-1] is not None
    async with client(fh) as c:
        page = await c.get("/console/overview", headers=BEARER)
    assert page.status_code == 200
    charts = re.findall(r'data-chart="([^"]+)"', page.text)
    assert charts == ["traffic", "backlog", "latency-local"]
    points = dict(re.findall(r'data-series="([^"]+)" data-points="(\d+)"', page.text))
    assert points["received"] == points["delivered"] == points["waiting"] == "96"
    assert points["p50"] == points["p99"] == "1"  # one bucket with deliveries
    assert page.text.count('<rect x="') == 96 * 3  # a hit area per bucket per chart
