"""Shared pieces of the command line: value types whose errors read as sentences, and a help
formatter that shows every option's default."""

from __future__ import annotations

import argparse

# Exit codes, one table for every command (README: "Exit codes").
EXIT_OK = 0  # done
EXIT_FAIL = 1  # failed: an unknown event, a refusal by fal, a delivery that failed
EXIT_USAGE = 2  # bad input or configuration: nothing was done
EXIT_UNKNOWN = 3  # the submit's answer was lost: the job may be running (not resubmitted)


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
