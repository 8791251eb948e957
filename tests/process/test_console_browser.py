"""The console in a real browser: Debian's chromium, headless, driven by Playwright (never
a browser Playwright downloads). Log in, watch a webhook arrive without reloading, open it
and play its video's disk copy, replay it and see the new attempt, bulk-replay a filter,
and check that a payload's `<script>` is text. Screenshots of every page go to
test-artifacts/console/ (not committed) for a person to look at."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from falhook.store.models import NewSubmission
from falhook.testing import FalSigner, webhook_body
from tests.support.fileserver import FileServer
from tests.support.inprocess import InProcess, InProcessFactory
from tests.support.media import tiny_mp4
from tests.support.paths import ROOT

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts" / "console"
TOKEN = "browser-token-0123456789"
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


async def shot(page: Any, name: str, store_backend: str) -> None:
    await page.screenshot(path=str(ARTIFACTS / f"{name}-{store_backend}.png"), full_page=True)


async def log_in(page: Any, base: str) -> None:
    await page.goto(f"{base}/console/")
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
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    await page.goto(f"{base}/console/")
    await page.fill("#token", "not-the-token-at-all")
    await page.click("button[type=submit]")
    await page.wait_for_selector("text=Wrong token.", timeout=WAIT_MS)
    await shot(page, "login-refused", store_backend)
    await page.fill("#token", TOKEN)
    await page.click("button[type=submit]")
    await page.wait_for_selector("#live[data-state=on]", timeout=WAIT_MS)

    video = {"video": {"url": files.url("/clip.mp4"), "content_type": "video/mp4",
                       "file_name": "clip.mp4"}}  # fmt: skip
    rid = await send_submitted(fh, signer, video, "Extend the harbour scene at dawn")
    row = f"tr[data-request-id='{rid}']"
    await page.wait_for_selector(row, timeout=WAIT_MS)  # no reload: the stream brought it
    await page.wait_for_selector(f"{row} .s-delivered", timeout=WAIT_MS)
    await shot(page, "events", store_backend)

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
    await shot(page, "event", store_backend)

    await page.click("#replay-button")
    await page.wait_for_selector("text=Scheduled 1 delivery again.", timeout=WAIT_MS)
    await page.wait_for_function(
        "() => document.querySelectorAll('#deliveries tr.attempt').length >= 2",
        timeout=WAIT_MS,
    )
    await shot(page, "event-replayed", store_backend)


async def test_a_filter_is_bulk_replayed_with_its_count_and_progress(
    inprocess: InProcessFactory, signer: FalSigner, browser: Any, store_backend: str
) -> None:
    fh = await console(inprocess)
    mine = [await fh.send(signer, {"prompt": f"p{i}"}, route="reframe") for i in range(3)]
    other = await fh.send(signer, {"prompt": "elsewhere"})
    for rid in [*mine, other]:
        await fh.wait_state(rid, "delivered")
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    await log_in(page, fh.base_url or "")
    await page.goto(f"{fh.base_url}/console/?route=reframe")
    await page.click("text=Replay these…")
    await page.wait_for_selector("h1:has-text('Replay 3 events')", timeout=WAIT_MS)
    await shot(page, "bulk-confirm", store_backend)
    await page.click("#bulk-replay button[type=submit]")
    done = await page.wait_for_selector("#bulk-done", timeout=WAIT_MS)
    assert await done.text_content() == "Done: 3 deliveries of 3 events scheduled."
    for rid in mine:
        await fh.wait_event(rid, lambda d: len(d["deliveries"]["local"]["history"]) == 2)
    untouched = await fh.event(other)
    assert untouched is not None and len(untouched["deliveries"]["local"]["history"]) == 1


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
    await shot(page, "escaped", store_backend)


@pytest.mark.one_store("the screenshots are of the pages, whatever the store")
async def test_screenshots_of_every_page_light_dark_and_phone(
    inprocess: InProcessFactory,
    signer: FalSigner,
    files: FileServer,
    browser: Any,
    store_backend: str,
) -> None:
    fh = await console(inprocess, delivery={"max_attempts": 1})
    files.add("/clip.mp4", data=tiny_mp4(seconds=2.0, width=320, height=180),
              content_type="video/mp4")  # fmt: skip
    files.add("/gone.png", status=404)
    ok = await send_submitted(
        fh, signer, {"video": {"url": files.url("/clip.mp4"), "file_name": "reframed.mp4"}},
        "A slow pan across a neon-lit street in the rain",
    )  # fmt: skip
    gone = await fh.send(signer, {"images": [{"url": files.url("/gone.png")}]})
    await fh.send(signer, {"detail": [{"msg": "bad input"}]}, status="ERROR", error="Bad input")
    await fh.wait_state(ok, "delivered")
    await fh.wait_state(gone, "dead")
    for scheme, viewport in (
        ("light", {"width": 1280, "height": 900}),
        ("dark", {"width": 1280, "height": 900}),
        ("phone", {"width": 390, "height": 844}),
    ):
        context = await browser.new_context(
            viewport=viewport, color_scheme="dark" if scheme == "dark" else "light"
        )
        page = await context.new_page()
        await log_in(page, fh.base_url or "")
        for name, path in (
            ("events", "/console/"),
            ("event", f"/console/events/{ok}"),
            ("actions", "/console/actions"),
            ("submissions", "/console/submissions"),
            ("overview", "/console/overview"),
        ):
            response = await page.goto(f"{fh.base_url}{path}")
            assert response is not None and response.status == 200, (name, response)
            await page.wait_for_load_state("networkidle")
            assert await page.locator("h1").count() == 1, name  # the page, not an error page
            await shot(page, f"{scheme}-{name}", store_backend)
        await context.close()
