"""Filters in Hookdeck's JSON filter syntax (shared by Hookdeck, Hookdeck Outpost and Convoy):
a filter is a JSON value that a document either matches or not. Pure: no I/O, no falhook.

- A plain value matches an equal value (strings, numbers, booleans and null, never across
  types: ``"1"`` is not ``1`` and ``true`` is not ``1``); matched against an array, it
  matches when some element matches.
- An object matches an object field by field (fields it does not name are ignored);
  matched against an array, it matches when some element matches all of its fields.
- An array matches an array holding a match for each of its elements (order ignored).
- Operators sit where a value would: ``{"size": {"$gte": 1024, "$lt": 4096}}``. Several
  keys in one object must all hold. Comparisons and ``$startsWith``/``$endsWith`` apply to
  the value itself (an array is not searched), ``$in``/``$nin`` search it:

  ========================  ==============================================================
  ``$eq`` / ``$neq``        deep (in)equality with any JSON value
  ``$gt $gte $lt $lte``     numbers with numbers, strings with strings (by code point)
  ``$in`` / ``$nin``        operand a list: the value (or one element of an array value)
                            is in it; operand a string: the value is a string containing
                            it, or an array holding it
  ``$startsWith``           the value is a string starting with the operand (a string, or
  ``$endsWith``             a list of strings: any of them)
  ``$exist``                true: the field is present (null counts); false: absent
  ``$or`` / ``$and``        a list of filters, any / all of which the value matches
  ``$not``                  a filter the value does not match
  ========================  ==============================================================

- A field that is absent matches only ``{"$exist": false}`` (and a ``$not`` of what it
  fails). A value of the wrong type for an operator simply does not match: matching never
  raises. Mistakes in the filter itself (an unknown operator, an operand of the wrong type)
  are found once, by ``Filter.parse``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Final

_MISSING: Final = object()  # a field the document does not have
_LOGICAL = frozenset({"$or", "$and", "$not"})
_COMPARISONS = frozenset({"$gt", "$gte", "$lt", "$lte"})
_STRING_TESTS = frozenset({"$startsWith", "$endsWith"})
OPERATORS: frozenset[str] = frozenset(
    {"$eq", "$neq", "$in", "$nin", "$exist", *_COMPARISONS, *_STRING_TESTS, *_LOGICAL}
)
MAX_DEPTH = 32  # a filter nested deeper than this is a mistake, not a need


class FilterError(ValueError):
    """The filter is not valid; the message names where (``payload.video.$in``) and why."""


class Filter:
    """A checked filter: ``Filter.parse(spec).matches(document)``."""

    __slots__ = ("spec",)

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.spec = spec

    @classmethod
    def parse(cls, spec: Any) -> Filter:
        """A filter from a table, or from a string of JSON (which can say null, as TOML
        cannot); FilterError naming the first mistake."""
        if isinstance(spec, str):
            try:
                spec = json.loads(spec)
            except ValueError as exc:
                raise FilterError(f"is not valid JSON ({exc})") from None
        if not isinstance(spec, dict):
            raise FilterError("must be a table (a JSON object)")
        check(spec)
        return cls(spec)

    def matches(self, document: Any) -> bool:
        return matches(document, self.spec)

    def describe(self, limit: int = 300) -> str:
        """The filter as compact JSON (cut to `limit` characters), for messages."""
        text = json.dumps(self.spec, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
        return text if len(text) <= limit else text[: limit - 1] + "…"

    def __repr__(self) -> str:
        return f"Filter({self.describe()})"


# --- checking a filter ---------------------------------------------------------------------


def check(spec: Any, where: str = "", depth: int = 0) -> None:
    """FilterError when the filter is malformed: an unknown `$` key or a bad operand."""
    if depth > MAX_DEPTH:
        raise FilterError(f"{where or 'the filter'}: nests more than {MAX_DEPTH} levels")
    if isinstance(spec, list):
        for i, item in enumerate(spec):
            check(item, f"{where}[{i}]", depth + 1)
    elif isinstance(spec, dict):
        for key, operand in spec.items():
            at = f"{where}.{key}" if where else key
            if key.startswith("$"):
                _check_operator(key, operand, at, depth)
            else:
                check(operand, at, depth + 1)
    elif not _is_scalar(spec):
        raise FilterError(f"{where or 'the filter'}: {type(spec).__name__} is not a JSON value")


def _check_operator(op: str, operand: Any, at: str, depth: int) -> None:
    if op not in OPERATORS:
        known = " ".join(sorted(OPERATORS))
        raise FilterError(f"{at}: unknown operator (known: {known})")
    problem = _operand_problem(op, operand)
    if problem:
        raise FilterError(f"{at}: {problem}")
    if op in ("$or", "$and"):
        for i, item in enumerate(operand):
            check(item, f"{at}[{i}]", depth + 1)
    elif op == "$not":
        check(operand, at, depth + 1)
    elif not _is_json(operand, depth):  # $eq, $neq: a literal value, operators or not
        raise FilterError(f"{at}: needs a JSON value")


def _operand_problem(op: str, operand: Any) -> str | None:
    """What is wrong with this operand for this operator, or None."""
    if op in ("$or", "$and"):
        return None if isinstance(operand, list) and operand else "needs a non-empty list"
    if op == "$exist":
        return None if isinstance(operand, bool) else "needs true or false"
    if op in _COMPARISONS:
        ok = _is_number(operand) or isinstance(operand, str)
        return None if ok else "needs a number or a string"
    if op in _STRING_TESTS:
        ok = isinstance(operand, str) or (
            isinstance(operand, list) and bool(operand) and all(isinstance(s, str) for s in operand)
        )
        return None if ok else "needs a string or a non-empty list of strings"
    if op in ("$in", "$nin"):
        ok = isinstance(operand, str) or (
            isinstance(operand, list) and all(_is_scalar(v) for v in operand)
        )
        return None if ok else "needs a string or a list of plain values"
    return None  # $eq, $neq, $not: any value or filter (checked by the caller)


# --- matching ------------------------------------------------------------------------------


def matches(value: Any, spec: Any) -> bool:
    """Whether `value` (a JSON document) matches the filter `spec` (already checked)."""
    if isinstance(spec, dict):
        return _matches_object(value, spec)
    if value is _MISSING:
        return False
    if isinstance(spec, list):
        return isinstance(value, list) and all(any(matches(v, s) for v in value) for s in spec)
    if isinstance(value, list):
        return any(_same(v, spec) for v in value)
    return _same(value, spec)


def _matches_object(value: Any, spec: dict[str, Any]) -> bool:
    fields = {k: s for k, s in spec.items() if not k.startswith("$")}
    for op, operand in spec.items():
        if op.startswith("$") and not _operator_holds(op, value, operand):
            return False
    if not fields:
        # `{}` or operators alone: an empty object matches any object, never a plain value.
        return len(fields) < len(spec) or isinstance(value, dict)
    if isinstance(value, list):  # some element holds every field
        return any(isinstance(v, dict) and _fields_hold(v, fields) for v in value)
    return isinstance(value, dict) and _fields_hold(value, fields)


def _fields_hold(value: dict[str, Any], fields: dict[str, Any]) -> bool:
    return all(matches(value.get(k, _MISSING), s) for k, s in fields.items())


def _operator_holds(op: str, value: Any, operand: Any) -> bool:
    if op == "$exist":
        return (value is not _MISSING) is operand
    if op == "$not":
        return not matches(value, operand)
    if op == "$or":
        return any(matches(value, s) for s in operand)
    if op == "$and":
        return all(matches(value, s) for s in operand)
    if value is _MISSING:
        return False
    return _VALUE_TESTS[op](value, operand)


def _in(value: Any, operand: Any) -> bool:
    if isinstance(operand, list):
        if isinstance(value, list):
            return any(_same(v, o) for v in value for o in operand)
        return _is_scalar(value) and any(_same(value, o) for o in operand)
    if isinstance(value, str):
        return operand in value
    if isinstance(value, list):
        return any(_same(v, operand) for v in value)
    return False


def _compare(test: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def holds(value: Any, operand: Any) -> bool:
        both_numbers = _is_number(value) and _is_number(operand)
        both_strings = isinstance(value, str) and isinstance(operand, str)
        return (both_numbers or both_strings) and test(value, operand)

    return holds


def _affix(test: Callable[[str, str], bool]) -> Callable[[Any, Any], bool]:
    def holds(value: Any, operand: Any) -> bool:
        options = operand if isinstance(operand, list) else [operand]
        return isinstance(value, str) and any(test(value, o) for o in options)

    return holds


_VALUE_TESTS: dict[str, Callable[[Any, Any], bool]] = {
    "$eq": lambda v, o: _same(v, o),
    "$neq": lambda v, o: not _same(v, o),
    "$in": _in,
    "$nin": lambda v, o: not _in(v, o),
    "$gt": _compare(lambda v, o: v > o),
    "$gte": _compare(lambda v, o: v >= o),
    "$lt": _compare(lambda v, o: v < o),
    "$lte": _compare(lambda v, o: v <= o),
    "$startsWith": _affix(str.startswith),
    "$endsWith": _affix(str.endswith),
}


def _same(a: Any, b: Any) -> bool:
    """JSON equality: numbers by value (1 == 1.0), but never a boolean for a number."""
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_json(value: Any, depth: int = 0) -> bool:
    if depth > MAX_DEPTH:
        return False
    if isinstance(value, list):
        return all(_is_json(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json(v, depth + 1) for k, v in value.items())
    return _is_scalar(value)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | bool | int | float)
