"""The console in a real browser: Debian's chromium, headless, driven by Playwright (never
a browser Playwright downloads).

- An operator logs in, watches a webhook arrive without reloading, opens it, plays its
  video's disk copy, replays it; an open event page follows a replay made elsewhere.
- A filter is bulk-replayed with its count and progress, and leads on to its events.
- A payload's `<script>` is text.
- Every page, in light and dark, at 1280 and at 390 px: nothing wider than the viewport
  outside a visibly scrollable container, every delivery's state and error in view on a
  phone, no console error, no failed request but those a test provokes; the overview's
  charts with one point per bucket of a seeded history; a file that cannot be fetched, or
  played, says why instead of a dead player.
- The same console mounted under a prefix (a host application's `Mount("/fal", ...)`).

Screenshots of every page go to test-artifacts/console/ (not committed) for a person to
look at.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from falhook.fal.sample_media import gradient_png
from falhook.store.models import EventQuery, NewSubmission, utcnow
from falhook.store.trends import bucket_of, window_ending
from falhook.testing import FalSigner, webhook_body
from tests.support.fileserver import FileServer
from tests.support.inprocess import InProcess, InProcessFactory, serve_asgi
from tests.support.media import tiny_mp4
from tests.support.paths import ROOT
from tests.support.stores import retime

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts" / "console"
TOKEN = "browser-token-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
LAUNCH_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
WAIT_MS = 20_000  # each condition's deadline in the browser
WIDTHS = {"desktop": {"width": 1280, "height": 900}, "phone": {"width": 390, "height": 844}}

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="needs Debian's chromium (.ci/run installs it)"
)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


async def console(inprocess: InProcessFactory, **overrides: Any) -> InProcess:
    overrides.setdefault("console", {"token": TOKEN, "stream_interval": 0.1})
    fh = await inprocess(listen=True, **overrides)
    assert fh.base_url is not None
    return fh


async def shot(page: Any, name: str) -> None:
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def log_in(page: Any, base: str, prefix: str = "") -> None:
    await page.goto(f"{base}{prefix}/console/login")
    await page.fill("#token", TOKEN)
    await page.click("button[type=submit]")
    await page.wait_for_selector("h1:has-text('Events')", timeout=WAIT_MS)


async def send_submitted(fh: InProcess, signer: FalSigner, payload: Any, prompt: str) -> str:
    """A webhook for a job falhook submitted itself (the page shows its prompt)."""
    rid, body = webhook_body(payload=payload)
    await fh.store.record_submission(
        NewSubmission(rid, "luma/agent/ray/v3.2/reframe", "default",
                      {"prompt": prompt, "aspect_ratio": "21:9"})
    )  # fmt: skip
    resp = await fh.post(body, signer.headers(body, rid))
    assert resp.status_code == 200, resp.text
    return rid


class Watch:
    """What goes wrong on a page: console errors, uncaught exceptions, requests that fail
    and HTTP error answers, except those the test provokes (`allowed` paths)."""

    def __init__(self, page: Any, allowed: tuple[str, ...] = ()) -> None:
        self.problems: list[str] = []
        self.requests: list[str] = []
        self.allowed = allowed
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.problems.append(f"uncaught: {exc}"))
        page.on("requestfailed", self._failed)
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("response", self._response)

    def _provoked(self, url: str) -> bool:
        return any(path in url for path in self.allowed)

    def _failed(self, request: Any) -> None:
        # A page the test navigates away from cancels its stream and its fetches in flight.
        if request.failure != "net::ERR_ABORTED":
            self.problems.append(f"failed: {request.url} {request.failure}")

    def _console(self, message: Any) -> None:
        if message.type != "error":
            return
        where = (message.location or {}).get("url", "")
        if not (self.allowed and "status of 404" in message.text and self._provoked(where)):
            self.problems.append(f"console: {message.text} ({where})")

    def _response(self, response: Any) -> None:
        if response.status >= 400 and not self._provoked(response.url):
            self.problems.append(f"HTTP {response.status}: {response.url}")


# Every element's box against the viewport: what sticks out must be inside a container
# that scrolls sideways and shows it (a scrollbar taking room, or our edge shadows).
OVERFLOWING = """() => {
  const width = document.documentElement.clientWidth;
  const scroller = (el) => {
    for (let p = el.parentElement; p && p !== document.body; p = p.parentElement) {
      const style = getComputedStyle(p);
      if (["auto", "scroll"].includes(style.overflowX) && p.scrollWidth > p.clientWidth) return p;
    }
    return null;
  };
  const visible = (box) => box.offsetHeight - box.clientHeight > 2
    || box.matches("pre.json, .json-tree, .table-wrap");
  const name = (el) => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "")
    + (el.classList.length ? "." + Array.from(el.classList).join(".") : "");
  const out = [];
  for (const el of document.body.querySelectorAll("*")) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0) continue;
    if (r.right <= width + 1 && r.left >= -1) continue;
    const box = scroller(el);
    const where = `${Math.round(r.left)}..${Math.round(r.right)}`;
    if (!box || !visible(box)) out.push(`${name(el)} ${where}`);
  }
  if (document.documentElement.scrollWidth > width + 1) out.push("the page scrolls sideways");
  return out;
}"""

# Each delivery's state badge and error (its last error, each attempt's error) fully in view.
HIDDEN_DELIVERY_PARTS = """() => {
  const width = document.documentElement.clientWidth;
  const parts = document.querySelectorAll(
    "#deliveries .delivery-head .badge, #deliveries pre.err, #deliveries tr.attempt .badge,"
    + " #deliveries tr.attempt td:last-child:not(:empty)");
  const out = [];
  for (const el of parts) {
    const r = el.getBoundingClientRect();
    const shown = r.width > 0 && r.height > 0 && getComputedStyle(el).visibility === "visible";
    if (!shown || r.left < 0 || r.right > width + 1 || el.scrollWidth > el.clientWidth + 1) {
      out.push(`${el.className}: ${el.textContent.slice(0, 40)} at ${r.left}..${r.right}`);
    }
  }
  return {count: parts.length, out};
}"""


OVERLAPPING_BADGES = """() => Array.from(document.querySelectorAll("tbody tr")).flatMap((row) => {
  const badge = row.querySelector(".badge"), id = row.querySelector(".rid");
  if (!badge || !id) return [];
  const a = badge.getBoundingClientRect(), b = id.getBoundingClientRect();
  const apart = a.right <= b.left || b.right <= a.left || a.bottom <= b.top || b.bottom <= a.top;
  return apart ? [] : [id.textContent];
})"""


async def check_page(page: Any, *, phone: bool) -> None:
    assert await page.evaluate(OVERFLOWING) == [], page.url
    if phone and await page.locator("#deliveries").count():
        found = await page.evaluate(HIDDEN_DELIVERY_PARTS)
        assert found["count"] > 0 and found["out"] == [], (page.url, found)


async def settled(page: Any) -> None:
    """Loaded, images decoded, videos ready to show their first frame (for screenshots)."""
    await page.wait_for_load_state("networkidle", timeout=WAIT_MS)
    await page.wait_for_function(
        "() => Array.from(document.images).every((i) => i.complete)"
        " && Array.from(document.querySelectorAll('video')).every((v) => v.readyState >= 2)",
        timeout=WAIT_MS,
    )


# --- the operator's path ---------------------------------------------------------------------


async def test_an_operator_watches_opens_plays_and_replays_an_event(
    inprocess: InProcessFactory,
    signer: FalSigner,
    files: FileServer,
    browser: Any,
    store_backend: str,
) -> None:
    fh = await console(inprocess)
    base = fh.base_url
    files.add("/clip.mp4", data=tiny_mp4(seconds=1.0), content_type="video/mp4")
    page = await browser.new_page(viewport=WIDTHS["desktop"])
    await page.goto(f"{base}/console/")
    await page.fill("#token", "not-the-token-at-all")
    await page.click("button[type=submit]")
    await page.wait_for_selector("text=Wrong token.", timeout=WAIT_MS)
    await shot(page, f"login-refused-{store_backend}")
    await page.fill("#token", TOKEN)
    await page.click("button[type=submit]")
    await page.wait_for_selector("#live[data-state=on]", timeout=WAIT_MS)

    video = {"video": {"url": files.url("/clip.mp4"), "content_type": "video/mp4",
                       "file_name": "clip.mp4"}}  # fmt: skip
    rid = await send_submitted(fh, signer, video, "Extend the harbour scene at dawn")
    row = f"tr[data-request-id='{rid}']"
    await page.wait_for_selector(row, timeout=WAIT_MS)  # no reload: the stream brought it
    await page.wait_for_selector(f"{row} .s-delivered", timeout=WAIT_MS)

    await page.click(f"{row} a.rid")
    await page.wait_for_selector("#event", timeout=WAIT_MS)
    src = await page.get_attribute("video", "src")
    assert src is not None and src.startswith("/console/files/")
    await page.wait_for_function(
        "() => { const v = document.querySelector('video');"
        " return v && v.readyState >= 1 && v.duration > 0; }",
        timeout=WAIT_MS,
    )
    assert await page.text_content("blockquote.prompt") == "Extend the harbour scene at dawn"

    await page.click("#replay-button")
    await page.wait_for_selector("text=Scheduled 1 delivery again.", timeout=WAIT_MS)
    await page.wait_for_function(
        "() => document.querySelectorAll('#deliveries tr.attempt').length >= 2",
        timeout=WAIT_MS,
    )
    await shot(page, f"event-replayed-{store_backend}")


async def test_an_open_event_page_follows_a_replay_without_reloading(
    inprocess: InProcessFactory,
    signer: FalSigner,
    files: FileServer,
    browser: Any,
    store_backend: str,
) -> None:
    """Dead (its file was refused), replayed from elsewhere once the file is there: the open
    page shows the new state, the player and the navigation's dead count as they change."""
    fh = await console(inprocess, delivery={"max_attempts": 1})
    files.add("/late.mp4", status=403)
    rid = await fh.send(signer, {"video": {"url": files.url("/late.mp4")}})
    await fh.wait_state(rid, "dead")
    page = await browser.new_page(viewport=WIDTHS["desktop"])
    watch = Watch(page, allowed=("/late.mp4",))
    await log_in(page, fh.base_url or "")
    await page.goto(f"{fh.base_url}/console/events/{rid}")
    note = page.locator("#files .unavailable")
    assert await note.text_content() == "preview not available: the file server answered 403"
    assert await page.text_content(".facts .badge") == "dead"
    assert await page.locator("#dead-count").count() == 1
    await page.evaluate("() => { window.stillTheSamePage = true; }")
    await page.wait_for_timeout(300)  # the stream opens (its catch-up read comes first)

    files.add("/late.mp4", data=tiny_mp4(seconds=1.0), content_type="video/mp4")
    async with httpx.AsyncClient(base_url=fh.base_url or "", timeout=30) as api:
        resp = await api.post(f"/console/api/events/{rid}/replay", json={}, headers=BEARER)
        assert resp.status_code == 200 and resp.json() == {"scheduled": 1}
    await page.wait_for_selector(".facts .s-delivered", timeout=WAIT_MS)
    await page.wait_for_selector("#files video", timeout=WAIT_MS)
    await page.wait_for_function("() => !document.getElementById('dead-count')", timeout=WAIT_MS)
    assert await page.evaluate("() => window.stillTheSamePage") is True
    assert await page.locator("#deliveries tr.attempt").count() == 2
    assert watch.problems == [], watch.problems


