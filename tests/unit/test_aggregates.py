"""Aggregate plans: checked against the schema, parameterised SQL, small groups left out."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from allmende.errors import InvalidRequest
from allmende.store import (
    AggregateResult,
    Condition,
    StoreReader,
    compile_filter,
    connect,
    plan_aggregate,
)
from allmende.v1 import query_pb2

TYPES = {
    "id": "string",
    "district": "string",
    "capacity": "integer",
    "price": "number",
    "live": "boolean",
    "opened": "timestamp",
    "geom": "geometry",
}
ROWS: list[dict[str, Any]] = [
    {
        "id": "a",
        "district": "Innenstadt",
        "capacity": 10,
        "price": 1.5,
        "live": True,
        "opened": "2024-01-01T00:00:00Z",
    },
    {
        "id": "b",
        "district": "West",
        "capacity": 300,
        "price": 2.0,
        "live": False,
        "opened": "2025-06-01T00:00:00Z",
    },
    {
        "id": "c",
        "district": "Innenstadt",
        "capacity": 120,
        "price": 2.5,
        "live": False,
        "opened": "2023-03-01T00:00:00Z",
    },
    {
        "id": "d",
        "district": "Innenstadt",
        "capacity": 70,
        "price": None,
        "live": True,
        "opened": "2026-02-01T00:00:00Z",
    },
    {
        "id": "e",
        "district": None,
        "capacity": 5,
        "price": 1.0,
        "live": True,
        "opened": "2022-01-01T00:00:00Z",
    },
]
COUNT = query_pb2.AGGREGATE_FUNCTION_COUNT
SUM = query_pb2.AGGREGATE_FUNCTION_SUM
MIN = query_pb2.AGGREGATE_FUNCTION_MIN
MAX = query_pb2.AGGREGATE_FUNCTION_MAX
AVG = query_pb2.AGGREGATE_FUNCTION_AVG


def m(function: query_pb2.AggregateFunction, field: str = "", name: str = "") -> query_pb2.Measure:
    return query_pb2.Measure(function=function, field=field, name=name)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StoreReader]:
    path = tmp_path / "store.db"
    db = connect(path)
    with db:
        db.executemany(
            "INSERT INTO records (dataset, id, json) VALUES (?, ?, ?)",
            [("permits", r["id"], json.dumps(r)) for r in ROWS]
            + [("other", "z", json.dumps({"district": "West", "capacity": 9999}))],
        )
    db.close()
    reader = StoreReader(path)
    try:
        yield reader
    finally:
        reader.close()


def run(
    store: StoreReader,
    group_by: list[str],
    measures: list[query_pb2.Measure],
    conditions: Sequence[Condition] = (),
    k: int = 0,
    cap: int = 100,
) -> AggregateResult:
    plan = plan_aggregate(group_by, measures, TYPES)
    return store.aggregate(
        "permits", plan, compile_filter(list(conditions), TYPES), min_group_size=k, max_groups=cap
    )


def test_groups_with_every_function(store: StoreReader) -> None:
    result = run(
        store,
        ["district"],
        [m(COUNT), m(SUM, "capacity"), m(MIN, "capacity"), m(MAX, "opened"), m(AVG, "price")],
    )
    assert result.groups == [
        {
            "district": None,
            "count": 1,
            "sum_capacity": 5,
            "min_capacity": 5,
            "max_opened": "2022-01-01T00:00:00Z",
            "avg_price": 1.0,
        },
        {
            "district": "Innenstadt",
            "count": 3,
            "sum_capacity": 200,
            "min_capacity": 10,
            "max_opened": "2026-02-01T00:00:00Z",
            "avg_price": 2.0,
        },
        {
            "district": "West",
            "count": 1,
            "sum_capacity": 300,
            "min_capacity": 300,
            "max_opened": "2025-06-01T00:00:00Z",
            "avg_price": 2.0,
        },
    ]
    assert result.suppressed_groups == 0 and not result.truncated


def test_no_group_by_is_one_group_and_names_can_be_chosen(store: StoreReader) -> None:
    result = run(store, [], [m(COUNT, name="n"), m(SUM, "capacity", "seats")])
    assert result.groups == [{"n": 5, "seats": 505}]


def test_booleans_group_as_booleans_and_filters_apply(store: StoreReader) -> None:
    result = run(store, ["live", "district"], [m(COUNT)], [Condition("capacity", ">=", 10)])
    assert result.groups == [
        {"live": False, "district": "Innenstadt", "count": 1},
        {"live": False, "district": "West", "count": 1},
        {"live": True, "district": "Innenstadt", "count": 2},
    ]


def test_small_groups_are_suppressed_and_counted(store: StoreReader) -> None:
    result = run(store, ["district"], [m(SUM, "capacity")], k=2)
    # The group size is counted even when COUNT is not asked for.
    assert result.groups == [{"district": "Innenstadt", "sum_capacity": 200}]
    assert result.suppressed_groups == 2
    empty = run(store, [], [m(COUNT)], [Condition("capacity", ">", 10_000)], k=2)
    assert empty.groups == [] and empty.suppressed_groups == 1


def test_groups_are_capped(store: StoreReader) -> None:
    result = run(store, ["id"], [m(COUNT)], cap=2)
    assert [g["id"] for g in result.groups] == ["a", "b"] and result.truncated


def test_sql_is_parameterised(store: StoreReader) -> None:
    plan = plan_aggregate(["district"], [m(SUM, "capacity")], TYPES)
    sql, params = plan.sql("permits", compile_filter([Condition("district", "=", "x'--")], TYPES))
    assert "district" not in sql and "capacity" not in sql and "x'--" not in sql
    assert '$."district"' in params and "x'--" in params


@pytest.mark.parametrize(
    ("group_by", "measures", "field", "message"),
    [
        (["colour"], [m(COUNT)], "colour", "group_by.0.: unknown field 'colour'"),
        (["geom"], [m(COUNT)], "geom", "geometry and cannot form groups"),
        (["district", "district"], [m(COUNT)], "district", "named twice"),
        ([], [], "measures", "at least one"),
        ([], [m(SUM, "district")], "district", "SUM needs a field of type integer or number"),
        ([], [m(AVG, "opened")], "opened", "AVG needs a field of type integer or number"),
        ([], [m(MIN, "live")], "live", "MIN needs a field of type"),
        ([], [m(SUM, "seats")], "seats", "unknown field 'seats'"),
        ([], [m(SUM)], "", "SUM needs a field"),
        ([], [m(COUNT, "capacity")], "capacity", "COUNT counts records and takes no field"),
        ([], [m(query_pb2.AGGREGATE_FUNCTION_UNSPECIFIED, "capacity")], "capacity", "missing"),
        ([], [m(COUNT), m(COUNT)], "count", "'count' is already used"),
        (["district"], [m(COUNT, name="district")], "district", "already used"),
    ],
)
def test_bad_requests_name_the_field(
    group_by: list[str], measures: list[query_pb2.Measure], field: str, message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message) as err:
        plan_aggregate(group_by, measures, TYPES)
    assert err.value.field == field


def test_plan_lists_the_fields_it_reads() -> None:
    plan = plan_aggregate(["district"], [m(COUNT), m(SUM, "capacity"), m(AVG, "capacity")], TYPES)
    assert plan.fields == ("capacity", "district")
