"""Compiles a Filter's expression tree (and/or/not, comparisons, spatial and temporal tests) to SQL.

The SQL runs over one JSON column per record (``json_extract``); every JSON path and every value
is bound as a parameter, never spliced. Logic is two-valued: each test is true or false, never
SQL NULL. A comparison (``ne`` included), a prefix, a box, a distance or a time range on a null
or missing field is false, so ``not`` of it is true; ``is_null`` is true for null and missing.

Timestamps compare as instants: ``instant_key_sql`` turns a stored RFC 3339 text (a date, or a
date and time with ``Z``, an offset or neither, and up to nine fraction digits) into a fixed-width
UTC key, ``2026-05-01T06:00:00000000000``, whose text order is the order in time.
"""

from __future__ import annotations

import math
import re
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from allmende.errors import InvalidRequest
from allmende.store.filters import Condition, SqlFilter
from allmende.v1 import query_pb2
from allmende.where import value_of

__all__ = [
    "EARTH_RADIUS_M",
    "MAX_DEPTH",
    "MAX_IN_VALUES",
    "MAX_NODES",
    "and_filters",
    "check_column",
    "compile_expression",
    "compile_request_filter",
    "conditions_to_expression",
    "filter_fields",
    "instant_key",
    "instant_key_sql",
    "json_path",
    "register_functions",
]

EARTH_RADIUS_M = 6_371_008.8
MAX_DEPTH = 32
MAX_NODES = 256
MAX_IN_VALUES = 1000

_ORDER_OPS = {
    query_pb2.OPERATOR_LT: "<",
    query_pb2.OPERATOR_LE: "<=",
    query_pb2.OPERATOR_GT: ">",
    query_pb2.OPERATOR_GE: ">=",
}
_SQL_OPS = {query_pb2.OPERATOR_EQ: "=", query_pb2.OPERATOR_NE: "!=", **_ORDER_OPS}
_OP_NAMES = {
    query_pb2.OPERATOR_EQ: "eq",
    query_pb2.OPERATOR_NE: "ne",
    query_pb2.OPERATOR_LT: "lt",
    query_pb2.OPERATOR_LE: "le",
    query_pb2.OPERATOR_GT: "gt",
    query_pb2.OPERATOR_GE: "ge",
    query_pb2.OPERATOR_IN: "in",
    query_pb2.OPERATOR_PREFIX: "prefix",
    query_pb2.OPERATOR_IS_NULL: "is_null",
}
_ORDERED = ("string", "integer", "number", "timestamp")
_INT64 = 2**63
_COLUMN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?")
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2}))?"
)


def json_path(name: str) -> str:
    """The SQLite JSON path of a top-level field (field names come from the schema)."""
    return '$."' + name.replace('"', '""') + '"'


def check_column(column: str) -> str:
    """``column`` if it is a plain (or table-qualified) column name; raises ValueError."""
    if not _COLUMN.fullmatch(column):
        raise ValueError(f"not a column name: {column!r}")  # a programming error, not input
    return column


# -- timestamps -------------------------------------------------------------------------


def _key(moment: datetime, fraction: str) -> str:
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}" + (fraction + "000000000")[:9]
    )


def instant_key_sql(value_sql: str, value_params: Sequence[Any]) -> tuple[str, tuple[Any, ...]]:
    """SQL turning the timestamp text ``value_sql`` into its instant key (NULL stays NULL).

    SQLite's date functions keep milliseconds only and round, so the seconds go through
    ``strftime`` (which applies the offset) and the fraction digits are carried over as text.
    The forms the importer writes (UTC with ``Z``, whole or with microseconds, and dates) take
    a shortcut that reads the value two or three times instead of ten.
    """
    v = value_sql
    d2 = "[0-9][0-9]"
    utc = f"{d2 * 2}-{d2}-{d2}T{d2}:{d2}:{d2}"
    shortcuts = (
        f"WHEN {v} GLOB '{utc}Z' THEN substr({v}, 1, 19) || '000000000'"
        f" WHEN {v} GLOB '{utc}.{d2 * 3}Z' THEN substr({v}, 1, 19) || substr({v}, 21, 6) || '000'"
        f" WHEN {v} GLOB '{d2 * 2}-{d2}-{d2}' THEN {v} || 'T00:00:00000000000'"
    )
    zoned = f"(length({v}) > 19 AND substr({v}, -6, 1) IN ('+', '-'))"
    zone_len = f"CASE WHEN substr({v}, -1) IN ('Z', 'z') THEN 1 WHEN {zoned} THEN 6 ELSE 0 END"
    sql = (
        f"(CASE {shortcuts} ELSE"
        f" strftime('%Y-%m-%dT%H:%M:%S', substr({v}, 1, 19)"
        f" || CASE WHEN {zoned} THEN substr({v}, -6) ELSE '' END)"
        f" || substr(CASE WHEN substr({v}, 20, 1) = '.'"
        f" THEN substr({v}, 21, length({v}) - 20 - ({zone_len})) ELSE '' END"
        f" || '000000000', 1, 9) END)"
    )
    return sql, tuple(value_params) * sql.count(v)


