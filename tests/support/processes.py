"""Processes a test's command started: whether they still run, and clean-up after a failure.

Only the pids a test's own command wrote down are ever signalled.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
from pathlib import Path

from tests.support.falhook_server import wait_for

# A command (run as `python tree.py PIDS_FILE [--ignore-term] [--exit]`) that starts a child
# in its process group, writes both pids to PIDS_FILE, then sleeps (or exits at once with
# --exit, leaving the child behind). With --ignore-term both ignore SIGTERM.
TREE = textwrap.dedent("""
    import json, os, signal, subprocess, sys
    if "--ignore-term" in sys.argv:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c",
        "import signal, sys, time\\n"
        "if '--ignore-term' in sys.argv: signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
        "time.sleep(120)", *sys.argv[2:]])
    with open(sys.argv[1] + ".tmp", "w") as fh:
        json.dump([os.getpid(), child.pid], fh)
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    print("started a child", file=sys.stderr, flush=True)
    if "--exit" in sys.argv:
        sys.exit(0)
    __import__("time").sleep(120)
""")


def pids_of(path: Path) -> list[int]:
    """The pids TREE wrote, once it has (it writes them atomically)."""
    pids: list[int] = wait_for(lambda: path.exists() and json.loads(path.read_text()), timeout=30)
    return pids


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for whoever adopts it to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def kill_if_running(pids: list[int]) -> None:
    """Clean-up for a failed test: only the processes this test's own command started."""
    for pid in pids:
        if running(pid):
            os.kill(pid, signal.SIGKILL)
