"""The filter matcher (falhook.filters): Hookdeck's JSON filter syntax, as a table of
(document, filter, expected) cases: first the examples of Hookdeck's and Outpost's filter
documentation, then every operator, nesting, arrays, missing fields and type mismatches.
Pure and in-process."""

from __future__ import annotations

from typing import Any

import pytest

from falhook.filters import Filter, FilterError, matches

ORDER = {"type": "order/created", "order": {"id": 123}}
PRODUCT = {"product": {"title": "A product", "inventory": 0}}
ITEMS = {"order": {"id": 123, "items": [{"id": 456, "title": "My product"}]}}
GIFT = {"product": {"title": "Gift Card", "tags": ["gift", "something", "another"]}}
PAID = {
    "topic": "order.created",
    "time": "2025-01-15T10:00:00Z",
    "metadata": {"source": "api"},
    "data": {
        "status": "paid",
        "currency": "usd",
        "amount": 250,
        "email": "a@example.com",
        "customer": {"tier": "premium"},
        "tags": ["urgent", "support"],
        "discount_code": "X1",
        "deleted_at": None,
    },
}

# Hookdeck's documentation (hookdeck.com/docs/filters) and Outpost's destination filters
# (hookdeck/outpost docs/pages/features/filter.mdx): each example, and the same filter
# against a document it must not let through.
DOCUMENTED: list[tuple[Any, Any, bool]] = [
    (ORDER, {"type": "order/created"}, True),
    ({"type": "order/updated"}, {"type": "order/created"}, False),
    (PRODUCT, {"product": {"inventory": 0}}, True),
    ({"product": {"inventory": 3}}, {"product": {"inventory": 0}}, False),
    (ITEMS, {"order": {"items": {"id": 456}}}, True),
    (ITEMS, {"order": {"items": {"id": 789}}}, False),
    (GIFT, {"product": {"tags": "gift"}}, True),
    (GIFT, {"product": {"tags": "voucher"}}, False),
    (GIFT, {"product": {"tags": ["gift", "something"]}}, True),  # must contain all
    (GIFT, {"product": {"tags": ["gift", "voucher"]}}, False),
    ({"product": {"inventory": 5}}, {"product": {"inventory": {"$lte": 10}}}, True),
    ({"product": {"inventory": 11}}, {"product": {"inventory": {"$lte": 10}}}, False),
    ({"product": {"inventory": 5}}, {"product": {"inventory": {"$or": [1, 5]}}}, True),
    ({"hello": "world"}, {"$or": [{"hello": "johny"}, {"hello": "mark"}]}, False),
    (PAID, {"data": {"status": "paid"}}, True),
    (PAID, {"data": {"status": "paid", "currency": "usd"}}, True),
    (PAID, {"data": {"status": "paid", "currency": "eur"}}, False),
    (PAID, {"data": {"customer": {"tier": "premium"}}}, True),
    (PAID, {"data": {"tags": "urgent"}}, True),
    (PAID, {"data": {"amount": {"$gte": 100}}}, True),
    (PAID, {"data": {"amount": {"$gte": 100, "$lt": 500}}}, True),
    (PAID, {"data": {"amount": {"$gte": 300, "$lt": 500}}}, False),
    (PAID, {"data": {"status": {"$in": ["pending", "processing", "completed"]}}}, False),
    (PAID, {"data": {"status": {"$in": ["paid", "shipped"]}}}, True),
    (PAID, {"data": {"email": {"$endsWith": "@example.com"}}}, True),
    (PAID, {"data": {"discount_code": {"$exist": True}}}, True),
    (PAID, {"data": {"deleted_at": {"$exist": False}}}, False),  # present, though null
    (PAID, {"data": {"refund": {"$exist": False}}}, True),
    (PAID, {"$or": [{"data": {"status": "paid"}}, {"data": {"status": "shipped"}}]}, True),
    (PAID, {"$and": [{"data": {"status": "active"}}, {"data": {"amount": {"$gte": 100}}}]}, False),
    (PAID, {"data": {"status": {"$not": {"$in": ["cancelled", "refunded"]}}}}, True),
    (PAID, {"metadata": {"source": "api"}}, True),
    (PAID, {"time": {"$gte": "2025-01-01T00:00:00Z", "$lt": "2025-02-01T00:00:00Z"}}, True),
    (PAID, {"time": {"$gte": "2025-02-01T00:00:00Z"}}, False),
]