def instant_key(text: Any) -> str | None:
    """The key ``instant_key_sql`` computes for a stored timestamp text, in Python.

    None for null, and for text that is not a timestamp of the stored forms.
    """
    if not isinstance(text, str) or len(text) < 10:
        return None
    zoned = len(text) > 19 and text[-6] in "+-"
    zone_len = 1 if text[-1] in "Zz" else 6 if zoned else 0
    fraction = text[20 : len(text) - zone_len] if text[19:20] == "." else ""
    base = text[:19]
    try:
        if len(base) == 10:
            moment = datetime.strptime(base, "%Y-%m-%d")
        else:
            moment = datetime.strptime(base.replace(" ", "T"), "%Y-%m-%dT%H:%M:%S")
        if zoned:
            sign = 1 if text[-6] == "+" else -1
            moment -= sign * timedelta(hours=int(text[-5:-3]), minutes=int(text[-2:]))
    except (ValueError, OverflowError):
        return None
    return _key(moment, fraction)


def _request_instant(text: str) -> str | None:
    """The instant key of an RFC 3339 timestamp (or a date) in a request; None if it is not one."""
    m = _RFC3339.fullmatch(text)
    if m is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = m.groups()
    try:
        moment = datetime(int(year), int(month), int(day), tzinfo=UTC)
        if hour is not None:
            moment = moment.replace(hour=int(hour), minute=int(minute), second=int(second))
            if zone not in ("Z", "z"):
                hours, minutes = int(zone[1:3]), int(zone[4:6])
                if hours > 23 or minutes > 59:
                    return None
                sign = 1 if zone[0] == "+" else -1
                moment -= sign * timedelta(hours=hours, minutes=minutes)
    except (ValueError, OverflowError):
        return None
    return _key(moment, fraction or "")


def _timestamp_key(ts: timestamp_pb2.Timestamp, where: str) -> str:
    if not 0 <= ts.nanos <= 999_999_999:
        raise InvalidRequest(f"{where}: nanos {ts.nanos} is outside 0..999999999")
    try:
        moment = datetime(1970, 1, 1) + timedelta(seconds=ts.seconds)
    except OverflowError:
        raise InvalidRequest(
            f"{where}: {ts.seconds} seconds is outside the years 0001..9999"
        ) from None
    return _key(moment, f"{ts.nanos:09d}")


# -- values -----------------------------------------------------------------------------


@dataclass
class _Where:
    """Where a comparison sits in the request, for error messages."""

    path: str
    name: str


def _bad(at: _Where, problem: str) -> InvalidRequest:
    return InvalidRequest(f"{at.path}: field {at.name!r} {problem}", field=at.name)


