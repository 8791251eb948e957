"""Tables of the config file read into typed Structs: one loader and one error mapper for
falhook's own sections and every sink's options.

    class DeliverySettings(Section):        # or SinkOptions, for a sink's options
        max_attempts: Annotated[int, Meta(ge=1)] = 12
        mode: Literal["enqueue", "inline"] = "enqueue"

        def check(self) -> None:             # rules across fields, raising Invalid
            ...

A table is a msgspec Struct: the type, its bounds (``Meta``) and the default beside each
field; rules that involve several fields in ``check()``. ``read_table`` converts a TOML table
and, when msgspec refuses it, says why in falhook's words: the problem is worked out again
from the Struct's own type information (``msgspec.inspect``) and the offending value
(``find_fault``), so nothing depends on the wording of msgspec's messages, and only when that
finds nothing (a type this module does not know) is msgspec's path used.

Where a problem is shown is the caller's: a ``Place`` writes ``[delivery].max_attempts`` or
``[sinks.team].webhook_url`` and raises its own error type.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any, TypeVar

import msgspec
from msgspec import inspect as mi

Within = tuple[str, ...]  # inside a key's value: "[0]", '"name"', ".field"


class Invalid(ValueError):
    """Raised by ``check()``: `option` (a field of the table; "" for the table itself) is
    wrong because of `problem`."""

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(problem)
        self.option = option
        self.problem = problem


class Table(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A base for tables: unknown keys are errors, fields by name only. Any Struct can be
    read; its ``check()``, when it has one, runs once it is read."""

    def check(self) -> None:
        """Rules across fields; raise Invalid(field, problem)."""


T = TypeVar("T", bound=msgspec.Struct)


class Place:
    """How the keys of the tables read at one place of the config are written."""

    def key(self, path: tuple[str, ...]) -> str:
        """The key at `path` (field names and table names from the place's root)."""
        raise NotImplementedError

    def noun(self, path: tuple[str, ...]) -> str:
        """What an unexpected key at `path` is called: "key", "option", "section"."""
        return "key"

    def shown(self, path: tuple[str, ...]) -> str:
        """How a suggested key is written in "did you mean ...?"."""
        return path[-1]

    def unknown(self, path: tuple[str, ...], known: Sequence[str]) -> str:
        """The problem of an unexpected key: the closest known name, if one is close."""
        close = difflib.get_close_matches(path[-1], list(known), n=1)
        text = f"unknown {self.noun(path)}"
        if close:
            return f"{text}; did you mean {self.shown((*path[:-1], close[0]))}?"
        return text + self.listing(path, known)

    def listing(self, path: tuple[str, ...], known: Sequence[str]) -> str:
        """What follows an unknown key with no close name ("" for nothing)."""
        return ""

    def error(self, key: str, problem: str) -> Exception:
        raise NotImplementedError


def read_table(raw: Any, spec: type[T], place: Place) -> T:
    """`raw` as a `spec`, every check passed; else ``place.error(key, problem)``."""
    try:
        table = msgspec.convert(raw, spec)
    except msgspec.ValidationError as exc:
        raise refusal(raw, spec, place, str(exc)) from None
    if _any_non_finite(raw):  # msgspec takes nan and inf; no setting means them
        fault = find_fault(raw, spec)
        if fault is not None:
            raise place.error(*fault.written(place))
    run_checks(table, (), place)
    return table


def refusal(raw: Any, spec: type[msgspec.Struct], place: Place, message: str) -> Exception:
    """The error for a table msgspec refused with `message`: found again from the types;
    only when they name nothing does msgspec's own path (and message) serve."""
    fault = find_fault(raw, spec)
    if fault is not None:
        return place.error(*fault.written(place))
    text, at, path = message.rpartition(" - at `$")
    fields = tuple(re.findall(r"\.([^.\[`]+)", path.split("[")[0])) if at else ()
    return place.error(place.key(fields), f"is not valid ({text if at else message})")