# A falhook event document: what sink filters are matched against.
EVENT = {
    "request_id": "764cabcf-b745-4b3e-ae38-1200304cf45b",
    "route": "reframe",
    "endpoint": "luma/agent/ray/v3.2/reframe",
    "fal_status": "OK",
    "error": None,
    "payload_error": None,
    "source": "webhook",
    "files": [
        {"path": "video", "content_type": "video/mp4", "size": 5242880},
        {"path": "exr_file", "content_type": "application/zip", "size": 1024},
    ],
    "submission": {
        "endpoint": "luma/agent/ray/v3.2/reframe",
        "input": {"prompt": "Extend the scene to the left", "aspect_ratio": "21:9"},
    },
    "payload": {
        "video": {"url": "https://v3.fal.media/x.mp4", "content_type": "video/mp4", "width": 2560},
        "seed": 7,
    },
}

OPERATORS: list[tuple[Any, Any, bool]] = [
    # plain equality, never across types
    (EVENT, {"fal_status": "OK"}, True),
    (EVENT, {"fal_status": "ERROR"}, False),
    (EVENT, {"payload": {"seed": 7}}, True),
    (EVENT, {"payload": {"seed": 7.0}}, True),
    (EVENT, {"payload": {"seed": "7"}}, False),
    ({"flag": True}, {"flag": 1}, False),
    ({"count": 1}, {"count": True}, False),
    (EVENT, {"error": None}, True),
    (EVENT, {"payload": {"video": "x"}}, False),  # an object is not a plain value
    (EVENT, {"route": {"name": "reframe"}}, False),  # a plain value has no fields
    # $eq / $neq: deep, the array as a whole
    (EVENT, {"fal_status": {"$eq": "OK"}}, True),
    (EVENT, {"fal_status": {"$neq": "OK"}}, False),
    (EVENT, {"endpoint": {"$neq": "fal-ai/flux"}}, True),
    ({"tags": ["a", "b"]}, {"tags": {"$eq": ["a", "b"]}}, True),
    ({"tags": ["a", "b", "c"]}, {"tags": {"$eq": ["a", "b"]}}, False),
    ({"tags": ["a", "b"]}, {"tags": {"$eq": "a"}}, False),
    (
        EVENT,
        {
            "submission": {
                "input": {"$eq": {"prompt": "Extend the scene to the left", "aspect_ratio": "21:9"}}
            }
        },
        True,
    ),
    (EVENT, {"submission": {"input": {"$eq": {"prompt": "x"}}}}, False),
    (EVENT, {"error": {"$eq": None}}, True),
    (EVENT, {"error": {"$neq": None}}, False),
    # comparisons: numbers with numbers, strings with strings, nothing else
    (EVENT, {"payload": {"video": {"width": {"$gt": 1920}}}}, True),
    (EVENT, {"payload": {"video": {"width": {"$gt": 2560}}}}, False),
    (EVENT, {"payload": {"video": {"width": {"$gte": 2560}}}}, True),
    (EVENT, {"payload": {"video": {"width": {"$lt": 2560}}}}, False),
    (EVENT, {"payload": {"video": {"width": {"$lte": 2560.0}}}}, True),
    (EVENT, {"payload": {"video": {"width": {"$gt": "1"}}}}, False),
    (EVENT, {"route": {"$gt": "r"}}, True),
    (EVENT, {"route": {"$lt": 5}}, False),
    ({"ok": True}, {"ok": {"$gt": 0}}, False),
    (EVENT, {"files": {"size": {"$gt": 4_000_000}}}, True),  # some file is large
    (EVENT, {"files": {"size": {"$gt": 9_000_000}}}, False),
    # $in / $nin
    (EVENT, {"route": {"$in": ["reframe", "upscale"]}}, True),
    (EVENT, {"route": {"$in": ["upscale"]}}, False),
    (EVENT, {"route": {"$nin": ["upscale"]}}, True),
    (EVENT, {"route": {"$nin": ["reframe"]}}, False),
    (EVENT, {"submission": {"input": {"prompt": {"$in": "scene"}}}}, True),  # substring
    (EVENT, {"submission": {"input": {"prompt": {"$nin": "scene"}}}}, False),
    ({"tags": ["a", "b"]}, {"tags": {"$in": "a"}}, True),  # the array holds it
    ({"tags": ["a", "b"]}, {"tags": {"$nin": "a"}}, False),
    ({"tags": ["a", "b"]}, {"tags": {"$in": ["x", "b"]}}, True),  # one element is listed
    ({"tags": ["a", "b"]}, {"tags": {"$nin": ["x", "y"]}}, True),
    (EVENT, {"payload": {"video": {"$in": ["x"]}}}, False),  # an object is in no list
    (EVENT, {"payload": {"seed": {"$in": [7, 8]}}}, True),
    (EVENT, {"payload": {"seed": {"$in": "7"}}}, False),
    # $startsWith / $endsWith: strings only, one of a list
    (EVENT, {"endpoint": {"$startsWith": "luma/"}}, True),
    (EVENT, {"endpoint": {"$startsWith": "fal-ai/"}}, False),
    (EVENT, {"endpoint": {"$startsWith": ["fal-ai/", "luma/"]}}, True),
    (EVENT, {"endpoint": {"$endsWith": "/reframe"}}, True),
    (EVENT, {"endpoint": {"$endsWith": ["/modify", "/upscale"]}}, False),
    (EVENT, {"payload": {"seed": {"$startsWith": "7"}}}, False),
    (EVENT, {"payload": {"video": {"content_type": {"$startsWith": "video/"}}}}, True),
    (EVENT, {"files": {"content_type": {"$startsWith": "application/"}}}, True),
    ({"tags": ["video/mp4"]}, {"tags": {"$startsWith": "video/"}}, False),  # not searched
    # $exist
    (EVENT, {"payload": {"video": {"$exist": True}}}, True),
    (EVENT, {"payload": {"exr_file": {"$exist": True}}}, False),
    (EVENT, {"payload": {"exr_file": {"$exist": False}}}, True),
    (EVENT, {"payload_error": {"$exist": True}}, True),  # null is present
    (EVENT, {"nothing": {"deeper": {"$exist": False}}}, False),  # no `nothing` to look in
    # $or / $and / $not, at the top and on a field
    (EVENT, {"$or": [{"fal_status": "ERROR"}, {"payload_error": {"$neq": None}}]}, False),
    (EVENT, {"$or": [{"fal_status": "ERROR"}, {"route": "reframe"}]}, True),
    (EVENT, {"$and": [{"fal_status": "OK"}, {"route": "reframe"}]}, True),
    (EVENT, {"$and": [{"fal_status": "OK"}, {"route": "upscale"}]}, False),
    (EVENT, {"$not": {"fal_status": "OK"}}, False),
    (EVENT, {"$not": {"fal_status": "ERROR"}}, True),
    (EVENT, {"route": {"$not": "upscale"}}, True),
    (EVENT, {"route": {"$or": ["upscale", {"$startsWith": "re"}]}}, True),
    (EVENT, {"payload": {"seed": {"$and": [{"$gt": 5}, {"$lt": 10}]}}}, True),
    ({"tags": ["a", "b"]}, {"tags": {"$not": "a"}}, False),  # "does not contain a"
    (EVENT, {"$not": {"payload": {"exr_file": {"$exist": True}}}, "fal_status": "OK"}, True),
    # nesting and arrays of objects: one element must hold every field
    (EVENT, {"files": {"path": "video", "content_type": "video/mp4"}}, True),
    (EVENT, {"files": {"path": "video", "content_type": "application/zip"}}, False),
    (EVENT, {"files": [{"path": "video"}, {"path": "exr_file"}]}, True),
    (EVENT, {"files": [{"path": "video"}, {"path": "images[0]"}]}, False),
    ({"matrix": [[1, 2], [3]]}, {"matrix": 3}, False),  # one level of arrays only
    ({"matrix": [[1, 2], [3]]}, {"matrix": [[3]]}, True),
    # missing fields: only $exist false (or a $not of what fails) lets them through
    (EVENT, {"payload": {"missing": "x"}}, False),
    (EVENT, {"payload": {"missing": {"$neq": "x"}}}, False),
    (EVENT, {"payload": {"missing": {"$nin": ["x"]}}}, False),
    (EVENT, {"payload": {"missing": {"$not": {"$eq": "x"}}}}, True),
    (EVENT, {"payload": {"missing": {"$or": [{"$exist": False}, "x"]}}}, True),
    (EVENT, {"payload": {"missing": {}}}, False),
    # empty objects
    (EVENT, {}, True),
    (EVENT, {"payload": {}}, True),
    (EVENT, {"route": {}}, False),
    # a document that is not an object (Hookdeck filters whole bodies too)
    (False, False, True),
    ("/test", "/test", True),
    (10, {"$gte": 5}, True),
    ([1, 2, 3], 3, True),
    ([1, 2, 3], {"$eq": 3}, False),
]