def _scalar(value: struct_pb2.Value, ftype: str, at: _Where, what: str) -> Any:
    """``value`` as the Python value bound against a field of type ``ftype``."""
    kind = value.WhichOneof("kind")
    if kind is None:
        raise _bad(at, f"has no {what}")
    if kind == "null_value":
        raise _bad(at, f"cannot be compared with null (use is_null); {what} is null")
    if kind == "struct_value":
        raise _bad(at, f"cannot be compared with an object; {what} is an object")
    if kind == "list_value":
        raise _bad(at, f"cannot be compared with a list (only 'in' takes one); {what} is a list")
    shown = {
        "string_value": repr(value.string_value),
        "number_value": repr(value.number_value),
        "bool_value": repr(value.bool_value).lower(),
    }[kind]
    if kind == "string_value" and "\x00" in value.string_value:
        raise _bad(at, f"cannot be compared with text holding U+0000; {what} {shown} does")
    if ftype == "string" and kind == "string_value":
        return value.string_value
    if ftype == "timestamp" and kind == "string_value":
        key = _request_instant(value.string_value)
        if key is None:
            raise _bad(
                at,
                f"is a timestamp; {what} {shown} is not an RFC 3339 timestamp "
                "(like 2026-05-01T08:00:00Z, 2026-05-01T10:00:00+02:00 or 2026-05-01)",
            )
        return key
    if ftype == "boolean" and kind == "bool_value":
        return value.bool_value
    if ftype in ("integer", "number") and kind == "number_value":
        n = value.number_value
        if not math.isfinite(n):
            raise _bad(at, f"is {ftype}; {what} {shown} is not a finite number")
        if ftype == "number":
            return n
        if not n.is_integer():
            raise _bad(at, f"is integer; {what} {shown} is not a whole number")
        if not -_INT64 <= n < _INT64:
            raise _bad(at, f"is integer; {what} {shown} is outside the 64-bit range")
        return int(n)
    article = "an" if ftype[0] in "aeiou" else "a"
    raise _bad(at, f"is {ftype}; {what} {shown} is not {article} {ftype} value")


# -- the compiler -----------------------------------------------------------------------

_Sql = tuple[str, list[Any]]


