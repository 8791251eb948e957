"""The fal-facing subcommands of `falhook`: submit, submissions list|reconcile, emulate.

falhook.cli calls register(); every handler is sync, takes the parsed args and returns the
exit code: 0 done, 1 failed (message on stderr), 2 bad input or config, 3 the submit's answer
was lost (the job may be running: not resubmitted).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from falhook.argtypes import (
    EXIT_FAIL,
    EXIT_LISTEN,
    EXIT_OK,
    EXIT_UNKNOWN,
    EXIT_USAGE,
    HelpFormatter,
    ListenError,
    listen_socket,
    port,
    positive_int,
    seconds,
)
from falhook.config import ConfigError, Settings, load_config
from falhook.metadata import parse_pairs
from falhook.progress import Progress
from falhook.store.document import submission_record
from falhook.store.models import SubmissionView
from falhook.store.states import SUBMISSION_STATES

FALHOOK_URL = "http://127.0.0.1:8000"  # where `falhook serve` listens by default


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser | None = None,
) -> None:
    """Add `submit`, `submissions` and `emulate` to the falhook parser."""
    parents = [common] if common is not None else []
    _add_submit(subparsers, parents)
    _add_submissions(subparsers, parents)
    _add_emulate(subparsers)


def _add_submit(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: list[argparse.ArgumentParser],
) -> None:
    submit = subparsers.add_parser(
        "submit",
        parents=parents,
        help="submit a job to fal's queue with our webhook",
        formatter_class=HelpFormatter,
    )
    submit.add_argument("endpoint", metavar="ENDPOINT_ID", help="e.g. luma/agent/ray/v3.2/reframe")
    submit.add_argument("--route", required=True, help="the webhook route to receive it on")
    submit.add_argument(
        "--input", required=True, metavar="JSON|@FILE", help="the input as JSON, or @file.json"
    )
    submit.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="FIELD=PATH",
        help="upload a local file to fal storage and put its URL into FIELD (repeatable)",
    )
    submit.add_argument(
        "--meta",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a label of your own stored with the job and carried by its event as "
        "submission.metadata, never sent to fal (repeatable; KEY a plain name)",
    )
    submit.add_argument("--no-validate", action="store_true", help="skip the Ray 3.2 input checks")
    submit.add_argument(
        "--allow-unreachable-webhook",
        action="store_true",
        help="submit to fal's queue although [receiver].public_url is not a public https URL "
        "(fal cannot deliver the webhook; only reconciliation can fetch the result)",
    )
    submit.add_argument("--json", action="store_true", help="print the submission as JSON")
    submit.set_defaults(func=cmd_submit)


def _add_submissions(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: list[argparse.ArgumentParser],
) -> None:
    subs = subparsers.add_parser("submissions", help="jobs falhook submitted")
    actions = subs.add_subparsers(dest="submissions_command", required=True, metavar="ACTION")
    ls = actions.add_parser(
        "list", parents=parents, help="newest first", formatter_class=HelpFormatter
    )
    ls.add_argument("--state", choices=SUBMISSION_STATES, help="only this state (default: any)")
    ls.add_argument("--limit", type=positive_int, default=100, help="at most this many")
    ls.add_argument("--json", action="store_true", help='print {"submissions": [...]}')
    ls.set_defaults(func=cmd_submissions_list)
    rec = actions.add_parser(
        "reconcile",
        parents=parents,
        help="look up overdue submissions on fal's queue",
        formatter_class=HelpFormatter,
    )
    rec.add_argument(
        "--deadline", type=seconds, help="seconds without a webhook (default: [reconcile].deadline)"
    )
    rec.add_argument("--loop", action="store_true", help="keep going every --interval seconds")
    rec.add_argument(
        "--interval", type=seconds, help="seconds between passes (default: [reconcile].interval)"
    )
    rec.add_argument("--json", action="store_true", help="print the counts as JSON")
    rec.set_defaults(func=cmd_submissions_reconcile)


def _add_emulate(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # No --config: the emulator stands in for fal and reads no falhook configuration.
    emulate = subparsers.add_parser(
        "emulate",
        help="run a local fal (queue, JWKS, files, webhooks)",
        formatter_class=HelpFormatter,
    )
    emulate.add_argument("--host", default="127.0.0.1", help="address to listen on")
    emulate.add_argument("--port", type=port, default=8001, help="port to listen on")
    emulate.add_argument("--delay", type=seconds, default=2.0, help="seconds until a job is done")
    emulate.add_argument(
        "--webhook-user-id", default="emulator-user", help="the user id webhooks are signed for"
    )
    emulate.add_argument(
        "--outcome",
        choices=("ok", "error", "payload_error", "drop"),
        default="ok",
        help='the outcome of a request that asks for none (with "_emulate")',
    )
    emulate.add_argument(
        "--tls",
        action="store_true",
        help="serve https with a certificate it makes (its CA file is printed: point "
        "SSL_CERT_FILE at it)",
    )
    emulate.add_argument(
        "--tls-dir",
        default="falhook-emulator-tls",
        metavar="DIR",
        help="with --tls: where the CA and certificate are written",
    )
    emulate.add_argument(
        "--public-url",
        metavar="URL",
        help="base of the URLs it returns (default: the address it is asked on)",
    )
    emulate.add_argument(
        "--falhook-url",
        default=FALHOOK_URL,
        metavar="URL",
        help="where falhook serve listens: the printed config's [receiver].public_url",
    )
    emulate.add_argument(
        "--print-config",
        action="store_true",
        help="print the falhook.toml that uses this emulator on stdout and exit "
        "(falhook emulate --print-config > falhook.toml)",
    )
    emulate.add_argument(
        "--sample-clip",
        metavar="PATH",
        help="write a 5 s H.264 sample clip to PATH first (a video to submit with "
        "--file video_url=PATH)",
    )
    emulate.set_defaults(func=cmd_emulate)


def _settings(args: argparse.Namespace) -> Settings:
    return load_config(getattr(args, "config", None))


def _fail(message: str, code: int = EXIT_FAIL) -> int:
    print(f"falhook: {message}", file=sys.stderr)
    return code


# --- submit ------------------------------------------------------------------------------------


def _read_input(text: str) -> dict[str, Any]:
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"--input {text}: {exc.strerror}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--input is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("--input must be a JSON object")
    return doc


def _read_files(specs: list[str]) -> dict[str, str]:
    files: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--file {spec!r}: expected FIELD=PATH")
        files[name] = path
    return files


def cmd_submit(args: argparse.Namespace) -> int:
    from falhook.fal.queue import SubmitError, SubmitRefused, SubmitUnknown
    from falhook.fal.ray import ValidationError
    from falhook.fal.submit import NotRecorded, submit_sync

    try:
        settings = _settings(args)
        payload = _read_input(args.input)
        files = _read_files(args.file)
        metadata = parse_pairs(args.meta)
    except ConfigError as exc:
        return _fail(f"config error: {exc}", EXIT_USAGE)
    except ValueError as exc:
        return _fail(str(exc), EXIT_USAGE)
    try:
        sub = submit_sync(
            args.endpoint,
            payload,
            route=args.route,
            settings=settings,
            files=files,
            validate=not args.no_validate,
            allow_unreachable_webhook=args.allow_unreachable_webhook,
            show_progress=True,
            metadata=metadata,
        )
    except ValidationError as exc:
        return _fail(
            f"invalid input for {args.endpoint}: {exc} (nothing was submitted)", EXIT_USAGE
        )
    except SubmitRefused as exc:
        return _fail(f"{exc} (nothing was submitted)", EXIT_USAGE)
    except SubmitUnknown as exc:
        where = f" Recorded as {exc.local_id}." if exc.local_id else ""
        return _fail(f"{exc}{where}", EXIT_UNKNOWN)
    except NotRecorded as exc:
        print(exc.submission.request_id)  # the job runs: its id must not be lost
        return _fail(str(exc))
    except SubmitError as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps({"request_id": sub.request_id, "endpoint": sub.endpoint,
                          "route": sub.route, "webhook_url": sub.webhook_url,
                          "status_url": sub.status_url, "response_url": sub.response_url,
                          "cancel_url": sub.cancel_url, "input": sub.input,
                          "metadata": sub.metadata}))  # fmt: skip
    else:
        print(sub.request_id)
    return EXIT_OK


# --- submissions -------------------------------------------------------------------------------


def cmd_submissions_list(args: argparse.Namespace) -> int:
    from falhook.store import make_store

    async def run(settings: Settings) -> list[SubmissionView]:
        store = make_store(settings)
        await store.open()
        try:
            return await store.list_submissions(state=args.state, limit=args.limit)
        finally:
            await store.close()

    from falhook.store import missing_store

    try:
        settings = _settings(args)
    except ConfigError as exc:
        return _fail(f"config error: {exc}", EXIT_USAGE)
    problem = missing_store(settings)
    if problem is not None:  # a listing never makes a store
        return _fail(problem, EXIT_USAGE)
    views = asyncio.run(run(settings))
    docs = [submission_record(v) for v in views]
    if args.json:
        print(json.dumps({"submissions": docs}))
    elif docs:
        print(submissions_table(docs))
    else:
        print("no submissions", file=sys.stderr)
    return EXIT_OK


def submissions_table(docs: list[dict[str, Any]]) -> str:
    """Aligned columns under a header row (the detail says why a submission is lost or unknown)."""
    rows = [("SUBMITTED_AT", "STATE", "REQUEST_ID", "ENDPOINT", "ROUTE", "SECONDS", "DETAIL")]
    for d in docs:
        took = d["seconds_to_result"]
        detail = d["detail"] if d["detail"] and d["state"] in ("lost", "unknown") else ""
        rows.append(
            (d["submitted_at"], d["state"], d["request_id"], d["endpoint"], d["route"],
             "" if took is None else str(took), detail)
        )  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
    return "\n".join(line.rstrip() for line in lines)


def cmd_submissions_reconcile(args: argparse.Namespace) -> int:
    from msgspec.structs import replace

    from falhook.fal.queue import KEY_ENV, make_queue
    from falhook.fal.reconcile import Reconciler
    from falhook.store import make_store

    # Log lines go to stderr (falhook.cli.main configured logging): stdout holds the counts.
    try:
        settings = _settings(args)
    except ConfigError as exc:
        return _fail(f"config error: {exc}", EXIT_USAGE)
    if not os.environ.get(KEY_ENV):
        return _fail(f"{KEY_ENV} is not set: export {KEY_ENV}=<your fal key>", EXIT_USAGE)
    overrides = {"deadline": args.deadline, "interval": args.interval}
    config = replace(settings.reconcile, **{k: v for k, v in overrides.items() if v is not None})

    async def run() -> dict[str, int]:
        store = make_store(settings)
        await store.open()
        try:
            async with make_queue(settings) as queue:
                reconciler = Reconciler(store, queue, settings, config)
                if args.loop:
                    await reconciler.run(asyncio.Event())  # until interrupted
                with Progress("looking up submissions on fal's queue") as progress:
                    return await reconciler.run_once(progress)
        finally:
            await store.close()

    try:
        counts = asyncio.run(run())
    except KeyboardInterrupt:
        return EXIT_OK
    print(json.dumps(counts) if args.json else ", ".join(f"{k}: {v}" for k, v in counts.items()))
    return EXIT_OK if counts["errors"] == 0 else EXIT_FAIL


# --- emulate -----------------------------------------------------------------------------------


def cmd_emulate(args: argparse.Namespace) -> int:
    from falhook.fal.emulate import Emulator, serve
    from falhook.fal.sample_media import write_sample_clip
    from falhook.fal.tls import TLSUnavailable, default_hosts, make_tls_files

    public = args.public_url.rstrip("/") if args.public_url else None
    if public is not None and urlsplit(public).scheme not in ("http", "https"):
        return _fail(f"--public-url {args.public_url!r}: expected an http(s):// URL", EXIT_USAGE)
    base = public or f"{'https' if args.tls else 'http'}://{_url_host(args.host)}:{args.port}"
    falhook_url = args.falhook_url.rstrip("/")
    if urlsplit(falhook_url).scheme not in ("http", "https"):
        return _fail(f"--falhook-url {args.falhook_url!r}: expected an http(s):// URL", EXIT_USAGE)
    if args.sample_clip:
        try:
            clip = write_sample_clip(args.sample_clip)
        except FileExistsError:
            return _fail(
                f"--sample-clip {args.sample_clip}: a different file is there already; "
                "remove it or name another path",
                EXIT_USAGE,
            )
        except OSError as exc:
            return _fail(f"--sample-clip {args.sample_clip}: {exc.strerror or exc}", EXIT_USAGE)
        print(f"falhook: wrote a 5 s H.264 sample clip to {clip}", file=sys.stderr)
    if args.print_config:
        print(emulator_config(base, falhook_url), end="")
        return EXIT_OK
    tls = None
    if args.tls:
        try:
            hosts = default_hosts(args.host, urlsplit(public or "").hostname)
            tls = make_tls_files(args.tls_dir, hosts)
        except TLSUnavailable as exc:
            return _fail(str(exc), EXIT_USAGE)
        except OSError as exc:
            return _fail(f"--tls-dir {args.tls_dir}: {exc.strerror or exc}", EXIT_USAGE)
    emulator = Emulator(
        delay=args.delay,
        user_id=args.webhook_user_id,
        default_outcome=args.outcome,
        public_url=public,
    )
    try:
        sock = listen_socket(args.host, args.port)
    except ListenError as exc:
        return _fail(str(exc), EXIT_LISTEN)
    ca = tls.ca.resolve() if tls else None
    print(emulate_banner(base, args.delay, ca, falhook_url), file=sys.stderr)
    serve(emulator, sock, tls=tls)
    return EXIT_OK


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - a bind address, shown as the local one
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def emulator_config(base: str, falhook_url: str = FALHOOK_URL) -> str:
    """The falhook.toml that points falhook at an emulator on `base`: what
    `falhook emulate --print-config` prints, and the quick start's config (docs/submit.md
    shows it verbatim; a test compares them)."""
    host = urlsplit(base).hostname or ""
    lines = [
        "# falhook.toml: falhook with the local fal of `falhook emulate`, not fal's cloud",
        "[receiver]",
        f'public_url = "{falhook_url}"   # falhook serve: where the emulator sends webhooks',
        f'queue_url = "{base}"   # the emulator instead of queue.fal.run',
        f'jwks_url = "{base}/.well-known/jwks.json"',
        "",
        "[downloads]",
    ]
    if _is_local(host):
        lines.append("allow_private_hosts = true   # the emulator's files are on loopback")
    lines += [
        f'fal_media_hosts = ["{host}"]   # its private files ("_emulate": {{"access": "forbid"}})',
        f'fal_sign_url = "{base}/v1/storage/files/sign"   # ... are read through signed URLs',
        "",
        "[sinks.local]",
        'type = "disk"',
        'root = "falhook-data/files"',
        "",
        "[routes.reframe]",
        'sinks = ["local"]',
    ]
    return "\n".join(lines) + "\n"


def emulate_banner(
    base: str, delay: float, ca_file: Path | None, falhook_url: str = FALHOOK_URL
) -> str:
    """What `falhook emulate` says on stderr: where it is, the config that uses it (as
    --print-config prints it), and how to point fal-client at it."""
    netloc = urlsplit(base).netloc
    lines = [f"falhook: fal emulator on {base} (any FAL_KEY works; jobs finish after {delay:g} s)"]
    if ca_file is not None:
        lines.append(
            f"  its CA: {ca_file}  (export SSL_CERT_FILE={ca_file} for falhook and fal-client)"
        )
    lines += [
        "falhook: the config that uses it (falhook emulate --print-config > falhook.toml):",
        "",
        emulator_config(base, falhook_url),
        f"# fal-client: export FAL_QUEUE_RUN_HOST={netloc}"
        + ("" if base.startswith("https://") else "  (fal-client speaks only https: use --tls)"),
    ]
    return "\n".join(lines)


def _is_local(host: str) -> bool:
    try:
        return not ipaddress.ip_address(host).is_global
    except ValueError:
        return host == "localhost" or host.endswith(".localhost")
