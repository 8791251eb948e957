"""A console tab, as far as the server can tell: it reads /console/api/stream and counts the
`event: event` messages. Prints `connected` once subscribed, and the count when stopped
(and whether the server had dropped the stream before).

    python bench/tail_stream.py http://127.0.0.1:8000
"""

from __future__ import annotations

import signal
import sys

import httpx


def main() -> int:
    count = 0
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        with (
            httpx.Client(timeout=None) as client,
            client.stream("GET", sys.argv[1] + "/console/api/stream") as resp,
        ):
            for line in resp.iter_lines():
                if line.startswith("retry:"):
                    print("connected", flush=True)
                elif line == "event: event":
                    count += 1
    except KeyboardInterrupt:
        pass
    # "dropped": the server ended the stream (the tab fell too far behind) before we stopped.
    print(f"messages {count} {'stopped' if stopping else 'dropped'}", flush=True)
    return 0 if stopping or count else 1


if __name__ == "__main__":
    sys.exit(main())