async def test_a_filter_is_bulk_replayed_with_its_count_and_progress_then_its_events(
    inprocess: InProcessFactory, signer: FalSigner, browser: Any, store_backend: str
) -> None:
    fh = await console(inprocess)
    mine = [await fh.send(signer, {"prompt": f"p{i}"}, route="reframe") for i in range(3)]
    other = await fh.send(signer, {"prompt": "elsewhere"})
    for rid in [*mine, other]:
        await fh.wait_state(rid, "delivered")
    page = await browser.new_page(viewport=WIDTHS["desktop"])
    await log_in(page, fh.base_url or "")
    await page.goto(f"{fh.base_url}/console/?route=reframe")
    await page.click("text=Replay these…")
    await page.wait_for_selector("h1:has-text('Replay 3 events')", timeout=WAIT_MS)
    await page.click("#bulk-replay button[type=submit]")
    done = await page.wait_for_selector("#bulk-done", timeout=WAIT_MS)
    assert await done.text_content() == "Done: 3 deliveries of 3 events scheduled."
    for rid in mine:
        await fh.wait_event(rid, lambda d: len(d["deliveries"]["local"]["history"]) == 2)
    untouched = await fh.event(other)
    assert untouched is not None and len(untouched["deliveries"]["local"]["history"]) == 1
    await shot(page, f"bulk-done-{store_backend}")
    await page.click("text=See these events →")  # the way on
    await page.wait_for_url("**/console/?route=reframe", timeout=WAIT_MS)
    await page.wait_for_selector(f"tr[data-request-id='{mine[0]}']", timeout=WAIT_MS)
    assert await page.locator("tr.event-row").count() == 3


