"""Filter expressions compile to parameterised SQL with exact semantics and clear errors."""

from __future__ import annotations

import json
import re
import sqlite3
from typing import Any

import pytest
from google.protobuf import json_format

from allmende.errors import InvalidRequest
from allmende.store.expressions import (
    MAX_DEPTH,
    MAX_NODES,
    and_filters,
    compile_expression,
    compile_request_filter,
    conditions_to_expression,
    instant_key,
    register_functions,
)
from allmende.store.filters import Condition, compile_filter
from allmende.store.ordering import compile_order
from allmende.v1 import query_pb2

TYPES = {
    "name": "string",
    "capacity": "integer",
    "price": "number",
    "live": "boolean",
    "opened": "timestamp",
    "geom": "geometry",
}
ROWS: dict[str, dict[str, Any]] = {
    # Kaiserslautern Stiftsplatz, opened 08:00 UTC (written in local summer time).
    "a": {
        "name": "50%_off",
        "capacity": 10,
        "price": 1.5,
        "live": True,
        "opened": "2026-05-01T10:00:00+02:00",
        "geom": {"type": "Point", "coordinates": [7.7689, 49.4447]},
    },
    # Mannheim, about 51 km away, opened at the same instant written in UTC.
    "b": {
        "name": "500 off",
        "capacity": 300,
        "price": 2,
        "live": False,
        "opened": "2026-05-01T08:00:00Z",
        "geom": {"type": "Point", "coordinates": [8.4660, 49.4875]},
    },
    # Nulls and missing fields; a line is not a point.
    "c": {
        "name": None,
        "capacity": None,
        "opened": "2026-05-01T07:59:59.9999Z",
        "geom": {"type": "LineString", "coordinates": [[7.7, 49.4], [7.8, 49.5]]},
    },
    "d": {"name": "Ärztehaus", "capacity": 120, "opened": "2026-05-01", "geom": None},
}


def expr(data: dict[str, Any]) -> query_pb2.Expression:
    """An Expression from its protobuf JSON form, e.g. {"comparison": {...}}."""
    return json_format.ParseDict(data, query_pb2.Expression())


def cmp(field: str, op: str, value: Any) -> dict[str, Any]:
    return {"comparison": {"field": field, "op": f"OPERATOR_{op.upper()}", "value": value}}


@pytest.fixture(scope="module")
def db() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE records (dataset TEXT, id TEXT, json TEXT)")
    conn.executemany(
        "INSERT INTO records VALUES ('s', ?, ?)", [(k, json.dumps(v)) for k, v in ROWS.items()]
    )
    return conn


def ids(db: sqlite3.Connection, data: dict[str, Any]) -> list[str]:
    flt = compile_expression(expr(data), TYPES)
    sql = f"SELECT id FROM records WHERE dataset = ? AND {flt.sql} ORDER BY id"
    return [r[0] for r in db.execute(sql, ("s", *flt.params))]


# -- semantics ---------------------------------------------------------------------------


def test_comparisons(db: sqlite3.Connection) -> None:
    assert ids(db, cmp("capacity", "eq", 10)) == ["a"]
    assert ids(db, cmp("capacity", "ne", 10)) == ["b", "d"]  # c's null is not "not 10"
    assert ids(db, cmp("capacity", "lt", 120)) == ["a"]
    assert ids(db, cmp("capacity", "le", 120)) == ["a", "d"]
    assert ids(db, cmp("capacity", "gt", 120)) == ["b"]
    assert ids(db, cmp("capacity", "ge", 120)) == ["b", "d"]
    assert ids(db, cmp("capacity", "in", [10, 300, 7])) == ["a", "b"]
    assert ids(db, cmp("price", "ge", 2)) == ["b"]
    assert ids(db, cmp("live", "eq", False)) == ["b"]
    assert ids(db, cmp("name", "gt", "50%_off")) == ["b", "d"]  # by code point: "0" > "%"
    assert ids(db, cmp("name", "lt", "500")) == ["a"]


