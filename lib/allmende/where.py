"""Building filter expressions (allmende.v1.Expression) for Query, Subscribe and Aggregate.

    from allmende.where import all_of, any_of, compare, near, not_, within_box

    expr = all_of(
        compare("capacity", ">=", 100),
        any_of(compare("district", "in", ["Innenstadt", "West"]), not_(compare("name", "prefix", "P"))),
        near("location", 7.77, 49.44, meters=500),
    )
    client.query("kaiserslautern", "parking-sites", "traffic-planning", expression=expr)

The owner's gateway checks every field and value against the dataset's schema and answers
INVALID_ARGUMENT naming the place in the expression; these helpers only build the message.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from google.protobuf import struct_pb2

from allmende.errors import InvalidRequest
from allmende.v1 import catalog_pb2, query_pb2

__all__ = [
    "all_of",
    "any_of",
    "between",
    "compare",
    "is_null",
    "near",
    "not_",
    "order",
    "order_by",
    "value_of",
    "within_box",
]

_OPERATORS = {
    "=": query_pb2.OPERATOR_EQ,
    "==": query_pb2.OPERATOR_EQ,
    "eq": query_pb2.OPERATOR_EQ,
    "!=": query_pb2.OPERATOR_NE,
    "ne": query_pb2.OPERATOR_NE,
    "<": query_pb2.OPERATOR_LT,
    "lt": query_pb2.OPERATOR_LT,
    "<=": query_pb2.OPERATOR_LE,
    "le": query_pb2.OPERATOR_LE,
    ">": query_pb2.OPERATOR_GT,
    "gt": query_pb2.OPERATOR_GT,
    ">=": query_pb2.OPERATOR_GE,
    "ge": query_pb2.OPERATOR_GE,
    "in": query_pb2.OPERATOR_IN,
    "prefix": query_pb2.OPERATOR_PREFIX,
}


def value_of(value: Any) -> struct_pb2.Value:
    """A comparison value as a protobuf Value: text, a number, a boolean, a zoned datetime
    (RFC 3339 text) or a list of those; raises InvalidRequest for anything else."""
    out = struct_pb2.Value()
    if isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int | float):
        out.number_value = value
    elif isinstance(value, str):
        out.string_value = value
    elif isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise InvalidRequest(f"time {value.isoformat()} has no zone: add one (UTC)")
        out.string_value = value.isoformat()
    elif isinstance(value, list | tuple):
        out.list_value.values.extend(value_of(v) for v in value)
    else:
        raise InvalidRequest(f"{value!r} cannot be compared: use text, a number or a boolean")
    return out


def compare(field: str, op: str, value: Any) -> query_pb2.Expression:
    """``field op value``; op is one of = != < <= > >= in prefix (or eq, ne, lt, …)."""
    if op not in _OPERATORS:
        known = ", ".join(sorted(set(_OPERATORS) - {"=="}))
        raise InvalidRequest(f"unknown operator {op!r} for field {field!r} (known: {known})")
    cmp = query_pb2.Comparison(field=field, op=_OPERATORS[op], value=value_of(value))
    return query_pb2.Expression(comparison=cmp)


def is_null(field: str, null: bool = True) -> query_pb2.Expression:
    """True when ``field`` is null or missing (``null=False``: when it has a value)."""
    cmp = query_pb2.Comparison(field=field, op=query_pb2.OPERATOR_IS_NULL, value=value_of(null))
    return query_pb2.Expression(comparison=cmp)


def all_of(*parts: query_pb2.Expression) -> query_pb2.Expression:
    """Every part holds (AND); no parts: true."""
    out = query_pb2.Expression()
    getattr(out, "and").SetInParent()
    getattr(out, "and").items.extend(parts)
    return out


def any_of(*parts: query_pb2.Expression) -> query_pb2.Expression:
    """At least one part holds (OR); no parts: false."""
    out = query_pb2.Expression()
    getattr(out, "or").SetInParent()
    getattr(out, "or").items.extend(parts)
    return out


def not_(part: query_pb2.Expression) -> query_pb2.Expression:
    out = query_pb2.Expression()
    getattr(out, "not").CopyFrom(part)
    return out


def within_box(
    field: str, min_lon: float, min_lat: float, max_lon: float, max_lat: float
) -> query_pb2.Expression:
    """Point geometries of ``field`` inside the box (edges included)."""
    box = catalog_pb2.BoundingBox(
        min_lon=min_lon, min_lat=min_lat, max_lon=max_lon, max_lat=max_lat
    )
    return query_pb2.Expression(bbox=query_pb2.WithinBox(field=field, box=box))


def near(field: str, lon: float, lat: float, *, meters: float) -> query_pb2.Expression:
    """Point geometries of ``field`` at most ``meters`` from (lon, lat), great-circle."""
    return query_pb2.Expression(
        within=query_pb2.WithinDistance(field=field, lon=lon, lat=lat, meters=meters)
    )


def between(
    field: str, start: dt.datetime | None = None, until: dt.datetime | None = None
) -> query_pb2.Expression:
    """A timestamp ``field`` in [start, until); either end may be None (open)."""
    tr = query_pb2.TimeRange(field=field)
    for name, when in (("from", start), ("until", until)):
        if when is None:
            continue
        if when.tzinfo is None:
            raise InvalidRequest(f"time {when.isoformat()} has no zone: add one (UTC)")
        getattr(tr, name).FromDatetime(when.astimezone(dt.UTC))
    return query_pb2.Expression(time_range=tr)


def order(text: str) -> query_pb2.OrderBy:
    """``capacity`` ascending, ``-capacity`` descending."""
    return query_pb2.OrderBy(field=text.removeprefix("-"), descending=text.startswith("-"))


def order_by(*fields: str) -> list[query_pb2.OrderBy]:
    """``order_by("-capacity", "name")``: a leading minus sorts that field descending."""
    return [order(name) for name in fields]