@dataclass
class _Compiler:
    """Walks an expression; every method returns its SQL and that SQL's parameters in order."""

    field_types: Mapping[str, str]
    column: str
    nodes: int = 0

    def value(self, name: str) -> _Sql:
        return f"json_extract({self.column}, ?)", [json_path(name)]

    def lhs(self, name: str, ftype: str) -> _Sql:
        sql, params = self.value(name)
        if ftype == "timestamp":
            key_sql, key_params = instant_key_sql(sql, params)
            return key_sql, list(key_params)
        return sql, params

    def field_type(self, name: str, path: str) -> str:
        if not name:
            raise InvalidRequest(f"{path}: field is empty", field="")
        ftype = self.field_types.get(name)
        if ftype is None:
            known = ", ".join(sorted(self.field_types))
            raise InvalidRequest(f"{path}: field {name!r} is unknown (fields: {known})", field=name)
        return ftype

    def expression(self, expr: query_pb2.Expression, path: str, depth: int) -> _Sql:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise InvalidRequest(f"{path}: the expression has more than {MAX_NODES} parts")
        if depth > MAX_DEPTH:
            raise InvalidRequest(f"{path}: the expression is nested deeper than {MAX_DEPTH} levels")
        kind = expr.WhichOneof("kind")
        if kind == "and" or kind == "or":
            items = getattr(expr, kind).items
            if not items:
                return ("1" if kind == "and" else "0"), []
            parts = [
                self.expression(item, f"{path}.{kind}[{i}]", depth + 1)
                for i, item in enumerate(items)
            ]
            joined = f" {kind.upper()} ".join(sql for sql, _ in parts)
            return f"({joined})", [p for _, params in parts for p in params]
        if kind == "not":
            sql, params = self.expression(getattr(expr, "not"), path + ".not", depth + 1)
            return f"(NOT {sql})", params
        if kind == "comparison":
            return self.comparison(expr.comparison, path + ".comparison")
        if kind == "bbox":
            return self.bbox(expr.bbox, path + ".bbox")
        if kind == "within":
            return self.within(expr.within, path + ".within")
        if kind == "time_range":
            return self.time_range(expr.time_range, path + ".time_range")
        raise InvalidRequest(
            f"{path}: the expression is empty "
            "(set one of comparison, and, or, not, bbox, within, time_range)"
        )

    def comparison(self, cmp: query_pb2.Comparison, path: str) -> _Sql:
        ftype = self.field_type(cmp.field, path)
        at = _Where(path, cmp.field)
        op = cmp.op
        if op == query_pb2.OPERATOR_UNSPECIFIED:
            raise _bad(at, "has no operator")
        if op not in _OP_NAMES:
            raise _bad(at, f"has unknown operator {op}")
        name = _OP_NAMES[op]
        if not cmp.HasField("value"):
            raise _bad(at, f"has no value for {name}")
        if op == query_pb2.OPERATOR_IS_NULL:
            if cmp.value.WhichOneof("kind") != "bool_value":
                raise _bad(at, "is_null takes true (null or missing) or false (has a value)")
            sql, params = self.value(cmp.field)
            return f"({sql} IS {'' if cmp.value.bool_value else 'NOT '}NULL)", params
        if ftype == "geometry":
            raise _bad(at, f"is a geometry and has no {name} (use bbox, within or is_null)")
        if op in _ORDER_OPS and ftype not in _ORDERED:
            raise _bad(at, f"is {ftype} and has no order for {name}")
        if op == query_pb2.OPERATOR_PREFIX and ftype != "string":
            raise _bad(at, f"is {ftype}; prefix needs a string field")
        if op == query_pb2.OPERATOR_IN:
            return self.membership(cmp, ftype, at)
        value = _scalar(cmp.value, ftype, at, "the value")
        lhs, params = self.lhs(cmp.field, ftype)
        if op == query_pb2.OPERATOR_PREFIX:
            # Bytes, not LIKE: no metacharacters, no case folding, no stop at a NUL.
            raw = value.encode("utf-8")
            if not raw:  # SQLite's substr() of an empty blob is NULL, not an empty blob
                return f"({lhs} IS NOT NULL)", params
            return f"COALESCE(substr(CAST({lhs} AS BLOB), 1, ?) = ?, 0)", [*params, len(raw), raw]
        return f"COALESCE({lhs} {_SQL_OPS[op]} ?, 0)", [*params, value]

    def membership(self, cmp: query_pb2.Comparison, ftype: str, at: _Where) -> _Sql:
        if cmp.value.WhichOneof("kind") != "list_value" or not cmp.value.list_value.values:
            raise _bad(at, "needs a non-empty list of values for in")
        items = cmp.value.list_value.values
        if len(items) > MAX_IN_VALUES:
            raise _bad(at, f"has {len(items)} values for in; at most {MAX_IN_VALUES} are allowed")
        values = [_scalar(v, ftype, at, f"item {i} of the list") for i, v in enumerate(items)]
        lhs, params = self.lhs(cmp.field, ftype)
        marks = ", ".join("?" for _ in values)
        return f"COALESCE({lhs} IN ({marks}), 0)", [*params, *values]

    def point(self, name: str, path: str, test: str) -> tuple[str, list[Any], str, str]:
        """SQL true for a GeoJSON point with numeric coordinates; its lon and lat JSON paths."""
        ftype = self.field_type(name, path)
        if ftype != "geometry":
            raise _bad(_Where(path, name), f"is {ftype}; {test} needs a geometry field")
        base = json_path(name)
        lon, lat = base + ".coordinates[0]", base + ".coordinates[1]"
        c = self.column
        sql = (
            f"json_extract({c}, ?) = 'Point'"
            f" AND json_type({c}, ?) IN ('integer', 'real')"
            f" AND json_type({c}, ?) IN ('integer', 'real')"
        )
        return sql, [base + ".type", lon, lat], lon, lat

    def bbox(self, box: query_pb2.WithinBox, path: str) -> _Sql:
        test, params, lon, lat = self.point(box.field, path, "bbox")
        at = _Where(path, box.field)
        if not box.HasField("box"):
            raise _bad(at, "has no box for bbox")
        b = box.box
        for label, v, limit in (
            ("min_lon", b.min_lon, 180),
            ("max_lon", b.max_lon, 180),
            ("min_lat", b.min_lat, 90),
            ("max_lat", b.max_lat, 90),
        ):
            if not -limit <= v <= limit:  # also refuses NaN
                raise _bad(at, f"has a box whose {label} {v!r} is outside -{limit}..{limit}")
        if b.min_lon > b.max_lon:
            raise _bad(at, f"has a box whose min_lon {b.min_lon!r} exceeds max_lon {b.max_lon!r}")
        if b.min_lat > b.max_lat:
            raise _bad(at, f"has a box whose min_lat {b.min_lat!r} exceeds max_lat {b.max_lat!r}")
        c = self.column
        sql = (
            f"COALESCE({test} AND json_extract({c}, ?) BETWEEN ? AND ?"
            f" AND json_extract({c}, ?) BETWEEN ? AND ?, 0)"
        )
        return sql, [*params, lon, b.min_lon, b.max_lon, lat, b.min_lat, b.max_lat]

    def within(self, w: query_pb2.WithinDistance, path: str) -> _Sql:
        test, params, lon, lat = self.point(w.field, path, "within")
        at = _Where(path, w.field)
        if not -180 <= w.lon <= 180:
            raise _bad(at, f"has a centre whose lon {w.lon!r} is outside -180..180")
        if not -90 <= w.lat <= 90:
            raise _bad(at, f"has a centre whose lat {w.lat!r} is outside -90..90")
        if not math.isfinite(w.meters):
            raise _bad(at, f"has a distance of {w.meters!r} meters, not a finite number")
        if w.meters < 0:
            raise _bad(at, f"has a negative distance of {w.meters!r} meters")
        lat0, lon0 = math.radians(w.lat), math.radians(w.lon)
        y = f"radians(json_extract({self.column}, ?))"
        x = y  # the same SQL, bound to the longitude's path
        # Haversine in this exact order of operations (the reference evaluator repeats it);
        # min() keeps rounding from taking asin past 1.
        sql = (
            f"COALESCE({test} AND ? * asin(min(1.0, sqrt("
            f"sin(({y} - ?) / 2) * sin(({y} - ?) / 2)"
            f" + ? * cos({y}) * sin(({x} - ?) / 2) * sin(({x} - ?) / 2)"
            f"))) <= ?, 0)"
        )
        params += [2 * EARTH_RADIUS_M, lat, lat0, lat, lat0, math.cos(lat0), lat]
        params += [lon, lon0, lon, lon0, w.meters]
        return sql, params

    def time_range(self, tr: query_pb2.TimeRange, path: str) -> _Sql:
        ftype = self.field_type(tr.field, path)
        at = _Where(path, tr.field)
        if ftype != "timestamp":
            raise _bad(at, f"is {ftype}; time_range needs a timestamp field")
        start = getattr(tr, "from")
        bounds: list[tuple[str, str]] = []
        if tr.HasField("from"):
            bounds.append((">=", _timestamp_key(start, path + ".from")))
        if tr.HasField("until"):
            bounds.append(("<", _timestamp_key(tr.until, path + ".until")))
        if len(bounds) == 2 and bounds[0][1] >= bounds[1][1]:
            raise _bad(at, "has a time range whose from is not before its until (it is empty)")
        lhs, lhs_params = self.lhs(tr.field, ftype)
        if not bounds:
            return f"({lhs} IS NOT NULL)", lhs_params
        parts = [f"{lhs} {op} ?" for op, _ in bounds]
        params = [p for _, key in bounds for p in (*lhs_params, key)]
        return "COALESCE(" + " AND ".join(parts) + ", 0)", params