@pytest.mark.one_store("the page's updates do not depend on the store")
async def test_the_overview_follows_the_live_stream(
    inprocess: InProcessFactory, signer: FalSigner, browser: Any, store_backend: str
) -> None:
    fh = await console(inprocess)
    first = await fh.send(signer, {"prompt": "before"})
    await fh.wait_state(first, "delivered")
    page = await browser.new_page(viewport=WIDTHS["phone"])
    watch = Watch(page)
    await log_in(page, fh.base_url or "")
    await page.goto(f"{fh.base_url}/console/overview")
    await page.wait_for_selector("#live[data-state=on]", timeout=WAIT_MS)
    received = "#chart-traffic .legend li:first-child .muted"
    assert await page.text_content(received) == "1"
    await page.evaluate("() => { window.stillTheSamePage = true; }")
    for n in range(2):
        await fh.wait_state(await fh.send(signer, {"prompt": f"after {n}"}), "delivered")
    await page.wait_for_function(
        f"() => document.querySelector({received!r}).textContent === '3'", timeout=WAIT_MS
    )
    assert await page.text_content("#chart-traffic .legend li:nth-child(2) .muted") == "3"
    assert await page.evaluate("() => window.stillTheSamePage") is True
    await page.click("#chart-traffic .hits rect:last-child")  # a tap reads the step out
    readout = await page.text_content("#chart-traffic .readout") or ""
    assert readout.endswith("received 3 · delivered 3 · retried 0 · dead 0"), readout
    assert watch.problems == [], watch.problems