def test_null_semantics_are_two_valued(db: sqlite3.Connection) -> None:
    assert ids(db, cmp("name", "is_null", True)) == ["c"]
    assert ids(db, cmp("price", "is_null", True)) == ["c", "d"]  # missing counts as null
    assert ids(db, cmp("price", "is_null", False)) == ["a", "b"]
    assert ids(db, {"not": cmp("capacity", "ne", 10)}) == ["a", "c"]
    assert ids(db, {"not": cmp("capacity", "eq", 10)}) == ["b", "c", "d"]
    assert ids(db, {"not": {"not": cmp("capacity", "eq", 10)}}) == ["a"]


def test_prefix_is_literal_and_case_sensitive(db: sqlite3.Connection) -> None:
    assert ids(db, cmp("name", "prefix", "50%_")) == ["a"]  # no LIKE wildcards
    assert ids(db, cmp("name", "prefix", "50")) == ["a", "b"]
    assert ids(db, cmp("name", "prefix", "ä")) == []
    assert ids(db, cmp("name", "prefix", "Ä")) == ["d"]
    assert ids(db, cmp("name", "prefix", "")) == ["a", "b", "d"]  # every non-null string


def test_and_or_not(db: sqlite3.Connection) -> None:
    both = {"and": {"items": [cmp("capacity", "ge", 10), cmp("live", "eq", True)]}}
    assert ids(db, both) == ["a"]
    either = {"or": {"items": [cmp("capacity", "eq", 300), cmp("name", "is_null", True)]}}
    assert ids(db, either) == ["b", "c"]
    assert ids(db, {"and": {}}) == ["a", "b", "c", "d"]
    assert ids(db, {"or": {}}) == []
    assert ids(db, {"not": either}) == ["a", "d"]


def test_timestamps_compare_as_instants(db: sqlite3.Connection) -> None:
    assert ids(db, cmp("opened", "eq", "2026-05-01T08:00:00Z")) == ["a", "b"]
    assert ids(db, cmp("opened", "eq", "2026-05-01T04:00:00-04:00")) == ["a", "b"]
    assert ids(db, cmp("opened", "eq", "2026-05-01T08:00:00.000Z")) == ["a", "b"]
    # .9999 is not rounded up into the next second (SQLite's own date functions would).
    assert ids(db, cmp("opened", "lt", "2026-05-01T08:00:00Z")) == ["c", "d"]
    assert ids(db, cmp("opened", "eq", "2026-05-01")) == ["d"]  # a date is its midnight UTC
    assert ids(db, cmp("opened", "in", ["2026-05-01T00:00:00Z", "2027-01-01"])) == ["d"]
    assert instant_key("2026-05-01T10:00:00+02:00") == instant_key("2026-05-01T08:00:00Z")


def test_time_range_is_half_open(db: sqlite3.Connection) -> None:
    def between(start: str | None, until: str | None) -> dict[str, Any]:
        tr: dict[str, Any] = {"field": "opened"}
        if start:
            tr["from"] = start
        if until:
            tr["until"] = until
        return {"time_range": tr}

    assert ids(db, between("2026-05-01T08:00:00Z", None)) == ["a", "b"]
    assert ids(db, between(None, "2026-05-01T08:00:00Z")) == ["c", "d"]
    assert ids(db, between("2026-05-01T07:59:59.999900Z", "2026-05-01T08:00:00Z")) == ["c"]
    assert ids(db, between(None, None)) == ["a", "b", "c", "d"]


def test_spatial_tests_on_points(db: sqlite3.Connection) -> None:
    box = {"min_lon": 7.7689, "min_lat": 49.0, "max_lon": 8.0, "max_lat": 49.4447}
    assert ids(db, {"bbox": {"field": "geom", "box": box}}) == ["a"]  # edges included
    box = {"min_lon": 7.0, "min_lat": 49.0, "max_lon": 9.0, "max_lat": 50.0}
    assert ids(db, {"bbox": {"field": "geom", "box": box}}) == ["a", "b"]  # c is a line
    near = {"field": "geom", "lon": 7.7689, "lat": 49.4447}
    assert ids(db, {"within": {**near, "meters": 0}}) == ["a"]
    assert ids(db, {"within": {**near, "meters": 50_000}}) == ["a"]
    assert ids(db, {"within": {**near, "meters": 52_000}}) == ["a", "b"]
    assert ids(db, {"not": {"within": {**near, "meters": 1}}}) == ["b", "c", "d"]