def compile_expression(
    expr: query_pb2.Expression,
    field_types: Mapping[str, str],
    column: str = "json",
    *,
    path: str = "filter.where",
) -> SqlFilter:
    """Compile ``expr`` into a WHERE fragment over the record JSON in ``column``.

    An expression with nothing set (an unset ``Filter.where``) is true. Every field is checked
    against ``field_types`` (name → type) and every value against the field's type; raises
    InvalidRequest naming the place in the expression (``path`` is its root), the field and
    the problem, also for nesting deeper than MAX_DEPTH or more than MAX_NODES parts. The SQL
    of ``within`` needs SQLite's math functions (see ``register_functions``).
    """
    if expr.WhichOneof("kind") is None:
        return SqlFilter("1", ())
    compiler = _Compiler(field_types, check_column(column))
    sql, params = compiler.expression(expr, path, 1)
    return SqlFilter(sql, tuple(params))


def compile_request_filter(
    flt: query_pb2.Filter, field_types: Mapping[str, str], column: str = "json"
) -> SqlFilter:
    """Compile a request's whole Filter: every comparison of ``all`` and ``where``, ANDed.

    Comparisons in ``all`` follow the same rules (and null semantics) as those in ``where``;
    errors name them ``filter.all[i]``. Raises InvalidRequest.
    """
    if len(flt.all) > MAX_NODES:
        raise InvalidRequest(f"filter.all: more than {MAX_NODES} comparisons")
    compiler = _Compiler(field_types, check_column(column))
    parts = [compiler.comparison(cmp, f"filter.all[{i}]") for i, cmp in enumerate(flt.all)]
    if flt.HasField("where") and flt.where.WhichOneof("kind") is not None:
        parts.append(compiler.expression(flt.where, "filter.where", 1))
    return and_filters(*(SqlFilter(sql, tuple(params)) for sql, params in parts))