@pytest.mark.one_store("escaping does not depend on the store")
async def test_a_script_in_a_payload_renders_as_text(
    inprocess: InProcessFactory, signer: FalSigner, browser: Any, store_backend: str
) -> None:
    fh = await console(inprocess)
    script = "<script>window.__xss = 1</script>"
    rid = await send_submitted(
        fh, signer, {"images": [{"url": "javascript:alert(1)", "file_name": script}]}, script
    )
    page = await browser.new_page()
    await log_in(page, fh.base_url or "")
    await page.goto(f"{fh.base_url}/console/events/{rid}")
    await page.wait_for_selector("#payload-tree", timeout=WAIT_MS)
    assert await page.evaluate("() => window.__xss") is None
    assert await page.text_content("blockquote.prompt") == script
    assert script in (await page.text_content("#payload-tree") or "")
    assert await page.locator("a[href^='javascript:']").count() == 0


@pytest.mark.one_store("what the browser shows does not depend on the store")
async def test_a_file_the_browser_cannot_play_says_so(
    inprocess: InProcessFactory, signer: FalSigner, files: FileServer, browser: Any,
    store_backend: str,
) -> None:  # fmt: skip
    """Downloaded and kept, but no video in it (the bytes of a broken encoder): the player's
    error becomes the note, never a black box at 0:00."""
    fh = await console(inprocess)
    files.add("/broken.mp4", data=b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 2000,
              content_type="video/mp4")  # fmt: skip
    rid = await fh.send(signer, {"video": {"url": files.url("/broken.mp4")}})
    await fh.wait_state(rid, "delivered")
    page = await browser.new_page(viewport=WIDTHS["phone"])
    await log_in(page, fh.base_url or "")
    await page.goto(f"{fh.base_url}/console/events/{rid}")
    note = await page.wait_for_selector("#files .unavailable", timeout=WAIT_MS)
    assert (await note.text_content() or "").startswith("preview not available: ")
    assert await page.locator("#files video").count() == 0
    await shot(page, "phone-light-event-unplayable")


# --- every page, both themes, both widths ------------------------------------------------------