def test_python_math_functions_give_the_same_answers(db: sqlite3.Connection) -> None:
    fallback = sqlite3.connect(":memory:")
    assert register_functions(fallback, force=True)
    assert not register_functions(sqlite3.connect(":memory:"))  # this SQLite has them
    fallback.execute("CREATE TABLE records (dataset TEXT, id TEXT, json TEXT)")
    fallback.executemany(
        "INSERT INTO records VALUES ('s', ?, ?)", [(k, json.dumps(v)) for k, v in ROWS.items()]
    )
    query = {"within": {"field": "geom", "lon": 8.0, "lat": 49.45, "meters": 34_000}}
    assert ids(fallback, query) == ids(db, query)


def test_values_are_parameters_not_sql(db: sqlite3.Connection) -> None:
    flt = compile_expression(expr(cmp("name", "eq", "x' OR 1=1 --")), TYPES)
    assert "OR 1=1" not in flt.sql
    assert ids(db, cmp("name", "eq", "x' OR 1=1 --")) == []


def test_request_filter_ands_all_and_where_and_the_policy(db: sqlite3.Connection) -> None:
    flt = json_format.ParseDict(
        {
            "all": [{"field": "capacity", "op": "OPERATOR_NE", "value": 300}],
            "where": cmp("opened", "eq", "2026-05-01T08:00:00Z"),
        },
        query_pb2.Filter(),
    )
    request = compile_request_filter(flt, TYPES)
    policy = compile_filter([Condition("live", "=", True, origin="policy")], TYPES)
    for combined, want in ((request, ["a"]), (and_filters(request, policy), ["a"])):
        sql = f"SELECT id FROM records WHERE {combined.sql} ORDER BY id"
        assert [r[0] for r in db.execute(sql, combined.params)] == want
    narrowed = and_filters(
        request, compile_filter([Condition("name", "=", "Ärztehaus", origin="policy")], TYPES)
    )
    sql = f"SELECT id FROM records WHERE {narrowed.sql}"
    assert db.execute(sql, narrowed.params).fetchall() == []
    assert compile_request_filter(query_pb2.Filter(), TYPES).sql == "1"
    assert compile_expression(query_pb2.Expression(), TYPES).sql == "1"


def test_conditions_become_an_and_expression(db: sqlite3.Connection) -> None:
    e = conditions_to_expression(
        [Condition("capacity", ">=", 100), Condition("name", "IN", ["500 off", "x"])]
    )
    flt = compile_expression(e, TYPES)
    assert [r[0] for r in db.execute(f"SELECT id FROM records WHERE {flt.sql}", flt.params)] == [
        "b"
    ]


# -- errors ------------------------------------------------------------------------------


def refused(data: dict[str, Any], types: dict[str, str] = TYPES) -> str:
    with pytest.raises(InvalidRequest) as info:
        compile_expression(expr(data), types)
    return str(info.value)


