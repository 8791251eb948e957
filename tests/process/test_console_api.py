"""The console's JSON API (CONTRACT.md, "Console") on both stores, in process: every
endpoint, its access rules (401, 403, CSRF) and cursor paging while events arrive. The
live stream is read over real HTTP (uvicorn on loopback): ASGITransport buffers answers."""

from __future__ import annotations

import pytest


@pytest.mark.one_store("what is imported does not depend on the store")
def test_the_console_costs_nothing_until_it_is_used(store_backend: str) -> None:
    """The Lambda entry point and the command line load neither Jinja2 nor the console."""
    import subprocess
    import sys

    probe = (
        "import sys, falhook.serverless, falhook.app, falhook.cli;"
        "print(sorted(m for m in ('jinja2', 'falhook.console.app', 'av') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