def run_checks(value: Any, path: tuple[str, ...], place: Place) -> None:
    """Every table's ``check()``, inner tables first."""
    if isinstance(value, msgspec.Struct):
        for name in value.__struct_fields__:
            run_checks(getattr(value, name), (*path, name), place)
        check = getattr(value, "check", None)
        try:
            if callable(check):
                check()
        except Invalid as exc:
            where = (*path, exc.option) if exc.option else path
            raise place.error(place.key(where), exc.problem) from None
    elif isinstance(value, dict):
        for name, item in value.items():
            if isinstance(item, msgspec.Struct | dict):
                run_checks(item, (*path, name), place)


# --- what is wrong, from the types -----------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One problem: at key `path`, inside its value at `within`."""

    path: tuple[str, ...]
    problem: str
    within: Within = ()
    known: tuple[str, ...] | None = None  # set for an unknown key: the names it could be

    def written(self, place: Place) -> tuple[str, str]:
        """(key, problem) as messages write them."""
        if self.known is not None and not self.within:
            return place.key(self.path), place.unknown(self.path, self.known)
        inside = "".join(self.within).removeprefix(".")
        problem = f"{inside} {self.problem}" if inside else self.problem
        return place.key(self.path), problem


def find_fault(raw: Any, spec: Any) -> Fault | None:
    """The first problem of `raw` read as `spec`, or None when there is none to name."""
    return _fault(raw, mi.type_info(spec), (), ())


def _fault(value: Any, t: mi.Type, path: tuple[str, ...], within: Within) -> Fault | None:
    t, about = _unwrap(t)
    if isinstance(t, mi.AnyType):
        return None
    if isinstance(t, mi.UnionType):
        return _union_fault(value, t, about, path, within)
    if isinstance(t, mi.StructType):
        return _struct_fault(value, t, about, path, within)
    if isinstance(t, mi.DictType):
        return _dict_fault(value, t, about, path, within)
    if isinstance(t, mi.ListType | mi.VarTupleType | mi.SetType | mi.FrozenSetType):
        return _list_fault(value, t, about, path, within)
    problem = _scalar_problem(value, t, about)
    return None if problem is None else Fault(path, problem, within)


def _union_fault(
    value: Any, t: mi.UnionType, about: dict[str, Any], path: tuple[str, ...], within: Within
) -> Fault | None:
    faults = [_fault(value, member, path, within) for member in t.types]
    if any(f is None for f in faults):
        return None
    # A value of the right kind for one member (0 for `int >= 1 | None`): that member's words.
    fitting = [f for f, m in zip(faults, t.types, strict=True) if _kind_fits(value, m)]
    if len(fitting) == 1:
        return fitting[0]
    return _wrong_kind(value, t, about, path, within)


def _struct_fault(
    value: Any, t: mi.StructType, about: dict[str, Any], path: tuple[str, ...], within: Within
) -> Fault | None:
    if not isinstance(value, Mapping):
        return _wrong_kind(value, t, about, path, within)
    fields = {f.encode_name: f for f in t.fields}
    if t.forbid_unknown_fields:
        for name in value:
            if name not in fields:
                where, inside = _inside(path, within, str(name))
                return Fault(where, "unknown key", inside, known=tuple(fields))
    for name, field in fields.items():
        if name in value:
            found = _fault(value[name], field.type, *_inside(path, within, name))
        elif field.required:
            where, inside = _inside(path, within, name)
            found = Fault(where, "is required" + _examples(field.type), inside)
        else:
            found = None
        if found is not None:
            return found
    return None


def _dict_fault(
    value: Any, t: mi.DictType, about: dict[str, Any], path: tuple[str, ...], within: Within
) -> Fault | None:
    if not isinstance(value, Mapping):
        return _wrong_kind(value, t, about, path, within)
    if not _length_fits(len(value), t):
        return Fault(path, f"must be {_phrase(t, about)}", within)
    # [sinks.NAME] and [routes.NAME] are tables with keys of their own; other tables' values
    # are parts of one key ([submit].schemas).
    named = not within and _is_table(t.value_type)
    for name, item in value.items():
        where = (*path, str(name)) if named else path
        inside = within if named else (*within, json.dumps(name))
        if _fault(name, t.key_type, where, inside) is not None:
            return Fault(where, f"the name must be {_phrase(t.key_type, {})}", inside)
        found = _fault(item, t.value_type, where, inside)
        if found is not None:
            return found
    return None