def test_error_names_the_path_the_field_and_the_problem() -> None:
    nested = {"and": {"items": [cmp("capacity", "eq", 1), cmp("capcity", "eq", 1)]}}
    message = refused(nested)
    assert message.startswith(
        "filter.where.and[1].comparison: field 'capcity' is unknown (fields: "
    )
    assert "capacity, geom, live, name, opened, price" in message
    with pytest.raises(InvalidRequest) as info:
        compile_expression(expr(nested), TYPES)
    assert info.value.field == "capcity"
    deep = {"or": {"items": [{"not": cmp("", "eq", 1)}]}}
    assert refused(deep) == "filter.where.or[0].not.comparison: field is empty"


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (
            cmp("capacity", "eq", "ten"),
            "field 'capacity' is integer; the value 'ten' is not an integer",
        ),
        (cmp("capacity", "eq", 2.5), "2.5 is not a whole number"),
        (cmp("capacity", "eq", 1e19), "outside the 64-bit range"),
        (cmp("price", "eq", "NaN"), "is number; the value 'NaN' is not a number value"),
        (cmp("live", "eq", 1), "is boolean; the value 1.0 is not a boolean value"),
        (cmp("name", "eq", None), "cannot be compared with null (use is_null)"),
        (cmp("name", "eq", {"a": 1}), "cannot be compared with an object"),
        (cmp("name", "eq", ["a"]), "only 'in' takes one"),
        (cmp("name", "eq", "a\x00b"), "U+0000"),
        (cmp("name", "in", []), "needs a non-empty list of values for in"),
        (cmp("name", "in", "a"), "needs a non-empty list of values for in"),
        (cmp("capacity", "in", [1, "two"]), "item 1 of the list 'two' is not an integer"),
        (
            cmp("capacity", "prefix", "1"),
            "field 'capacity' is integer; prefix needs a string field",
        ),
        (cmp("opened", "prefix", "2026"), "is timestamp; prefix needs a string field"),
        (cmp("live", "lt", True), "field 'live' is boolean and has no order for lt"),
        (cmp("geom", "eq", "x"), "field 'geom' is a geometry and has no eq (use bbox, within"),
        (cmp("name", "is_null", "yes"), "is_null takes true (null or missing) or false"),
        (cmp("opened", "gt", "2026-05-01T08:00:00"), "is not an RFC 3339 timestamp"),
        (cmp("opened", "gt", "2026-02-30"), "is not an RFC 3339 timestamp"),
        (cmp("opened", "gt", "yesterday"), "is not an RFC 3339 timestamp"),
        (
            {"comparison": {"field": "name", "op": "OPERATOR_EQ"}},
            "field 'name' has no value for eq",
        ),
        ({"comparison": {"field": "name", "value": "x"}}, "field 'name' has no operator"),
        ({"comparison": {"field": "name", "op": 42, "value": "x"}}, "has unknown operator 42"),
        ({"and": {"items": [{}]}}, "filter.where.and[0]: the expression is empty"),
        ({"bbox": {"field": "capacity"}}, "field 'capacity' is integer; bbox needs a geometry"),
        ({"bbox": {"field": "geom"}}, "field 'geom' has no box for bbox"),
        (
            {"bbox": {"field": "geom", "box": {"min_lon": 9, "max_lon": 8, "max_lat": 1}}},
            "min_lon 9.0 exceeds max_lon 8.0",
        ),
        (
            {"bbox": {"field": "geom", "box": {"min_lat": 2, "max_lat": 1, "max_lon": 1}}},
            "min_lat 2.0 exceeds max_lat 1.0",
        ),
        (
            {"bbox": {"field": "geom", "box": {"min_lat": -91, "max_lat": 1}}},
            "min_lat -91.0 is outside -90..90",
        ),
        (
            {"bbox": {"field": "geom", "box": {"max_lon": 181}}},
            "max_lon 181.0 is outside -180..180",
        ),
        (
            {"within": {"field": "geom", "lon": 7, "lat": 49, "meters": -5}},
            "field 'geom' has a negative distance of -5.0 meters",
        ),
        (
            {"within": {"field": "geom", "lon": 7, "lat": 91, "meters": 5}},
            "has a centre whose lat 91.0 is outside -90..90",
        ),
        (
            {"within": {"field": "geom", "lon": -181, "lat": 0, "meters": 5}},
            "has a centre whose lon -181.0 is outside -180..180",
        ),
        (
            {"within": {"field": "geom", "meters": "Infinity"}},
            "has a distance of inf meters, not a finite number",
        ),
        ({"within": {"field": "name", "meters": 1}}, "field 'name' is string; within needs a"),
        ({"time_range": {"field": "name"}}, "is string; time_range needs a timestamp field"),
        (
            {
                "time_range": {
                    "field": "opened",
                    "from": "2026-05-02T00:00:00Z",
                    "until": "2026-05-01T00:00:00Z",
                }
            },
            "from is not before its until",
        ),
    ],
)
def test_each_bad_expression_is_refused_clearly(data: dict[str, Any], problem: str) -> None:
    message = refused(data)
    assert problem in message
    assert message.startswith("filter.where")


