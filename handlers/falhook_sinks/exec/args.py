"""The exec sink's command template: checked at start-up, rendered per event, no shell.

Each argument may hold placeholders: ``{request_id}``, ``{route}``, ``{event_json}`` and
``{file:PATH}`` (``{file:video}``, ``{file:images[0]}``); ``{{`` and ``}}`` are literal
braces. A placeholder is replaced inside its argument and never splits it: a value with
spaces, quotes or ``;`` stays part of the one argument, since nothing parses it again.
The program (the first item) is never templated: payloads do not choose what runs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from falhook_sinks.naming import id_component
from falhook_sinks.options import Invalid

NAMED = ("request_id", "route", "event_json")
FILE_PREFIX = "file:"
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


@dataclass(frozen=True)
class Placeholder:
    name: str  # one of NAMED, or "file"
    path: str = ""  # the file's JSON path, for "file"

    def __str__(self) -> str:
        return "{" + (FILE_PREFIX + self.path if self.name == "file" else self.name) + "}"


Part = str | Placeholder
Argument = tuple[Part, ...]


class MissingFile(Exception):
    """The command names a file the event does not have."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


def parse_argument(text: str, option: str = "command") -> Argument:
    """An argument as literal text and placeholders; Invalid naming `option` when it is wrong."""
    parts: list[Part] = []
    literal: list[str] = []
    at = 0
    for match in _TOKEN.finditer(text):
        literal.append(text[at : match.start()])
        at = match.end()
        token = match.group(0)
        if token in ("{{", "}}"):
            literal.append(token[0])
            continue
        if match.group(1) is None:
            raise Invalid(option, f"unbalanced {token!r} in {text!r} (write {token * 2} for one)")
        if "".join(literal):
            parts.append("".join(literal))
        literal = []
        parts.append(_placeholder(match.group(1), text, option))
    literal.append(text[at:])
    if "".join(literal):
        parts.append("".join(literal))
    return tuple(parts)


def _placeholder(name: str, text: str, option: str) -> Placeholder:
    if name in NAMED:
        return Placeholder(name)
    if name.startswith(FILE_PREFIX):
        path = name[len(FILE_PREFIX) :]
        if not path.strip():
            raise Invalid(option, f"{{file:}} needs a JSON path, e.g. {{file:video}} ({text!r})")
        return Placeholder("file", path)
    known = ", ".join("{" + n + "}" for n in NAMED) + ", {file:PATH}"
    raise Invalid(option, f"unknown placeholder {{{name}}} in {text!r} (use {known})")


def parse_command(command: Sequence[str], option: str = "command") -> tuple[Argument, ...]:
    """Every argument parsed; the program must be plain text."""
    parsed = tuple(parse_argument(arg, option) for arg in command)
    program = parsed[0] if parsed else ()
    if len(program) != 1 or not isinstance(program[0], str):
        raise Invalid(option, "the program (the first item) must be a plain, non-empty name")
    return parsed


def file_paths(command: Sequence[Argument]) -> list[str]:
    """The JSON paths of the files the command names, in order, each once."""
    found = [p.path for arg in command for p in arg if isinstance(p, Placeholder) and p.path]
    return list(dict.fromkeys(found))


def safe_value(value: str) -> str:
    """An identifier from a payload (a request id, a route) as part of an argument: the same
    injective rule as folder names (naming.id_component), and never an option flag."""
    return id_component(value, argument=True)


def render(
    command: Sequence[Argument], values: Mapping[str, str], files: Mapping[str, str]
) -> list[str]:
    """The argv of one run. `values` holds NAMED's values, `files` local paths by JSON path;
    MissingFile when the command names a file that `files` lacks."""
    argv = []
    for arg in command:
        pieces = []
        for part in arg:
            if isinstance(part, str):
                pieces.append(part)
            elif part.name == "file":
                if part.path not in files:
                    raise MissingFile(part.path)
                pieces.append(files[part.path])
            else:
                pieces.append(values[part.name])
        argv.append("".join(pieces))
    return argv