@pytest.mark.parametrize(("document", "spec", "expected"), DOCUMENTED + OPERATORS)
def test_the_filter_matches_as_documented(document: Any, spec: Any, expected: bool) -> None:
    assert matches(document, spec) is expected
    # $not inverts every case.
    assert matches(document, {"$not": spec}) is (not expected)


def test_a_filter_given_as_json_can_say_null() -> None:
    f = Filter.parse('{"error": null, "fal_status": {"$in": ["OK"]}}')
    assert f.matches({"error": None, "fal_status": "OK"})
    assert not f.matches({"error": "boom", "fal_status": "OK"})


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"route": {"$regex": "^re"}}, "route.$regex: unknown operator"),
        ({"$nor": []}, "$nor: unknown operator"),
        ({"size": {"$gt": [1]}}, "size.$gt: needs a number or a string"),
        ({"size": {"$lte": True}}, "size.$lte: needs a number or a string"),
        ({"size": {"$lt": None}}, "size.$lt: needs a number or a string"),
        ({"x": {"$exist": "yes"}}, "x.$exist: needs true or false"),
        ({"$or": {"a": 1}}, "$or: needs a non-empty list"),
        ({"$and": []}, "$and: needs a non-empty list"),
        ({"x": {"$startsWith": 3}}, "x.$startsWith: needs a string or a non-empty list"),
        ({"x": {"$endsWith": ["a", 1]}}, "x.$endsWith: needs a string or a non-empty list"),
        ({"x": {"$in": 7}}, "x.$in: needs a string or a list of plain values"),
        ({"x": {"$nin": [{"a": 1}]}}, "x.$nin: needs a string or a list of plain values"),
        ({"$or": [{"a": {"$bad": 1}}]}, "$or[0].a.$bad: unknown operator"),
        ({"$not": {"a": {"$in": {}}}}, "$not.a.$in: needs a string"),
        (["a"], "must be a table"),
        ("not json", "is not valid JSON"),
        ('["a"]', "must be a table"),
    ],
)
def test_a_malformed_filter_is_refused_naming_where(spec: Any, problem: str) -> None:
    with pytest.raises(FilterError, match=problem.replace("$", r"\$").replace("[", r"\[")):
        Filter.parse(spec)


def test_a_filter_nested_too_deep_is_refused() -> None:
    spec: dict[str, Any] = {"a": 1}
    for _ in range(40):
        spec = {"a": spec}
    with pytest.raises(FilterError, match="nests more than"):
        Filter.parse(spec)


def test_describe_is_compact_json_cut_to_a_limit() -> None:
    f = Filter.parse({"fal_status": "ERROR"})
    assert f.describe() == '{"fal_status":"ERROR"}'
    long = Filter.parse({"route": {"$in": [f"r{i}" for i in range(200)]}})
    assert len(long.describe(50)) == 50 and long.describe(50).endswith("…")
