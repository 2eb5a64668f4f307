"""Compiled filters and ordered keyset paging agree with a plain Python reference (hypothesis).

Random records (nulls, missing fields, big and small numbers, unicode and LIKE metacharacters,
timestamps in several offsets and precisions, points and other geometries) go into a real
SQLite table shaped like the store's; random expressions are compiled and run, and must select
exactly the ids ``evaluate`` selects; ordered paging with random page sizes must return exactly
the order ``sort_key`` gives, with no gap and no duplicate. The examples are derandomized (the
same on every run, no example database), so CI is deterministic.
"""

from __future__ import annotations

import functools
import json
import math
import re
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from allmende.store.expressions import (
    and_filters,
    compile_expression,
    conditions_to_expression,
    register_functions,
)
from allmende.store.filters import Condition, compile_filter
from allmende.store.ordering import compile_order
from allmende.v1 import query_pb2

TYPES = {
    "name": "string",
    "code": "string",
    "count": "integer",
    "level": "number",
    "live": "boolean",
    "seen": "timestamp",
    "geom": "geometry",
}
DATASET = "sites"
RADIUS = 6_371_008.8
SETTINGS = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- the reference: the spec, written plainly --------------------------------------------

_TIMESTAMP = re.compile(
    r"(\d{4}-\d{2}-\d{2})(?:T(\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})?)?"
)


def instant(text: Any) -> tuple[datetime, int] | None:
    """An RFC 3339 text (or a date, or a datetime without zone = UTC) as (UTC moment, nanos)."""
    m = _TIMESTAMP.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        return None
    day, time, fraction, zone = m.groups()
    offset = "+00:00" if zone in (None, "Z") else zone
    moment = datetime.fromisoformat(f"{day}T{time or '00:00:00'}{offset}").astimezone(UTC)
    return moment, int((fraction or "")[:9].ljust(9, "0"))


def from_proto_time(ts: Any) -> tuple[datetime, int]:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=ts.seconds), ts.nanos


def plain(value: Any) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "list_value":
        return [plain(v) for v in value.list_value.values]
    return getattr(value, kind)


def point(geometry: Any) -> tuple[float, float] | None:
    if not isinstance(geometry, dict) or geometry.get("type") != "Point":
        return None
    coords = geometry.get("coordinates")
    if not isinstance(coords, list) or len(coords) < 2:
        return None
    lon, lat = coords[0], coords[1]
    numeric = all(isinstance(c, int | float) and not isinstance(c, bool) for c in (lon, lat))
    return (lon, lat) if numeric else None


def haversine(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    # The order of operations the compiled SQL uses, so that both round alike at the edge.
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) * math.sin((p2 - p1) / 2) + math.cos(p1) * math.cos(p2) * math.sin(
        (math.radians(lon2) - math.radians(lon1)) / 2
    ) * math.sin((math.radians(lon2) - math.radians(lon1)) / 2)
    return 2 * RADIUS * math.asin(min(1.0, math.sqrt(a)))


def stored(record: Mapping[str, Any], name: str) -> Any:
    """A field's value as the spec reads it: a string ends at its first U+0000."""
    v = record.get(name)
    return v.split("\x00", 1)[0] if isinstance(v, str) else v


def compare(cmp: Any, record: Mapping[str, Any]) -> bool:
    v = stored(record, cmp.field)
    value = plain(cmp.value)
    if cmp.op == query_pb2.OPERATOR_IS_NULL:
        return (v is None) == value
    if v is None:
        return False
    if TYPES[cmp.field] == "timestamp":
        v = instant(v)
        value = [instant(x) for x in value] if isinstance(value, list) else instant(value)
    ops: dict[int, Callable[[Any, Any], bool]] = {
        query_pb2.OPERATOR_EQ: lambda a, b: a == b,
        query_pb2.OPERATOR_NE: lambda a, b: a != b,
        query_pb2.OPERATOR_LT: lambda a, b: a < b,
        query_pb2.OPERATOR_LE: lambda a, b: a <= b,
        query_pb2.OPERATOR_GT: lambda a, b: a > b,
        query_pb2.OPERATOR_GE: lambda a, b: a >= b,
        query_pb2.OPERATOR_IN: lambda a, b: a in b,
        query_pb2.OPERATOR_PREFIX: lambda a, b: a.startswith(b),
    }
    return ops[cmp.op](v, value)


