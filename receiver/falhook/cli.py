"""The `falhook` command: serve, worker, events list|show|replay (and submit, submissions,
emulate from falhook.fal.cli).

Errors go to stderr with a non-zero exit; `--json` prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

from falhook import __version__
from falhook.argtypes import (
    EXIT_FAIL,
    EXIT_LISTEN,
    EXIT_OK,
    EXIT_USAGE,
    HelpFormatter,
    ListenError,
    listen_socket,
    port,
    positive_int,
    seconds,
)
from falhook.config import ConfigError, Settings, config_path_from, load_settings
from falhook.progress import Progress
from falhook.runtime import Runtime, open_runtime
from falhook.store import Store
from falhook.store.document import event_document
from falhook.store.models import DeliveryView, EventView
from falhook.store.states import DELIVERY_STATES, DONE_STATES, EVENT_STATES

# A replayed delivery `--now` waits for: done, dead, or retrying later (its attempt is over).
SETTLED = DONE_STATES | {"dead", "retrying"}

if TYPE_CHECKING:
    from falhook.app import Falhook


class CLIError(Exception):
    """A problem to print on stderr as `falhook: <message>`, exiting with `code`."""

    def __init__(self, message: str, code: int = EXIT_FAIL) -> None:
        super().__init__(message)
        self.code = code


def settings_from(args: argparse.Namespace) -> Settings:
    return load_settings(config_path_from(getattr(args, "config", None)))


async def with_store(settings: Settings, action: Callable[[Store], Awaitable[int]]) -> int:
    async with open_runtime(settings) as runtime:
        return await action(runtime.store)


# --- serve / worker --------------------------------------------------------------------------


def _listen(args: argparse.Namespace) -> socket.socket:
    try:
        return listen_socket(args.host, args.port)
    except ListenError as exc:
        raise CLIError(str(exc), EXIT_LISTEN) from None


def _run_server(app: Falhook, sock: socket.socket, grace: float) -> int:
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            app.stop_streams()  # open console tabs must not hold the shutdown up
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=max(5, int(grace) + 5),
    )
    try:
        Server(config).run(sockets=[sock])
    except SystemExit:  # uvicorn exits 3 when start-up failed
        if app.startup_error is None:
            raise
    if app.startup_error is not None:  # found at start-up, e.g. a sink folder not writable
        raise app.startup_error
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from falhook.app import create_app

    settings = settings_from(args)
    app = create_app(settings, run_worker=not args.no_worker)  # sinks built: config checked
    sock = _listen(args)
    console = f"; console: http://{args.host}:{args.port}/console/"
    print(
        f"falhook: serving on http://{args.host}:{args.port} ({_routes_said(settings)}; "
        f"config: {settings.source}{console if settings.console.enabled else ''})",
        file=sys.stderr,
    )
    return _run_server(app, sock, settings.delivery.shutdown_grace)


def _routes_said(settings: Settings) -> str:
    if not settings.routes:
        return "no routes: every webhook is answered 404"
    return "routes: " + ", ".join(f"/webhooks/{r}" for r in sorted(settings.routes))


def cmd_console(args: argparse.Namespace) -> int:
    from falhook.app import create_console_app

    settings = settings_from(args)
    app = create_console_app(settings)
    sock = _listen(args)
    print(
        f"falhook: console on http://{args.host}:{args.port}/console/ (store: "
        f"{settings.store.url.split('://', 1)[0]}; config: {settings.source})",
        file=sys.stderr,
    )
    return _run_server(app, sock, grace=0)


def cmd_worker(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    runtime = Runtime(settings, worker="run")  # sinks built: config checked

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await runtime.start()
        try:
            await stop.wait()
        finally:
            await runtime.close()
        return EXIT_OK

    return asyncio.run(run())


# --- events ----------------------------------------------------------------------------------


def _table(views: Sequence[EventView]) -> str:
    rows = [("REQUEST_ID", "ROUTE", "STATE", "FAL", "RECEIVED_AT", "FILES")]
    for v in views:
        doc = event_document(v)
        rows.append(
            (v.request_id, v.route, v.state, v.fal_status, doc["received_at"], str(len(v.files)))
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def cmd_events_list(args: argparse.Namespace) -> int:
    async def action(store: Store) -> int:
        views = await store.list_events(state=args.state, route=args.route, limit=args.limit)
        if args.json:
            print(json.dumps({"events": [event_document(v) for v in views]}))
        elif views:
            print(_table(views))
        else:
            print("no events", file=sys.stderr)
        return EXIT_OK

    return asyncio.run(with_store(settings_from(args), action))


def _describe(doc: dict[str, Any]) -> str:
    lines = [
        f"request_id   {doc['request_id']}",
        f"route        {doc['route']}",
        f"state        {doc['state']}",
        f"fal status   {doc['fal_status']}",
        f"received at  {doc['received_at']}",
    ]
    if doc.get("source") != "webhook":
        lines.append(f"source       {doc.get('source')} (recovered by polling fal's queue)")
    sub = doc.get("submission")
    if sub:
        lines.append(f"endpoint     {sub['endpoint']}")
        lines.append(
            f"submitted at {sub['submitted_at']} ({sub['seconds_to_webhook']} s to result)"
        )
    if doc.get("error"):
        lines.append(f"error        {doc['error']}")
    if doc.get("payload_error"):
        lines.append(f"payload err  {doc['payload_error']}")
    lines.append("deliveries")
    for name, d in doc["deliveries"].items():
        extra = f"  last error: {d['last_error']}" if d["last_error"] else ""
        lines.append(f"  {name:<12} {d['state']:<10} attempts={d['attempts']}{extra}")
    lines.append("files" if doc["files"] else "files        (none)")
    for f in doc["files"]:
        if f.get("error"):
            lines.append(f"  {f['path']}: {f['error']}")
        else:
            size = f"{f['size']} bytes" if f.get("size") is not None else "size unknown"
            lines.append(f"  {f['path']}: {f.get('content_type') or '?'}, {size}, {f['url']}")
    return "\n".join(lines)


def cmd_events_show(args: argparse.Namespace) -> int:
    async def action(store: Store) -> int:
        view = await store.get_event(args.request_id)
        if view is None:
            raise CLIError(f"no event with request_id {args.request_id!r}")
        doc = event_document(view)
        print(json.dumps(doc) if args.json else _describe(doc))
        return EXIT_OK

    return asyncio.run(with_store(settings_from(args), action))


def cmd_events_replay(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    # --now delivers here: its sinks are built (and the config checked) before anything runs.
    runtime = Runtime(settings, worker="on_demand" if args.now else None)

    async def run() -> int:
        await runtime.start()
        try:
            return await action(runtime.store)
        finally:
            await runtime.close()

    async def action(store: Store) -> int:
        view = await store.get_event(args.request_id)
        if view is None:
            raise CLIError(f"no event with request_id {args.request_id!r}")
        if args.sink is not None and args.sink not in view.deliveries:
            known = ", ".join(sorted(view.deliveries))
            raise CLIError(f"event {args.request_id!r} has no sink {args.sink!r} (it has: {known})")
        count = await store.replay(args.request_id, args.sink, force=args.force)
        if not args.now:
            print(f"scheduled {count} deliver{'y' if count == 1 else 'ies'} of {args.request_id}")
            return EXIT_OK
        return await _deliver_now(runtime, args)

    return asyncio.run(run())


async def _deliver_now(runtime: Runtime, args: argparse.Namespace) -> int:
    """Run a worker in this process until the replayed deliveries are settled."""
    with Progress(f"delivering {args.request_id}", unit="deliveries settled") as progress:
        mine = await _settle(runtime, args, progress)
    failed = {k: d for k, d in mine.items() if d.state not in DONE_STATES}
    for name, d in sorted(mine.items()):
        print(f"{name}: {d.state}" + (f" ({d.last_error})" if d.last_error else ""))
    if failed:
        raise CLIError(f"{len(failed)} deliver{'y' if len(failed) == 1 else 'ies'} failed")
    return EXIT_OK


async def _settle(
    runtime: Runtime, args: argparse.Namespace, progress: Progress
) -> dict[str, DeliveryView]:
    worker, store = runtime.worker, runtime.store
    assert worker is not None
    wanted = [args.sink] if args.sink else None
    deadline = time.monotonic() + args.timeout
    while True:
        view = await store.get_event(args.request_id)
        assert view is not None
        mine = {k: d for k, d in view.deliveries.items() if wanted is None or k in wanted}
        settled = [d for d in mine.values() if d.state in SETTLED]
        progress.update(len(settled), len(mine))
        if len(settled) == len(mine):
            return mine
        if time.monotonic() > deadline:
            raise CLIError(f"gave up after {args.timeout:g} s; deliveries are still running")
        if await worker.run_once() == 0:
            await store.wait_for_work(0.2)  # another worker may hold them: check again


# --- parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        help="TOML config (default: $FALHOOK_CONFIG, else embedded defaults)",
    )
    parser = argparse.ArgumentParser(
        prog="falhook",
        description="Receive, verify, store and deliver fal.ai webhooks.",
        epilog="Exit codes: 0 done, 1 failed, 2 bad input or config, 3 a submit's answer lost, "
        "4 could not listen (a port in use).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"falhook {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve_and_worker(sub, common)
    _add_events(sub, common)
    from falhook.fal import cli as cli_fal

    cli_fal.register(sub, common)
    return parser


def _add_serve_and_worker(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    serve = sub.add_parser(
        "serve",
        parents=[common],
        help="run the receiver and a worker",
        formatter_class=HelpFormatter,
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=port, default=8000, help="port to listen on")
    serve.add_argument("--no-worker", action="store_true", help="receive only (scale-out)")
    serve.set_defaults(func=cmd_serve)
    worker = sub.add_parser(
        "worker", parents=[common], help="run delivery workers only", formatter_class=HelpFormatter
    )
    worker.set_defaults(func=cmd_worker)
    console = sub.add_parser(
        "console",
        parents=[common],
        help="serve the operator console alone, on the configured store",
        formatter_class=HelpFormatter,
    )
    console.add_argument("--host", default="127.0.0.1", help="address to listen on")
    console.add_argument("--port", type=port, default=8080, help="port to listen on")
    console.set_defaults(func=cmd_console)


def _add_events(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    events = sub.add_parser("events", help="list, show and replay stored events")
    ev = events.add_subparsers(dest="events_command", required=True, metavar="ACTION")
    ls = ev.add_parser("list", parents=[common], help="newest first", formatter_class=HelpFormatter)
    ls.add_argument(
        "--state",
        choices=sorted(set(EVENT_STATES) | set(DELIVERY_STATES)),
        help="only events in this state (default: any)",
    )
    ls.add_argument("--route", help="only events of this route (default: any)")
    ls.add_argument("--limit", type=positive_int, default=100, help="at most this many events")
    ls.add_argument("--json", action="store_true", help='print {"events": [...]}')
    ls.set_defaults(func=cmd_events_list)
    show = ev.add_parser(
        "show", parents=[common], help="one event and its deliveries", formatter_class=HelpFormatter
    )
    show.add_argument("request_id", metavar="REQUEST_ID")
    show.add_argument("--json", action="store_true", help="print the event as JSON")
    show.set_defaults(func=cmd_events_show)
    replay = ev.add_parser(
        "replay", parents=[common], help="make deliveries due again", formatter_class=HelpFormatter
    )
    replay.add_argument("request_id", metavar="REQUEST_ID")
    replay.add_argument("--sink", help="only this sink's delivery (default: all)")
    replay.add_argument("--now", action="store_true", help="deliver in this command")
    replay.add_argument(
        "--force", action="store_true", help="forget sinks' earlier outputs (Slack posts again)"
    )
    replay.add_argument("--timeout", type=seconds, default=600.0, help="with --now, in seconds")
    replay.set_defaults(func=cmd_events_replay)


def _command_name(args: argparse.Namespace) -> str:
    parts = [args.command]
    parts += [getattr(args, f"{args.command}_command", None) or ""]
    return " ".join(p for p in parts if p)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from falhook.logs import configure_logging, get_logger

    # Before any command runs: every log line of every command (falhook's, its stores' and
    # sinks', stdlib loggers') goes to stderr, so stdout holds only the command's output and
    # `--json` output stays one JSON document. `serve` logs to stderr too.
    configure_logging()
    get_logger("falhook.cli").debug(
        "falhook command",
        command=_command_name(args),
        config=str(config_path_from(getattr(args, "config", None)) or "embedded defaults"),
    )
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"falhook: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CLIError as exc:
        print(f"falhook: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