def test_too_deep_and_too_big_expressions_are_refused() -> None:
    deep: dict[str, Any] = cmp("capacity", "eq", 1)
    for _ in range(MAX_DEPTH - 1):
        deep = {"not": deep}
    compile_expression(expr(deep), TYPES)  # exactly MAX_DEPTH levels is fine
    message = refused({"not": deep})
    assert f"nested deeper than {MAX_DEPTH} levels" in message
    assert message.startswith("filter.where.not.not.")
    wide = {"or": {"items": [cmp("capacity", "eq", i) for i in range(MAX_NODES)]}}
    assert f"filter.where.or[{MAX_NODES - 1}]: the expression has more than {MAX_NODES}" in (
        refused(wide)
    )


def test_request_filter_errors_name_all_items() -> None:
    flt = json_format.ParseDict(
        {"all": [{"field": "capacity", "op": "OPERATOR_PREFIX", "value": "1"}]},
        query_pb2.Filter(),
    )
    with pytest.raises(
        InvalidRequest, match=re.escape("filter.all[0]: field 'capacity' is integer")
    ):
        compile_request_filter(flt, TYPES)


# -- order -------------------------------------------------------------------------------


def ordered(db: sqlite3.Connection, order: list[dict[str, Any]], size: int) -> list[str]:
    plan = compile_order([json_format.ParseDict(o, query_pb2.OrderBy()) for o in order], TYPES)
    got: list[str] = []
    after = None
    while True:
        where = after.sql if after else "1"
        params = after.params if after else ()
        sql = f"SELECT id, json FROM records WHERE {where} {plan.sql} LIMIT ?"
        rows = db.execute(sql, (*params, *plan.params, size)).fetchall()
        got += [r[0] for r in rows]
        if len(rows) < size:
            return got
        after = plan.after(plan.row_key(rows[-1][1]), rows[-1][0])


def test_order_by_with_nulls_and_keyset_pages(db: sqlite3.Connection) -> None:
    for size in (1, 2, 10):
        assert ordered(db, [{"field": "capacity"}], size) == ["c", "a", "d", "b"]
        assert ordered(db, [{"field": "capacity", "descending": True}], size) == [
            "b",
            "d",
            "a",
            "c",
        ]
        # a and b opened at the same instant: ties go by id.
        assert ordered(db, [{"field": "opened", "descending": True}], size) == [
            "a",
            "b",
            "c",
            "d",
        ]
        assert ordered(db, [{"field": "price"}, {"field": "name"}], size) == ["c", "d", "a", "b"]
        assert ordered(db, [], size) == ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    ("order", "problem"),
    [
        ([{"field": "geom"}], "order_by[0]: field 'geom' is a geometry and cannot be ordered"),
        ([{"field": "nmae"}], "order_by[0]: field 'nmae' is unknown (fields: capacity"),
        ([{"field": ""}], "order_by[0]: field is empty"),
        ([{"field": "name"}, {"field": "name"}], "order_by[1]: field 'name' is named twice"),
        ([{"field": "name"}] * 9, "order_by: at most 8 fields, not 9"),
    ],
)
def test_bad_order_is_refused(order: list[dict[str, Any]], problem: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(problem)):
        compile_order([json_format.ParseDict(o, query_pb2.OrderBy()) for o in order], TYPES)


def test_a_key_of_another_order_is_refused() -> None:
    plan = compile_order([query_pb2.OrderBy(field="name")], TYPES)
    with pytest.raises(InvalidRequest, match="does not fit the query's order"):
        plan.after([1, 2], "a")


def test_time_range_ends_out_of_range_are_refused() -> None:
    e = query_pb2.Expression(time_range=query_pb2.TimeRange(field="opened"))
    e.time_range.until.seconds, e.time_range.until.nanos = 0, -1
    with pytest.raises(InvalidRequest, match=re.escape("time_range.until: nanos -1 is outside")):
        compile_expression(e, TYPES)
    e.time_range.until.seconds, e.time_range.until.nanos = 10**12, 0
    with pytest.raises(InvalidRequest, match=re.escape("outside the years 0001..9999")):
        compile_expression(e, TYPES)


def test_another_json_column_and_no_spliced_column_names() -> None:
    flt = compile_expression(expr(cmp("capacity", "eq", 1)), TYPES, "old_json")
    assert "json_extract(old_json, ?)" in flt.sql
    with pytest.raises(ValueError, match="not a column name"):
        compile_expression(expr(cmp("capacity", "eq", 1)), TYPES, "json); DROP TABLE x; --")