def evaluate(expr: Any, record: Mapping[str, Any]) -> bool:
    """Does ``record`` pass ``expr``? Two-valued: a test on a null or missing field is false."""
    kind = expr.WhichOneof("kind")
    if kind == "and":
        return all(evaluate(e, record) for e in getattr(expr, "and").items)
    if kind == "or":
        return any(evaluate(e, record) for e in getattr(expr, "or").items)
    if kind == "not":
        return not evaluate(getattr(expr, "not"), record)
    if kind == "comparison":
        return compare(expr.comparison, record)
    if kind == "bbox":
        p, b = point(record.get(expr.bbox.field)), expr.bbox.box
        return p is not None and b.min_lon <= p[0] <= b.max_lon and b.min_lat <= p[1] <= b.max_lat
    if kind == "within":
        w = expr.within
        p = point(record.get(w.field))
        return p is not None and haversine(w.lon, w.lat, p[0], p[1]) <= w.meters
    if kind == "time_range":
        tr = expr.time_range
        t = instant(record.get(tr.field))
        if t is None:
            return False
        start = getattr(tr, "from")
        if tr.HasField("from") and t < from_proto_time(start):
            return False
        return not (tr.HasField("until") and t >= from_proto_time(tr.until))
    return True  # nothing set


def sort_key(order_by: Sequence[Any]) -> Callable[[tuple[str, dict[str, Any]]], Any]:
    """Key for sorting (id, record) pairs: the fields, nulls first ascending, last descending."""

    def cmp(x: tuple[str, dict[str, Any]], y: tuple[str, dict[str, Any]]) -> int:
        for o in order_by:
            a, b = stored(x[1], o.field), stored(y[1], o.field)
            if TYPES[o.field] == "timestamp":
                a, b = instant(a), instant(b)
            if a == b:
                continue
            # Nulls sort lowest; descending reverses the whole comparison.
            smaller = a is None if a is None or b is None else a < b
            return (1 if smaller else -1) if o.descending else (-1 if smaller else 1)
        return (x[0] > y[0]) - (x[0] < y[0])

    return functools.cmp_to_key(cmp)


# -- strategies ------------------------------------------------------------------------

# Stored strings may hold U+0000, which SQLite reads as the end of the string.
STRINGS = st.text(alphabet="ab%_\\Aé\x00😀", max_size=4)
CMP_STRINGS = st.text(alphabet="ab%_\\Aé😀", max_size=4)
INTS = st.integers(-3, 3) | st.integers(-(2**53), 2**53) | st.sampled_from([2**63 - 1, -(2**63)])
CMP_INTS = st.integers(-4, 4) | st.integers(-(2**53), 2**53)
NUMBERS = (
    st.integers(-3, 3)
    | st.sampled_from([-0.0, 0.5, 1.0, 2.5, -1.5, 1e300, 5e-324, 0.1])
    | st.floats(allow_nan=False, allow_infinity=False)
)
CMP_NUMBERS = NUMBERS.map(float)
BASE = datetime(2026, 5, 1, tzinfo=UTC)
FRACTIONS = st.sampled_from(["", ".5", ".500", ".000001", ".123456789", ".9999", ".0"])
ZONES = st.sampled_from(["Z", "+02:00", "-05:30", "+00:00", "+14:00"])


