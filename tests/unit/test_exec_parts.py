"""The exec sink's pure parts: the command template (checked at start-up, rendered without a
shell) and the bounded tail of a stream."""

from __future__ import annotations

import hashlib

import pytest

from falhook_sinks.exec.args import (
    MissingFile,
    Placeholder,
    parse_argument,
    parse_command,
    render,
    safe_value,
)
from falhook_sinks.exec.tail import CUT_MARK, LineTail
from falhook_sinks.options import Invalid

VALUES = {"request_id": "req-1", "route": "reframe", "event_json": "/run/event.json"}


def test_placeholders_are_replaced_inside_one_argument() -> None:
    command = parse_command(["tool", "--out=/srv/{route}/{request_id}.webm", "{file:images[0]}"])
    argv = render(command, VALUES, {"images[0]": "/run/files/a.png"})
    assert argv == ["tool", "--out=/srv/reframe/req-1.webm", "/run/files/a.png"]


def test_double_braces_are_literal_braces() -> None:
    command = parse_command(["jq", "{{.request_id}}", "{{{request_id}}}"])
    assert render(command, VALUES, {}) == ["jq", "{.request_id}", "{req-1}"]


def test_a_value_with_spaces_and_shell_syntax_stays_one_argument() -> None:
    hostile = "a b; rm -rf / $(reboot) `id` 'q' \"d\""
    argv = render(parse_command(["tool", "{event_json}"]), {**VALUES, "event_json": hostile}, {})
    assert argv == ["tool", hostile]


def test_file_paths_keep_everything_up_to_the_closing_brace() -> None:
    assert parse_argument("{file:outputs.video}") == (Placeholder("file", "outputs.video"),)
    assert parse_argument("x{file:a[2].b}y") == ("x", Placeholder("file", "a[2].b"), "y")


@pytest.mark.parametrize(
    ("argument", "problem"),
    [
        ("{nope}", "unknown placeholder {nope}"),
        ("{request_id", "unbalanced '{'"),
        ("request_id}", "unbalanced '}'"),
        ("{file:}", "{file:} needs a JSON path"),
        ("{request_id:>10}", "unknown placeholder"),
        ("{}", "unknown placeholder {}"),
    ],
)
def test_a_malformed_argument_is_invalid_naming_the_option(argument: str, problem: str) -> None:
    with pytest.raises(Invalid) as err:
        parse_command(["tool", argument])
    assert err.value.option == "command"
    assert problem in err.value.problem


@pytest.mark.parametrize("program", ["{request_id}", "/opt/{route}/tool", ""])
def test_the_program_is_never_templated(program: str) -> None:
    with pytest.raises(Invalid, match="the program"):
        parse_command([program, "x"])


def test_a_file_the_event_lacks_is_named() -> None:
    with pytest.raises(MissingFile) as err:
        render(parse_command(["tool", "{file:video}"]), VALUES, {"images[0]": "/x"})
    assert err.value.path == "video"


def test_a_clean_identifier_is_its_own_value() -> None:
    rid = "2b0c4f0e-8a6d-4f1e-9c43-5d1b7f0a9e21"
    assert safe_value(rid) == rid


@pytest.mark.parametrize(
    ("value", "readable"),
    [
        ("--delete", "delete"),  # never an option flag
        ("../../etc/passwd", "_.._etc_passwd"),  # never a path
        ("..", "id"),
        ("a b;c", "a_b_c"),
        ("x" * 129, "x" * 96),
    ],
)
def test_other_identifiers_get_a_readable_prefix_and_their_hash(value: str, readable: str) -> None:
    digest = hashlib.sha256(value.encode()).hexdigest()[:16]
    assert safe_value(value) == f"{readable}~{digest}"


def test_different_identifiers_never_share_a_value() -> None:
    values = ["a b", "a_b", "a/b", "-a_b", ".a_b"]
    assert len({safe_value(v) for v in values}) == len(values)


def test_the_tail_keeps_the_last_lines_in_order() -> None:
    tail = LineTail(3)
    tail.feed(b"one\ntwo\nthr")
    tail.feed(b"ee\nfour\nfive")
    assert tail.lines() == ["three", "four", "five"]


def test_carriage_returns_end_lines_and_blank_lines_are_dropped() -> None:
    tail = LineTail(5)
    tail.feed(b"frame=1\rframe=2\r\n\n\nError opening input\r\n")
    assert tail.lines() == ["frame=1", "frame=2", "Error opening input"]


def test_a_line_without_an_end_is_cut_and_marked() -> None:
    tail = LineTail(2, max_line_bytes=10)
    for _ in range(1000):
        tail.feed(b"x" * 10_000)
    tail.feed(b"\nlast")
    assert tail.lines() == ["x" * 10 + CUT_MARK, "last"]
    assert tail.total_bytes == 10_000_005


def test_control_characters_and_bad_utf8_are_made_readable() -> None:
    tail = LineTail(2)
    tail.feed(b"\x1b[31mred\x1b[0m \xff\xfe\n")
    assert tail.lines() == ["?[31mred?[0m \ufffd\ufffd"]


def test_many_lines_in_one_chunk_keep_only_the_last() -> None:
    tail = LineTail(2)
    tail.feed(b"".join(b"line %d\n" % i for i in range(100_000)))
    assert tail.lines() == ["line 99998", "line 99999"]


def test_lines_are_the_same_in_one_chunk_or_byte_by_byte() -> None:
    stream = b"x\nreal\n\xc2\xa0\n\x0c\nlast\n  \n"
    whole, pieces = LineTail(2), LineTail(2)
    whole.feed(stream)
    for i in range(len(stream)):
        pieces.feed(stream[i : i + 1])
    assert whole.lines() == pieces.lines() == ["?", "last"]


def test_zero_lines_keeps_nothing() -> None:
    tail = LineTail(0)
    tail.feed(b"a\nb")
    assert tail.lines() == []
