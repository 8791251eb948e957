"""Shared pieces of the command line: value types whose errors read as sentences, a help
formatter that shows every option's default, and the listening socket of the commands that
serve (bound before they say they serve)."""

from __future__ import annotations

import argparse
import errno
import socket

# Exit codes, one table for every command (README: "Exit codes").
EXIT_OK = 0  # done
EXIT_FAIL = 1  # failed: an unknown event, a refusal by fal, a delivery that failed
EXIT_USAGE = 2  # bad input or configuration: nothing was done
EXIT_UNKNOWN = 3  # the submit's answer was lost: the job may be running (not resubmitted)
EXIT_LISTEN = 4  # could not listen on --host/--port (in use, not allowed): nothing started


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option in --help with its default (options without help get one line too)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or action.option_strings == []:
            return text
        if "%(default)" in text or "default" in text:
            return text
        if isinstance(action.default, list) and not action.default:
            return text
        return f"{text} (default: %(default)s)".lstrip()


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {text!r}")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds (a number), got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


class ListenError(Exception):
    """The address to serve on cannot be had; the message says why and what to do."""


def listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, ready for uvicorn (`sockets=[...]`): bound here, first,
    so that a port in use stops the command before it says it is serving."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {where}: --host {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn's own
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {where}: {_why(exc)}") from None
    return sock


def _why(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "the port is in use by another process (stop it, or choose another --port)"
    if exc.errno == errno.EACCES:
        return "not allowed (ports below 1024 need privileges: choose another --port)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "the address is not one of this machine's (see --host)"
    return exc.strerror or str(exc)
