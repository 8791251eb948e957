"""A newcomer's first run, offline, as the README's quick start writes it: the `$` lines of its
console blocks are run in order, as a shell would (`&` in the background, `>` into a file,
`export` into the environment), each `falhook emulate` / `falhook serve` on a free port
instead of 8001 / 8000. The end is a video that Chromium plays on the console's event page.

The time from the first command to the playing video is printed (`pytest -s`) and kept in
test-artifacts/newcomer.json."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.falhook_server import free_port, wait_for
from tests.support.media import video_facts
from tests.support.paths import ROOT

CHROMIUM = "/usr/bin/chromium"
PLACEHOLDER = "2b0c4f0e-..."  # the README's request id, the one `submit` printed


def section(markdown: str, title: str) -> str:
    """The text under the heading that starts with `title`, up to the next heading of its
    level or above (lines inside code blocks are never headings)."""
    lines, fenced, level, taken = markdown.splitlines(), False, 0, []
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
        heading = not fenced and re.match(r"(#+) ", line)
        if level and heading and len(heading[1]) <= level:
            break
        if level:
            taken.append(line)
        elif heading and line[len(heading[0]) :].startswith(title):
            level = len(heading[1])
    assert level, f"no heading {title!r}"
    return "\n".join(taken) + "\n"


def quick_start_commands() -> list[str]:
    """The `$` commands of the README's offline quick start, continuation lines joined."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands: list[str] = []
    text = section(readme, "Quick start: offline")
    for block in re.findall(r"^```console\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        pending = ""
        for line in block.splitlines():
            if pending:
                pending += " " + line.strip()
            elif line.startswith("$ "):
                pending = line[2:]
            if pending.endswith("\\"):
                pending = pending[:-1].rstrip()
                continue
            if pending:
                commands.append(pending)
                pending = ""
    return commands


class Shell:
    """Just enough of a shell for the quick start's lines, in one folder."""

    def __init__(self, cwd: Path, fal_port: int, port: int) -> None:
        self.cwd = cwd
        self.ports = {"emulate": ["--port", str(fal_port),
                                  "--falhook-url", f"http://127.0.0.1:{port}"],
                      "serve": ["--port", str(port)]}  # fmt: skip
        bin_dir = str(Path(sys.executable).parent)
        self.env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
        self.env.pop("FALHOOK_CONFIG", None)
        self.background: list[subprocess.Popen[bytes]] = []
        self.last_output = ""
        self.request_id = ""

    def run(self, line: str) -> None:
        words = shlex.split(line, comments=True)
        if words[0] == "source":
            return  # the venv's bin/ is on PATH already
        if words[0] == "export":
            name, _, value = words[1].partition("=")
            self.env[name] = value
            return
        if words[0] != "falhook":
            return  # ls and the like: the test checks the files itself
        words = [w.replace(PLACEHOLDER, self.request_id) for w in words]
        into = None
        if ">" in words:
            at = words.index(">")
            into, words = self.cwd / words[at + 1], words[:at]
        # A server runs until stopped: with `&`, or in a terminal of its own.
        background = words[-1] == "&" or (
            words[1] in ("emulate", "serve") and "--print-config" not in words
        )
        words = [shutil.which("falhook", path=self.env["PATH"]) or "falhook", *words[1:]]
        words = [w for w in words if w != "&"] + self.ports.get(words[1], [])
        log = (self.cwd / f"{words[1]}.log").open("ab")
        if background:
            self.background.append(
                subprocess.Popen(words, cwd=self.cwd, env=self.env, stdout=log, stderr=log)
            )
            return
        done = self._once(words, log)
        if words[1:3] == ["events", "show"]:  # a person looks again until the webhook came
            assert b"its webhook has not come" in done.stderr or done.returncode == 0, done
            done = wait_for(lambda: (d := self._once(words, log)).returncode == 0 and d,
                            timeout=60, interval=0.2, what="the event")  # fmt: skip
        assert done.returncode == 0, (line, done.stderr.decode())
        if into is not None:
            into.write_bytes(done.stdout)
        self.last_output = done.stdout.decode()
        if words[1] == "submit":
            self.request_id = self.last_output.strip()

    def _once(self, words: list[str], log: Any) -> subprocess.CompletedProcess[bytes]:
        done = subprocess.run(words, cwd=self.cwd, env=self.env, capture_output=True,
                              timeout=120, stdin=subprocess.DEVNULL)  # fmt: skip
        log.write(done.stderr)
        return done

    def close(self) -> None:
        for proc in self.background:
            proc.terminate()
        for proc in self.background:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[Shell]:
    sh = Shell(tmp_path, free_port(), free_port())
    try:
        yield sh
    finally:
        sh.close()


def test_the_readme_quick_start_runs_as_written() -> None:
    commands = quick_start_commands()
    said = [shlex.split(c, comments=True)[:2] for c in commands]
    assert ["falhook", "emulate"] in said and ["falhook", "serve"] in said
    assert ["falhook", "submit"] in said
    assert any("--sample-clip clip.mp4" in c for c in commands)
    assert any("--print-config > falhook.toml" in c for c in commands)
    assert any("--file video_url=clip.mp4" in c for c in commands)


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium")
async def test_a_newcomer_gets_a_playable_video_in_the_console_offline(
    shell: Shell, tmp_path: Path
) -> None:
    started = time.monotonic()
    commands = quick_start_commands()
    submit_at = next(i for i, c in enumerate(commands) if c.startswith("falhook submit"))
    for line in commands[:submit_at]:
        shell.run(line)
    # A person types the next line once the two servers are up; the test waits for that.
    base = f"http://127.0.0.1:{shell.ports['serve'][1]}"
    wait_for(lambda: _ready(base), timeout=60, what="falhook serve to be ready")
    for line in commands[submit_at:]:
        shell.run(line)
    rid = shell.request_id
    assert re.fullmatch(r"[0-9a-f-]{36}", rid), shell.last_output

    def delivered() -> bool:
        done = subprocess.run(
            ["falhook", "events", "show", rid, "--json", "--config", "falhook.toml"],
            cwd=tmp_path, env=shell.env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return done.returncode == 0 and json.loads(done.stdout)["state"] == "delivered"

    wait_for(delivered, timeout=60, interval=0.2, what="the event to be delivered")
    video = tmp_path / "falhook-data" / "files" / "reframe" / rid / "output.mp4"
    facts = video_facts(video.read_bytes())
    assert facts["codec"] == "h264" and facts["frames"] == 120
    assert (video.parent / "event.json").exists()

    page_html = httpx.get(f"{base}/console/events/{rid}", timeout=10)
    assert page_html.status_code == 200
    src = re.search(r'<video[^>]* src="([^"]+)"', page_html.text)
    assert src, "the event page has a video player"
    served = httpx.get(base + src[1].replace("&amp;", "&"), timeout=10)
    assert served.status_code == 200 and served.content == video.read_bytes()
    assert served.headers["content-type"].startswith("video/mp4")

    playing = await _plays_in_chromium(f"{base}/console/events/{rid}")
    seconds = round(time.monotonic() - started, 1)
    print(f"\nnewcomer: first command to a playing video in {seconds} s")
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "newcomer.json").write_text(json.dumps({"seconds": seconds, **playing}))
    assert playing["width"] == 640 and playing["time"] > 0


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


async def _plays_in_chromium(url: str) -> dict[str, Any]:
    """Open the event page (loopback: no token), play its video and report what the player
    says: its size and how far it got, or fail on a media error."""
    from playwright.async_api import async_playwright

    from tests.process.test_console_browser import LAUNCH_ARGS, WAIT_MS

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            await page.goto(url)
            await page.wait_for_selector("video", timeout=WAIT_MS)
            await page.evaluate(
                "() => { const v = document.querySelector('video'); v.muted = true;"
                " return v.play(); }"
            )
            await page.wait_for_function(
                "() => { const v = document.querySelector('video');"
                " if (v.error) throw new Error('media error ' + v.error.code);"
                " return v.currentTime > 0.5 && v.videoWidth > 0; }",
                timeout=WAIT_MS,
            )
            result: dict[str, Any] = await page.evaluate(
                "() => { const v = document.querySelector('video');"
                " return {width: v.videoWidth, height: v.videoHeight, time: v.currentTime,"
                " duration: v.duration}; }"
            )
            return result
        finally:
            await browser.close()
