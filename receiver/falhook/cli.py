"""The `falhook` command: serve, worker, events list|show|replay (and submit, submissions,
emulate from falhook.fal.cli).

Errors go to stderr with a non-zero exit; `--json` prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from falhook import __version__, listing
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
from falhook.config import ConfigError, Settings, config_path_from, load_config
from falhook.metadata import MetadataError, parse_pairs
from falhook.progress import Progress
from falhook.runtime import Runtime, make_sinks, open_runtime
from falhook.store import Store, missing_store
from falhook.store.document import event_document
from falhook.store.models import DeliveryView, EventQuery, utcnow
from falhook.store.paging import InvalidCursor
from falhook.store.replay import ReplayRefused, check_sink, replay_event, replay_matching
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
    return load_config(getattr(args, "config", None))


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

    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=max(5, int(grace) + 5),
    )
    try:
        # Open console tabs do not hold the shutdown up: the console ends their streams on
        # uvicorn's signal (console/server_exit.py).
        uvicorn.Server(config).run(sockets=[sock])
    except SystemExit:  # uvicorn exits 3 when start-up failed
        if app.startup_error is None:
            raise
    if app.startup_error is not None:  # found at start-up, e.g. a sink folder not writable
        raise app.startup_error
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from falhook.app import create_app

    settings = settings_from(args)
    # Sinks are built (the config checked) with or without a worker here: a receiver whose
    # workers would refuse its config refuses it too, before it answers fal.
    sinks = make_sinks(settings) if args.no_worker else None
    app = create_app(settings, run_worker=not args.no_worker, sinks=sinks)
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


FORMATS = ("table", "json", "jsonl", "csv")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def when(text: str) -> datetime:
    """--since/--until: an ISO 8601 time (UTC unless it says), unix seconds, or a duration
    ago (`90m`, `12h`, `7d`)."""
    from datetime import timedelta

    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", text.strip())
    if match:
        return utcnow() - timedelta(seconds=float(match[1]) * _UNITS[match[2]])
    from falhook.console.params import ParamError, parse_time

    try:
        parsed = parse_time("time", text)
    except ParamError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 time, unix seconds or a duration ago (90m, 12h, 7d), "
            f"got {text!r}"
        ) from None
    assert parsed is not None
    return parsed


def _readable(settings: Settings) -> Settings:
    """The settings of a command that only lists: refused when there is no store to read (it
    would make an empty one)."""
    problem = missing_store(settings)
    if problem is not None:
        raise CLIError(problem, EXIT_USAGE)
    return settings


def _unknown_event(settings: Settings, request_id: str) -> CLIError:
    problem = missing_store(settings)
    return CLIError(
        f"no event with request_id {request_id!r}" + (f": {problem}" if problem else "")
    )


async def _not_received(store: Store, settings: Settings, request_id: str) -> CLIError:
    """An unknown event; when falhook submitted the job itself, what became of it."""
    sub = await store.get_submission(request_id)
    if sub is None:
        return _unknown_event(settings, request_id)
    ago = (utcnow() - sub.submitted_at).total_seconds()
    return CLIError(
        f"no event with request_id {request_id!r} yet: its job was submitted {ago:.0f} s ago "
        f"to {sub.endpoint} and its webhook has not come (submission state: {sub.state}; "
        "falhook submissions list)"
    )


def cmd_events_list(args: argparse.Namespace) -> int:
    settings = _readable(settings_from(args))
    fmt = "json" if args.json else args.format
    query = EventQuery(
        state=args.state,
        route=args.route,
        endpoint=args.endpoint,
        fal_status=args.fal_status,
        q=args.q,
        since=args.since,
        until=args.until,
        meta=_meta_filter(args.meta),
    )

    async def action(store: Store) -> int:
        docs: list[dict[str, Any]] = []
        cursor, first = args.cursor, True
        while True:
            try:
                page = await store.find_events(query, limit=args.limit, cursor=cursor)
            except InvalidCursor:
                raise CLIError(
                    f"--cursor {args.cursor!r}: not a cursor falhook printed", EXIT_USAGE
                ) from None
            page_docs = [event_document(v) for v in page.events]
            if fmt in ("jsonl", "csv"):  # exports stream page by page
                _print_export(fmt, page_docs, header=first)
            else:
                docs += page_docs
            cursor, first = page.next_cursor, False
            if cursor is None or not args.all:
                break
        _print_listing(fmt, docs, cursor)
        return EXIT_OK

    return asyncio.run(with_store(settings, action))


def _print_export(fmt: str, docs: list[dict[str, Any]], *, header: bool) -> None:
    if fmt == "jsonl":
        sys.stdout.write(listing.jsonl_text(docs))
    else:
        text = listing.csv_text(docs)
        sys.stdout.write(text if header else text.split("\n", 1)[1])
    sys.stdout.flush()


def _print_listing(fmt: str, docs: list[dict[str, Any]], cursor: str | None) -> None:
    """The table or the JSON document (exports are printed already), and on stderr where
    the next page starts (stdout stays the data; `--json` keeps the contract's shape)."""
    if fmt == "json":
        print(json.dumps({"events": docs}))
    elif fmt == "table":
        if docs:
            print(listing.table(docs))
        else:
            print("no events", file=sys.stderr)
    if cursor is not None:
        print(f"falhook: more events: add --cursor {cursor}", file=sys.stderr)


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
        if sub.get("metadata"):
            labels = ", ".join(f"{k}={v}" for k, v in sub["metadata"].items())
            lines.append(f"metadata     {labels}")
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
    settings = settings_from(args)
    if missing_store(settings):
        raise _unknown_event(settings, args.request_id)

    async def action(store: Store) -> int:
        view = await store.get_event(args.request_id)
        if view is None:
            raise await _not_received(store, settings, args.request_id)
        doc = event_document(view)
        print(json.dumps(doc) if args.json else _describe(doc))
        return EXIT_OK

    return asyncio.run(with_store(settings, action))


def cmd_events_replay(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    query = _replay_filters(args)
    if args.request_id is None:
        if query is None:
            raise CLIError(
                "give a REQUEST_ID, or filters (--state, --route, --since, --until, --meta) to "
                "replay every event they match",
                EXIT_USAGE,
            )
        if args.now:
            raise CLIError(
                "--now delivers one event in this command; a replay by filters schedules the "
                "deliveries for the running workers",
                EXIT_USAGE,
            )
        return asyncio.run(_replay_matching(_readable(settings), query, args))
    if query is not None:
        raise CLIError(
            "filters select events to replay: give them without a REQUEST_ID", EXIT_USAGE
        )
    if missing_store(settings):
        raise _unknown_event(settings, args.request_id)
    return asyncio.run(_replay_one(settings, args))


def _replay_filters(args: argparse.Namespace) -> EventQuery | None:
    query = EventQuery(
        state=args.state,
        route=args.route,
        since=args.since,
        until=args.until,
        meta=_meta_filter(args.meta),
    )
    return None if query == EventQuery() else query


def _meta_filter(pairs: list[str]) -> tuple[tuple[str, str], ...]:
    """--meta KEY=VALUE filters: events whose submission's metadata holds each pair."""
    try:
        return tuple(parse_pairs(pairs).items())
    except MetadataError as exc:
        raise CLIError(str(exc), EXIT_USAGE) from None


async def _replay_matching(settings: Settings, query: EventQuery, args: argparse.Namespace) -> int:
    async with open_runtime(settings) as runtime:
        try:
            done = await replay_matching(
                runtime.store, settings, query, sink=args.sink, force=args.force
            )
        except ReplayRefused as exc:
            raise CLIError(exc.detail) from None
    events = f"{done.events} event{'' if done.events == 1 else 's'}"
    print(f"scheduled {_deliveries(done.scheduled)} of {events}")
    return EXIT_OK


async def _replay_one(settings: Settings, args: argparse.Namespace) -> int:
    async with open_runtime(settings) as runtime:
        view = await runtime.store.get_event(args.request_id)
        if view is None:
            raise await _not_received(runtime.store, settings, args.request_id)
        try:
            check_sink(settings, view, args.sink)
        except ReplayRefused as exc:
            raise CLIError(exc.detail) from None
        if not args.now:
            count = await replay_event(
                runtime.store, settings, args.request_id, args.sink, args.force
            )
            print(f"scheduled {_deliveries(count)} of {args.request_id}")
            return EXIT_OK
    # --now delivers here: the sinks it delivers to (and only those: another sink's import
    # does not matter to it) are built and checked, as serve checks them, before anything
    # is changed.
    wanted = [args.sink] if args.sink else list(view.deliveries)
    runtime = Runtime(settings, worker="on_demand", sinks=make_sinks(settings, wanted))
    await runtime.start()
    try:
        await replay_event(runtime.store, settings, args.request_id, args.sink, args.force)
        return await _deliver_now(runtime, args)
    finally:
        await runtime.close()


def _deliveries(count: int) -> str:
    return f"{count} deliver{'y' if count == 1 else 'ies'}"


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
    wanted = [args.sink] if args.sink else None  # none: the event's deliveries, all of them
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
        if await worker.run_event(args.request_id, sinks=wanted) == 0:
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
    serve.add_argument(
        "--port",
        type=port,
        default=os.environ.get("PORT") or "8000",  # container platforms (Cloud Run) set PORT
        help="port to listen on (default: $PORT, else 8000)",
    )
    serve.add_argument(
        "--no-worker",
        action="store_true",
        help="receive only (scale-out); the sinks are still built and checked",
    )
    serve.set_defaults(func=cmd_serve)
    worker = sub.add_parser(
        "worker", parents=[common], help="run delivery workers only", formatter_class=HelpFormatter
    )
    worker.set_defaults(func=cmd_worker)
    console = sub.add_parser(
        "console",
        parents=[common],
        help="serve the operator console alone, on the configured store",
        description="Serve the operator console alone, on the configured store. It builds no "
        "sink and checks none (it never delivers: its replays are delivered by the running "
        "workers, which check them), so it runs where the sinks' packages and credentials "
        "are not.",
        formatter_class=HelpFormatter,
    )
    console.add_argument("--host", default="127.0.0.1", help="address to listen on")
    console.add_argument(
        "--port",
        type=port,
        default=os.environ.get("PORT") or "8080",
        help="port to listen on (default: $PORT, else 8080)",
    )
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
    ls.add_argument("--endpoint", help="only results of jobs submitted to this endpoint id")
    ls.add_argument("--fal-status", choices=("OK", "ERROR"), help="only OK or ERROR results")
    ls.add_argument("--q", metavar="TEXT", help="search request ids, payloads (prompts), errors")
    ls.add_argument(
        "--since", type=when, metavar="TIME", help="received at or after: ISO 8601, unix, or 12h"
    )
    ls.add_argument("--until", type=when, metavar="TIME", help="received before (as --since)")
    ls.add_argument(
        "--meta",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only events whose submission's metadata has KEY=VALUE (repeatable: all must)",
    )
    ls.add_argument("--limit", type=positive_int, default=100, help="at most this many events")
    ls.add_argument("--cursor", help="the next page: the cursor the previous page printed")
    ls.add_argument("--all", action="store_true", help="every page, not only the first")
    ls.add_argument(
        "--format",
        choices=FORMATS,
        default="table",
        help="table (with each dead or retrying delivery's reason), json, jsonl or csv",
    )
    ls.add_argument("--json", action="store_true", help='print {"events": [...]} (--format json)')
    ls.set_defaults(func=cmd_events_list)
    show = ev.add_parser(
        "show", parents=[common], help="one event and its deliveries", formatter_class=HelpFormatter
    )
    show.add_argument("request_id", metavar="REQUEST_ID")
    show.add_argument("--json", action="store_true", help="print the event as JSON")
    show.set_defaults(func=cmd_events_show)
    _add_replay(ev, common)


def _add_replay(
    ev: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    replay = ev.add_parser(
        "replay",
        parents=[common],
        help="make deliveries due again",
        description="Make an event's deliveries due again (all, or one sink's; dead ones "
        "included), or those of every event the filters match. A sink added to the event's "
        "route after it arrived gets its delivery made.",
        formatter_class=HelpFormatter,
    )
    replay.add_argument("request_id", metavar="REQUEST_ID", nargs="?", help="the event")
    replay.add_argument("--sink", help="only this sink's delivery (default: all)")
    replay.add_argument(
        "--now",
        action="store_true",
        help="deliver in this command (one event; it builds and checks only the sinks it "
        "delivers to)",
    )
    replay.add_argument(
        "--force", action="store_true", help="forget sinks' earlier outputs (Slack posts again)"
    )
    replay.add_argument("--timeout", type=seconds, default=600.0, help="with --now, in seconds")
    bulk = replay.add_argument_group("instead of REQUEST_ID, every event matching")
    bulk.add_argument(
        "--state",
        choices=sorted(set(EVENT_STATES) | set(DELIVERY_STATES)),
        help="events in this state",
    )
    bulk.add_argument("--route", help="events of this route")
    bulk.add_argument(
        "--since", type=when, metavar="TIME", help="received at or after: ISO 8601, unix, or 12h"
    )
    bulk.add_argument("--until", type=when, metavar="TIME", help="received before (as --since)")
    bulk.add_argument(
        "--meta",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="events whose submission's metadata has KEY=VALUE (repeatable)",
    )
    replay.set_defaults(func=cmd_events_replay)


def _command_name(args: argparse.Namespace) -> str:
    parts = [args.command]
    parts += [getattr(args, f"{args.command}_command", None) or ""]
    return " ".join(p for p in parts if p)


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield sub
                yield from _subparsers(sub)


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Like parser.parse_args, but an unknown option is reported by the (sub)command it was
    given to, with its usage and the option it may have meant (`serve --hots`: serve's usage,
    "did you mean --host?"), not by the top-level parser."""
    commands = list(_subparsers(parser))
    for command in commands:
        command.set_defaults(_parser=command)  # the deepest command given wins
    args, extras = parser.parse_known_args(argv)
    if extras:
        owner: argparse.ArgumentParser = getattr(args, "_parser", parser)
        everywhere = {o for c in commands for a in c._actions for o in a.option_strings}
        owner.error(
            f"unrecognized arguments: {' '.join(extras)}{_meant(extras, owner, everywhere)}"
        )
    return args


def _meant(extras: list[str], owner: argparse.ArgumentParser, everywhere: set[str]) -> str:
    import difflib

    own = [o for a in owner._actions for o in a.option_strings if o.startswith("--")]
    for given in (e.split("=", 1)[0] for e in extras if e.startswith("--")):
        if given in everywhere:  # a real option, of another command (emulate --config)
            return f" ({given} is an option of other commands, not of {owner.prog})"
        close = difflib.get_close_matches(given, own, n=1, cutoff=0.6)
        if close:
            return f" (did you mean {close[0]}?)"
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
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