def _list_fault(
    value: Any,
    t: mi.ListType | mi.VarTupleType | mi.SetType | mi.FrozenSetType,
    about: dict[str, Any],
    path: tuple[str, ...],
    within: Within,
) -> Fault | None:
    if not isinstance(value, list | tuple):
        return _wrong_kind(value, t, about, path, within)
    if not _length_fits(len(value), t):
        return Fault(path, f"must be {_phrase(t, about)}", within)
    for i, item in enumerate(value):
        found = _fault(item, t.item_type, path, (*within, f"[{i}]"))
        if found is not None:
            return found
    return None


def _scalar_problem(value: Any, t: mi.Type, about: dict[str, Any]) -> str | None:
    if isinstance(t, mi.LiteralType):
        fits = any(type(value) is type(v) and value == v for v in t.values)
        return None if fits else f"must be {_phrase(t, about)}"
    if not _kind_fits(value, t):
        if not isinstance(t, _SCALARS):
            return None  # a type this module does not describe: msgspec's path will do
        return f"must be {_phrase(t, about, bounds=False)}, not {_given(value)}"
    if isinstance(t, mi.FloatType) and not math.isfinite(value):
        return "must be a finite number"
    if isinstance(t, mi.IntType | mi.FloatType) and not _bounds_fit(value, t):
        return f"must be {_phrase(t, about)}, not {_given(value)}"
    fits = not isinstance(t, mi.StrType) or (
        _length_fits(len(value), t) and not (t.pattern and not re.search(t.pattern, value))
    )
    return None if fits else f"must be {_phrase(t, about)}"


def _wrong_kind(
    value: Any, t: mi.Type, about: dict[str, Any], path: tuple[str, ...], within: Within
) -> Fault:
    return Fault(path, f"must be {_phrase(t, about, bounds=False)}, not {_given(value)}", within)


_SCALARS = (mi.BoolType, mi.IntType, mi.FloatType, mi.StrType, mi.NoneType)


# --- the words -------------------------------------------------------------------------------


def _phrase(t: mi.Type, about: dict[str, Any], *, bounds: bool = True) -> str:
    """What a valid value is: "an integer >= 1", "a non-empty list of strings"; a field's
    ``Meta(description=...)`` says it in its own words."""
    t, inner = _unwrap(t)
    about = {**inner, **about}
    if about.get("description"):
        return str(about["description"])
    if isinstance(t, mi.BoolType):
        return "true or false"
    if isinstance(t, mi.IntType):
        return "an integer" + (_bounds_text(t) if bounds else "")
    if isinstance(t, mi.FloatType):
        return "a number" + (_bounds_text(t) if bounds else "")
    if isinstance(t, mi.StrType):
        text = _sized("a", "string", t, "characters") if bounds else "a string"
        return text + (f" matching {t.pattern!r}" if bounds and t.pattern else "")
    if isinstance(t, mi.LiteralType):
        return "one of " + ", ".join(json.dumps(v) for v in t.values)
    if isinstance(t, mi.ListType | mi.VarTupleType | mi.SetType | mi.FrozenSetType):
        of = _plural(t.item_type)
        text = _sized("a", "list", t, "items") if bounds else "a list"
        return text + (f" of {of}" if of else "")
    if isinstance(t, mi.DictType):
        of = _plural(t.value_type)
        text = _sized("a", "table", t, "keys") if bounds else "a table"
        return text + (f" of {of}" if of else "")
    if isinstance(t, mi.StructType):
        return "a table"
    if isinstance(t, mi.UnionType):
        members = [m for m in t.types if not isinstance(m, mi.NoneType)]
        return " or ".join(_phrase(m, {}, bounds=bounds) for m in members)
    return "a value"


def _plural(t: mi.Type) -> str:
    """ "strings" for a list of strings; "" for a list of anything."""
    t, _ = _unwrap(t)
    names: list[tuple[type[mi.Type] | tuple[type[mi.Type], ...], str]] = [
        (mi.BoolType, "true or false values"),
        (mi.IntType, "integers"),
        (mi.FloatType, "numbers"),
        (mi.StrType, "strings"),
        ((mi.ListType, mi.VarTupleType), "lists"),
        ((mi.DictType, mi.StructType), "tables"),
    ]
    for kind, name in names:
        if isinstance(t, kind):
            return name
    return "" if isinstance(t, mi.AnyType) else "values"