def filter_fields(flt: query_pb2.Filter) -> list[str]:
    """Every field a request's Filter names (``all`` and ``where``), in order, each once.

    The gateway refuses a filter on a field the policy masks for the caller: testing a
    masked value would reveal it one guess at a time.
    """
    names: list[str] = [cmp.field for cmp in flt.all]
    stack = [flt.where] if flt.HasField("where") else []
    while stack:
        expr = stack.pop()
        kind = expr.WhichOneof("kind")
        if kind in ("and", "or"):
            stack.extend(reversed(getattr(expr, kind).items))
        elif kind == "not":
            stack.append(getattr(expr, "not"))
        elif kind is not None:
            names.append(getattr(expr, kind).field)
    return list(dict.fromkeys(n for n in names if n))


def and_filters(*filters: SqlFilter) -> SqlFilter:
    """AND several WHERE fragments (e.g. the caller's filter and the policy's row filter)."""
    kept = [f for f in filters if f.sql != "1"]
    if not kept:
        return SqlFilter("1", ())
    if len(kept) == 1:
        return kept[0]
    return SqlFilter(
        "(" + " AND ".join(f.sql for f in kept) + ")", tuple(p for f in kept for p in f.params)
    )


# -- conditions and SQLite functions ----------------------------------------------------

_CONDITION_OPS = {
    "=": query_pb2.OPERATOR_EQ,
    "!=": query_pb2.OPERATOR_NE,
    "<": query_pb2.OPERATOR_LT,
    "<=": query_pb2.OPERATOR_LE,
    ">": query_pb2.OPERATOR_GT,
    ">=": query_pb2.OPERATOR_GE,
    "IN": query_pb2.OPERATOR_IN,
}


def conditions_to_expression(conditions: Iterable[Condition]) -> query_pb2.Expression:
    """The AND of ``conditions`` (``filters.Condition``) as an Expression.

    Numbers travel as doubles, so integers beyond 2**53 lose precision; to AND a policy's
    row filter exactly (and keep its PolicyError), prefer ``and_filters`` of
    ``filters.compile_filter(...)`` and ``compile_expression(...)``. Raises ValueError for an
    operator Condition does not define.
    """
    items = []
    for cond in conditions:
        op = _CONDITION_OPS.get(cond.op)
        if op is None:
            raise ValueError(f"unknown condition operator {cond.op!r}")
        cmp = query_pb2.Comparison(field=cond.field, op=op, value=value_of(cond.value))
        items.append(query_pb2.Expression(comparison=cmp))
    expr = query_pb2.Expression()
    getattr(expr, "and").items.extend(items)
    return expr


_MATH = {
    "sin": math.sin,
    "cos": math.cos,
    "asin": math.asin,
    "sqrt": math.sqrt,
    "radians": math.radians,
}


def _guarded(fn: Any) -> Any:
    def call(x: float | None) -> float | None:
        try:
            return None if x is None else float(fn(x))
        except (ValueError, TypeError, OverflowError):
            return None  # like SQLite's own: NULL when out of domain

    return call


def register_functions(conn: sqlite3.Connection, *, force: bool = False) -> bool:
    """Give ``conn`` the math functions ``within`` needs when SQLite was built without them.

    Registers deterministic Python versions of sin, cos, asin, sqrt and radians (the same
    libm results as SQLite's) when ``SELECT sin(0)`` fails, or always when ``force``.
    Returns whether it registered them. Call it on every connection that runs a compiled
    filter; it costs nothing when SQLite has the functions built in.
    """
    if not force:
        try:
            conn.execute("SELECT sin(0), cos(0), asin(0), sqrt(1), radians(0)").fetchone()
            return False
        except sqlite3.OperationalError:
            pass
    for name, fn in _MATH.items():
        conn.create_function(name, 1, _guarded(fn), deterministic=True)
    return True