@st.composite
def timestamps(draw: st.DrawFn, naive: bool = False) -> str:
    moment = BASE + timedelta(minutes=30 * draw(st.integers(-60, 60)))
    if draw(st.integers(0, 5)) == 0:
        return moment.date().isoformat()
    zone = draw(ZONES | st.just("")) if naive else draw(ZONES)
    hours, minutes = (int(zone[1:3]), int(zone[4:6])) if len(zone) == 6 else (0, 0)
    delta = timedelta(hours=hours, minutes=minutes) * (-1 if zone.startswith("-") else 1)
    local = moment.astimezone(timezone(delta))
    return local.strftime("%Y-%m-%dT%H:%M:%S") + draw(FRACTIONS) + zone


LONS = st.floats(7.0, 8.5) | st.sampled_from([7.75, 8, -180.0, 180])
LATS = st.floats(49.0, 50.0) | st.sampled_from([49.5, 49, 90, -90.0])
GEOMETRIES = st.one_of(
    st.builds(lambda lon, lat: {"type": "Point", "coordinates": [lon, lat]}, LONS, LATS),
    st.builds(lambda lon, lat: {"type": "Point", "coordinates": [lon, lat, 120]}, LONS, LATS),
    st.sampled_from(
        [
            {"type": "LineString", "coordinates": [[7.7, 49.4], [7.8, 49.5]]},
            {"type": "Point", "coordinates": [7.7]},
            {"type": "Point"},
            {"type": "Point", "coordinates": ["7.7", "49.4"]},
            {"type": "Polygon", "coordinates": [[[7, 49], [8, 49], [8, 50], [7, 49]]]},
        ]
    ),
)
VALUES: dict[str, st.SearchStrategy[Any]] = {
    "name": STRINGS,
    "code": STRINGS,
    "count": INTS,
    "level": NUMBERS,
    "live": st.booleans(),
    "seen": timestamps(naive=True),
    "geom": GEOMETRIES,
}
CMP_VALUES: dict[str, st.SearchStrategy[Any]] = {
    **VALUES,
    "name": CMP_STRINGS,
    "code": CMP_STRINGS,
    "count": CMP_INTS,
    "level": CMP_NUMBERS,
    "seen": timestamps(),
}
RECORD = st.fixed_dictionaries({}, optional={k: st.none() | v for k, v in VALUES.items()})
RECORDS = st.lists(
    st.tuples(st.text(alphabet="ab0Zé-😀", min_size=1, max_size=3), RECORD),
    max_size=20,
    unique_by=lambda pair: pair[0],
)


def value(v: Any) -> Any:
    from google.protobuf import struct_pb2

    out = struct_pb2.Value()
    if isinstance(v, bool):
        out.bool_value = v
    elif isinstance(v, float):
        out.number_value = v
    elif isinstance(v, int):
        out.number_value = float(v)
    elif isinstance(v, str):
        out.string_value = v
    else:
        out.list_value.values.extend(value(x) for x in v)
    return out


ORDERED = [query_pb2.OPERATOR_LT, query_pb2.OPERATOR_LE, query_pb2.OPERATOR_GT]
ORDERED += [query_pb2.OPERATOR_GE, query_pb2.OPERATOR_EQ, query_pb2.OPERATOR_NE]
OPS = {
    "name": [*ORDERED, query_pb2.OPERATOR_PREFIX],
    "code": [*ORDERED, query_pb2.OPERATOR_PREFIX],
    "count": ORDERED,
    "level": ORDERED,
    "live": [query_pb2.OPERATOR_EQ, query_pb2.OPERATOR_NE],
    "seen": ORDERED,
}


@st.composite
def comparisons(draw: st.DrawFn) -> query_pb2.Expression:
    name = draw(st.sampled_from(sorted(TYPES)))
    choice = draw(st.integers(0, 5))
    if name == "geom" or choice == 0:
        cmp = query_pb2.Comparison(
            field=name, op=query_pb2.OPERATOR_IS_NULL, value=value(draw(st.booleans()))
        )
    elif choice == 1:
        items = draw(st.lists(CMP_VALUES[name], min_size=1, max_size=3))
        cmp = query_pb2.Comparison(field=name, op=query_pb2.OPERATOR_IN, value=value(items))
    else:
        op = draw(st.sampled_from(OPS[name]))
        cmp = query_pb2.Comparison(field=name, op=op, value=value(draw(CMP_VALUES[name])))
    return query_pb2.Expression(comparison=cmp)