def _sized(article: str, noun: str, t: Any, unit: str) -> str:
    """ "a non-empty list", "a string of at most 64 characters"."""
    low, high = t.min_length, t.max_length
    if low == 1 and high is None:
        return f"{article} non-empty {noun}"
    if low is not None and high is not None:
        return f"{article} {noun} of {low} to {high} {unit}"
    if low is not None:
        return f"{article} {noun} of at least {low} {unit}"
    if high is not None:
        return f"{article} {noun} of at most {high} {unit}"
    return f"{article} {noun}"


def _bounds_text(t: mi.IntType | mi.FloatType) -> str:
    if t.ge is not None and t.le is not None:
        text = f" from {_number(t.ge)} to {_number(t.le)}"
    else:
        ops = [(">=", t.ge), (">", t.gt), ("<=", t.le), ("<", t.lt)]
        text = "".join(
            f"{' and' if i else ''} {op} {_number(v)}"
            for i, (op, v) in enumerate((op, v) for op, v in ops if v is not None)
        )
    return text + (f" (a multiple of {_number(t.multiple_of)})" if t.multiple_of else "")


def _given(value: Any) -> str:
    """What the config holds, without echoing text (a string may be a secret)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _number(value)
    for kind, name in _KINDS:
        if isinstance(value, kind):
            return name
    return type(value).__name__


_KINDS: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (str, "a string"),
    ((list, tuple), "a list"),
    (Mapping, "a table"),
    (datetime, "a date and time"),
    (date, "a date"),
    (time, "a time"),
    (type(None), "nothing"),
)


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _examples(t: mi.Type) -> str:
    _, about = _unwrap(t)
    examples = about.get("examples")
    return f" (e.g. {', '.join(json.dumps(e) for e in examples)})" if examples else ""


# --- type information ------------------------------------------------------------------------


def _unwrap(t: mi.Type) -> tuple[mi.Type, dict[str, Any]]:
    """A type without its ``Annotated`` extras, and those extras (description, examples)."""
    about: dict[str, Any] = {}
    while isinstance(t, mi.Metadata):
        about = {**(t.extra_json_schema or {}), **about}
        t = t.type
    return t, about


def _kind_fits(value: Any, t: mi.Type) -> bool:
    """`value` is of `t`'s kind, whatever its bounds."""
    t, _ = _unwrap(t)
    if isinstance(t, mi.AnyType):
        return True
    if isinstance(t, mi.UnionType):
        return any(_kind_fits(value, m) for m in t.types)
    if isinstance(t, mi.LiteralType):
        return any(type(value) is type(v) for v in t.values)
    if isinstance(value, bool):
        return isinstance(t, mi.BoolType)
    checks: list[tuple[type[mi.Type] | tuple[type[mi.Type], ...], type | tuple[type, ...]]] = [
        (mi.IntType, int),
        (mi.FloatType, (int, float)),
        (mi.StrType, str),
        (mi.NoneType, type(None)),
        ((mi.ListType, mi.VarTupleType, mi.SetType, mi.FrozenSetType), (list, tuple)),
        ((mi.DictType, mi.StructType), Mapping),
    ]
    return any(isinstance(t, kind) and isinstance(value, py) for kind, py in checks)


def _bounds_fit(value: float, t: mi.IntType | mi.FloatType) -> bool:
    return (
        (t.ge is None or value >= t.ge)
        and (t.gt is None or value > t.gt)
        and (t.le is None or value <= t.le)
        and (t.lt is None or value < t.lt)
        and (not t.multiple_of or value % t.multiple_of == 0)
    )


def _length_fits(length: int, t: Any) -> bool:
    return (t.min_length is None or length >= t.min_length) and (
        t.max_length is None or length <= t.max_length
    )


def _is_table(t: mi.Type) -> bool:
    return isinstance(_unwrap(t)[0], mi.StructType | mi.DictType)


def _inside(path: tuple[str, ...], within: Within, name: str) -> tuple[tuple[str, ...], Within]:
    """The place of field `name`: a key of its own, unless already inside a key's value."""
    return ((*path, name), within) if not within else (path, (*within, f".{name}"))


def _any_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, Mapping):
        return any(_any_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_any_non_finite(v) for v in value)
    return False