async def seed_everything(fh: InProcess, signer: FalSigner, files: FileServer) -> dict[str, str]:
    """Events of every kind a page shows, submissions in several states, and a day of
    history spread over the overview's buckets."""
    files.add("/clip.mp4", data=tiny_mp4(seconds=2.0, width=320, height=180),
              content_type="video/mp4")  # fmt: skip
    files.add("/small.png", data=gradient_png(96, 64), content_type="image/png")
    files.add("/gone.png", status=404)
    files.add("/busy.png", status=503)  # tried again, then dead (max_attempts 2)
    ok = await send_submitted(
        fh, signer, {"video": {"url": files.url("/clip.mp4"), "file_name": "reframed.mp4"}},
        "A slow pan across a neon-lit street in the rain, reflections in every puddle",
    )  # fmt: skip
    image = await fh.send(signer, {"images": [{"url": files.url("/small.png")}]}, route="reframe")
    dead = await fh.send(signer, {"images": [{"url": files.url("/gone.png")}],
                                  "prompt": "a lighthouse " * 30})  # fmt: skip
    retried = await fh.send(signer, {"images": [{"url": files.url("/busy.png")}]})
    await fh.send(signer, {"detail": [{"msg": "bad input"}]}, status="ERROR", error="Bad input")
    for rid, state in ((ok, "delivered"), (image, "delivered"), (dead, "dead"), (retried, "dead")):
        await fh.wait_state(rid, state)
    for n, state in enumerate(("lost", "pending", "unknown")):
        sub = NewSubmission(f"00000000-aaaa-4bbb-8ccc-00000000000{n}",
                            "fal-ai/flux-pro/v1.1-ultra/redux", "default",
                            {"prompt": "a quiet harbour at dawn " * 4})  # fmt: skip
        await fh.store.record_submission(sub)
        if state != "pending":
            await fh.store.update_submission(
                sub.request_id, state=state, detail=f"fal answered 404 for {sub.request_id}"
            )
    return {"ok": ok, "image": image, "dead": dead, "retried": retried}


async def seed_history(fh: InProcess, signer: FalSigner) -> list[datetime]:
    """Six events of earlier hours, each delivered some seconds after it arrived; the
    oldest sent first (SQLite lists in commit order)."""
    now = utcnow()
    times = []
    for n in reversed(range(6)):
        rid = await fh.send(signer, {"prompt": f"earlier, {n}"})
        await fh.wait_state(rid, "delivered")
        arrived = now - timedelta(hours=3 * n + 1)
        delivered = arrived + timedelta(seconds=5 + 20 * n)
        await retime(fh.store, rid, "local", [delivered], received_at=arrived)
        times.append(delivered)
    return times


async def delivered_times(fh: InProcess) -> list[datetime]:
    """When each delivery to `local` was delivered, read from the events (not the trends)."""
    page = await fh.store.find_events(EventQuery(), limit=100)
    return [
        a.at for v in page.events for a in v.deliveries["local"].history
        if "local" in v.deliveries and a.outcome == "delivered"
    ]  # fmt: skip


@pytest.mark.one_store("the pages look the same on either store")
async def test_every_page_in_both_themes_at_both_widths(  # long: one walk through the matrix
    inprocess: InProcessFactory,
    signer: FalSigner,
    files: FileServer,
    browser: Any,
    store_backend: str,
) -> None:
    fh = await console(inprocess, delivery={"max_attempts": 2})
    await seed_history(fh, signer)  # first, as for its events' order
    ids = await seed_everything(fh, signer, files)
    window = window_ending(utcnow())
    buckets_with_deliveries = {bucket_of(at, window) for at in await delivered_times(fh)}
    base = fh.base_url or ""
    pages: list[tuple[str, str, tuple[str, ...]]] = [
        ("events", "/console/", ()),
        ("event", f"/console/events/{ids['ok']}", ()),
        ("event-image", f"/console/events/{ids['image']}", ()),
        ("event-dead", f"/console/events/{ids['dead']}", ()),
        ("event-retried", f"/console/events/{ids['retried']}", ()),
        ("actions", "/console/actions", ()),
        ("submissions", "/console/submissions", ()),
        ("overview", "/console/overview", ()),
        ("replay", "/console/replay?state=dead", ()),
        ("not-found", "/console/events/no-such-event", ("/console/events/no-such-event",)),
    ]
    for width, viewport in WIDTHS.items():
        for scheme in ("light", "dark"):
            context = await browser.new_context(viewport=viewport, color_scheme=scheme)
            prefix = f"{width}-{scheme}"
            login = await context.new_page()
            watch = Watch(login)
            await login.goto(f"{base}/console/login")
            await settled(login)
            await check_page(login, phone=width == "phone")
            await shot(login, f"{prefix}-login")
            assert watch.problems == [], watch.problems
            await log_in(login, base)
            await login.close()
            for name, path, provoked in pages:
                page = await context.new_page()
                watch = Watch(page, allowed=provoked)
                response = await page.goto(f"{base}{path}")
                expected = 404 if name == "not-found" else 200
                assert response is not None and response.status == expected, (name, response)
                await settled(page)
                assert await page.locator("h1").count() == 1, name
                await check_page(page, phone=width == "phone")
                await check_contents(page, name, buckets_with_deliveries)
                await shot(page, f"{prefix}-{name}")
                assert watch.problems == [], (prefix, name, watch.problems)
                await page.close()
            await context.close()