@st.composite
def spatial_or_temporal(draw: st.DrawFn) -> query_pb2.Expression:
    kind = draw(st.sampled_from(["bbox", "within", "time_range"]))
    if kind == "bbox":
        lons, lats = sorted([draw(LONS), draw(LONS)]), sorted([draw(LATS), draw(LATS)])
        box = query_pb2.WithinBox(field="geom")
        box.box.min_lon, box.box.max_lon = lons
        box.box.min_lat, box.box.max_lat = lats
        return query_pb2.Expression(bbox=box)
    if kind == "within":
        meters = draw(st.floats(0, 200_000) | st.sampled_from([0.0, 1000.0, 2e7]))
        w = query_pb2.WithinDistance(field="geom", lon=draw(LONS), lat=draw(LATS), meters=meters)
        return query_pb2.Expression(within=w)
    tr = query_pb2.TimeRange(field="seen")
    ends = sorted(
        draw(
            st.lists(
                st.tuples(
                    st.integers(-40, 40).map(lambda h: int(BASE.timestamp()) + 1800 * h),
                    st.sampled_from([0, 500_000_000, 1000, 123_456_789, 999_900_000]),
                ),
                min_size=2,
                max_size=2,
                unique=True,
            )
        )
    )
    if draw(st.booleans()):
        getattr(tr, "from").seconds, getattr(tr, "from").nanos = ends[0]
    if draw(st.booleans()):
        tr.until.seconds, tr.until.nanos = ends[1]
    return query_pb2.Expression(time_range=tr)


def combine(children: st.SearchStrategy[query_pb2.Expression]) -> Any:
    def both(kind: str, items: list[query_pb2.Expression]) -> query_pb2.Expression:
        expr = query_pb2.Expression()
        getattr(expr, kind).items.extend(items)
        return expr

    def negate(item: query_pb2.Expression) -> query_pb2.Expression:
        expr = query_pb2.Expression()
        getattr(expr, "not").CopyFrom(item)
        return expr

    items = st.lists(children, max_size=3)
    return st.one_of(
        items.map(functools.partial(both, "and")),
        items.map(functools.partial(both, "or")),
        children.map(negate),
    )


EXPRESSIONS = st.recursive(comparisons() | spatial_or_temporal(), combine, max_leaves=10)


def load(records: list[tuple[str, dict[str, Any]]], python_math: bool) -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    if python_math:
        assert register_functions(db, force=True)
    db.execute(
        "CREATE TABLE records (dataset TEXT NOT NULL, id TEXT NOT NULL, json TEXT NOT NULL,"
        " PRIMARY KEY (dataset, id)) WITHOUT ROWID"
    )
    rows = [(DATASET, rid, json.dumps(r, sort_keys=True, ensure_ascii=False)) for rid, r in records]
    rows += [("other", rid, "{}") for rid, _ in records]  # another dataset, never selected
    db.executemany("INSERT INTO records VALUES (?, ?, ?)", rows)
    return db


# -- the properties ----------------------------------------------------------------------


@SETTINGS
@given(records=RECORDS, expr=EXPRESSIONS, python_math=st.booleans())
def test_compiled_filter_selects_what_the_reference_selects(
    records: list[tuple[str, dict[str, Any]]], expr: query_pb2.Expression, python_math: bool
) -> None:
    db = load(records, python_math)
    negated = query_pb2.Expression()
    getattr(negated, "not").CopyFrom(expr)
    for e, want in (
        (expr, {rid for rid, r in records if evaluate(expr, r)}),
        (negated, {rid for rid, r in records if not evaluate(expr, r)}),
    ):
        flt = compile_expression(e, TYPES)
        sql = f"SELECT id FROM records WHERE dataset = ? AND {flt.sql}"
        got = {row[0] for row in db.execute(sql, (DATASET, *flt.params))}
        assert got == want, (flt.sql, flt.params)