async def check_contents(page: Any, name: str, buckets: set[int]) -> None:
    """What each page must show, beyond fitting."""
    if name == "overview":
        charts = await page.eval_on_selector_all(".chart", "cs => cs.map(c => c.dataset.chart)")
        assert charts == ["traffic", "backlog", "latency-local"]
        points = await page.eval_on_selector_all(
            "[data-series]", "gs => gs.map(g => [g.closest('.chart').dataset.chart,"
            " g.dataset.series, Number(g.dataset.points), g.querySelectorAll('polyline').length,"
            " g.getBoundingClientRect().width])",
        )  # fmt: skip
        by_name = {(chart, series): (n, lines, drawn) for chart, series, n, lines, drawn in points}
        assert by_name[("traffic", "received")][:2] == (96, 1)  # a value in every bucket
        assert by_name[("backlog", "waiting")][:2] == (96, 1)
        p50 = by_name[("latency-local", "p50")]
        # six earlier hours and now (two buckets if a quarter hour began during the test)
        assert p50[0] == len(buckets) and len(buckets) in (7, 8), (p50, buckets)
        assert 6 <= p50[1] <= len(buckets) and p50[2] > 0  # hours apart: a line each, drawn
    if name == "event-dead":
        note = await page.text_content("#files .unavailable")
        assert note == "preview not available: the file server answered 404"
        assert await page.locator("#files video, #files img").count() == 0
        assert "not downloaded: the file server answered 404" in await page.text_content("#files")
    if name == "event-image":
        size = await page.eval_on_selector(
            "#files img", "i => [i.naturalWidth, i.naturalHeight, i.clientWidth, i.clientHeight]"
        )
        assert size == [96, 64, 96, 64]  # its own size, not stretched to the column
    if name == "event":
        assert await page.locator("#files video").count() == 1
    if name == "submissions":  # each state badge clear of its request id
        overlaps = await page.evaluate(OVERLAPPING_BADGES)
        assert overlaps == [], overlaps
    if name == "event-retried":
        outcomes = await page.eval_on_selector_all(
            "tr.attempt .badge", "bs => bs.map(b => b.textContent)"
        )
        assert outcomes == ["retry", "dead"]


# --- under a prefix ----------------------------------------------------------------------------


@pytest.mark.one_store("the paths do not depend on the store")
async def test_the_console_under_a_prefix_in_the_browser(
    inprocess: InProcessFactory,
    signer: FalSigner,
    files: FileServer,
    browser: Any,
    store_backend: str,
) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    fh = await console(inprocess)
    assert fh.app is not None
    host = await serve_asgi(Starlette(routes=[Mount("/fal", app=fh.app)]))
    try:
        files.add("/clip.mp4", data=tiny_mp4(seconds=1.0), content_type="video/mp4")
        page = await browser.new_page(viewport=WIDTHS["phone"])
        watch = Watch(page)
        await log_in(page, host.url, prefix="/fal")
        await page.wait_for_selector("#live[data-state=on]", timeout=WAIT_MS)
        rid = await fh.send(signer, {"video": {"url": files.url("/clip.mp4")}})
        row = f"tr[data-request-id='{rid}']"
        await page.wait_for_selector(f"{row} .s-delivered", timeout=WAIT_MS)  # the stream
        await page.click(f"{row} a.rid")
        await page.wait_for_function(
            "() => { const v = document.querySelector('video'); return v && v.duration > 0; }",
            timeout=WAIT_MS,
        )
        assert (await page.get_attribute("video", "src") or "").startswith("/fal/console/files/")
        await page.click("nav a:has-text('Overview')")
        await page.wait_for_selector("#chart-latency-local", timeout=WAIT_MS)
        await shot(page, "phone-light-overview-under-prefix")
        await page.click("form.logout button")
        await page.wait_for_url(f"{host.url}/fal/console/login", timeout=WAIT_MS)
        ours = [url for url in watch.requests if url.startswith(host.url)]
        assert ours and all(url.startswith(f"{host.url}/fal/console") for url in ours), ours
        assert watch.problems == [], watch.problems
    finally:
        await host.close()