ORDER_BY = st.lists(
    st.builds(
        query_pb2.OrderBy,
        field=st.sampled_from(sorted(set(TYPES) - {"geom"})),
        descending=st.booleans(),
    ),
    max_size=3,
    unique_by=lambda o: o.field,
)


@SETTINGS
@given(
    records=RECORDS,
    expr=st.none() | EXPRESSIONS,
    order_by=ORDER_BY,
    sizes=st.lists(st.integers(1, 7), min_size=1, max_size=8),
)
def test_ordered_keyset_paging_returns_the_reference_order(
    records: list[tuple[str, dict[str, Any]]],
    expr: query_pb2.Expression | None,
    order_by: list[query_pb2.OrderBy],
    sizes: list[int],
) -> None:
    db = load(records, python_math=False)
    flt = compile_expression(expr or query_pb2.Expression(), TYPES)
    plan = compile_order(order_by, TYPES)
    kept = [(rid, r) for rid, r in records if expr is None or evaluate(expr, r)]
    want = [rid for rid, _ in sorted(kept, key=sort_key(order_by))]
    got: list[str] = []
    where = flt
    for page in range(len(records) + 2):
        size = sizes[page % len(sizes)]
        sql = f"SELECT id, json FROM records WHERE dataset = ? AND {where.sql} {plan.sql} LIMIT ?"
        rows = db.execute(sql, (DATASET, *where.params, *plan.params, size)).fetchall()
        got += [row[0] for row in rows]
        if len(rows) < size:
            break
        # The key travels in a page token as JSON.
        key = json.loads(json.dumps(plan.row_key(rows[-1][1])))
        where = and_filters(flt, plan.after(key, rows[-1][0]))
    assert got == want


@settings(SETTINGS, max_examples=100)
@given(records=RECORDS, order_by=ORDER_BY.filter(bool))
def test_row_key_equals_the_key_sqlite_sorts_by(
    records: list[tuple[str, dict[str, Any]]], order_by: list[query_pb2.OrderBy]
) -> None:
    db = load(records, python_math=False)
    plan = compile_order(order_by, TYPES)
    columns, params = plan.key_columns
    sql = f"SELECT json, {columns} FROM records WHERE dataset = ?"
    for row in db.execute(sql, (*params, DATASET)):
        assert plan.row_key(row[0]) == list(row[1:])


POLICY_OPS = {
    "name": ["=", "!=", "<", ">=", "IN"],
    "count": ["=", "!=", "<", "<=", ">", ">=", "IN"],
    "level": ["=", "!=", "<", "<=", ">", ">=", "IN"],
    "live": ["=", "!=", "IN"],
}


@st.composite
def policy_conditions(draw: st.DrawFn) -> list[Condition]:
    out = []
    for name in draw(st.lists(st.sampled_from(sorted(POLICY_OPS)), max_size=3, unique=True)):
        op = draw(st.sampled_from(POLICY_OPS[name]))
        values = {"count": st.integers(-4, 4)}.get(name, CMP_VALUES[name])
        v = draw(st.lists(values, min_size=1, max_size=3)) if op == "IN" else draw(values)
        out.append(Condition(name, op, v, origin="policy"))
    return out


@settings(SETTINGS, max_examples=100)
@given(records=RECORDS, expr=EXPRESSIONS, policy=policy_conditions())
def test_the_callers_expression_only_narrows_the_policy_row_filter(
    records: list[tuple[str, dict[str, Any]]], expr: query_pb2.Expression, policy: list[Condition]
) -> None:
    db = load(records, python_math=False)
    granted = conditions_to_expression(policy)
    flt = and_filters(compile_expression(expr, TYPES), compile_filter(policy, TYPES))
    sql = f"SELECT id FROM records WHERE dataset = ? AND {flt.sql}"
    got = {row[0] for row in db.execute(sql, (DATASET, *flt.params))}
    allowed = {rid for rid, r in records if evaluate(granted, r)}
    assert got == {rid for rid in allowed if evaluate(expr, dict(records)[rid])}
