"""Filters compile to parameterised SQL, checked against the schema; tokens cannot be forged."""

from __future__ import annotations

import json
import sqlite3

import pytest

from allmende.errors import InvalidRequest, PolicyError
from allmende.store import (
    Condition,
    compile_filter,
    conditions_from_row_filter,
)

TYPES = {
    "id": "string",
    "capacity": "integer",
    "district": "string",
    "live": "boolean",
    "geom": "geometry",
}
ROWS = [
    {"id": "a", "capacity": 10, "district": "Innenstadt", "live": True},
    {"id": "b", "capacity": 300, "district": "West", "live": False},
    {"id": "c", "capacity": 120, "district": "Innenstadt", "live": False},
]


def run(conditions: list[Condition]) -> list[str]:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE records (id TEXT, json TEXT)")
    db.executemany("INSERT INTO records VALUES (?, ?)", [(r["id"], json.dumps(r)) for r in ROWS])
    flt = compile_filter(conditions, TYPES)
    return [
        r[0] for r in db.execute(f"SELECT id FROM records WHERE {flt.sql} ORDER BY id", flt.params)
    ]


def test_comparisons_are_anded() -> None:
    assert run([Condition("capacity", ">=", 100)]) == ["b", "c"]
    assert run([Condition("capacity", ">=", 100), Condition("district", "=", "Innenstadt")]) == [
        "c"
    ]
    assert run([Condition("district", "IN", ["West", "Nord"])]) == ["b"]
    assert run([Condition("live", "=", True)]) == ["a"]
    assert run([]) == ["a", "b", "c"]


def test_policy_row_filter_cannot_be_widened_by_the_request() -> None:
    policy = conditions_from_row_filter({"district": {"in": ["Innenstadt"]}})
    assert run([Condition("district", "=", "West"), *policy]) == []


@pytest.mark.parametrize(
    ("row_filter", "expected"),
    [
        ({"district": {"eq": "Innenstadt"}}, ["a", "c"]),
        ({"district": {"ne": "Innenstadt"}}, ["b"]),
        ({"capacity": {"lt": 120}}, ["a"]),
        ({"capacity": {"le": 120}}, ["a", "c"]),
        ({"capacity": {"gt": 120}}, ["b"]),
        ({"capacity": {"ge": 120}}, ["b", "c"]),
        ({"district": {"in": ["West", "Nord"]}}, ["b"]),
        ({"capacity": {"ge": 100}, "live": {"eq": False}}, ["b", "c"]),
    ],
)
def test_every_row_filter_operator(row_filter: dict, expected: list[str]) -> None:
    policy = conditions_from_row_filter(row_filter)
    assert all(c.origin == "policy" for c in policy)
    assert run(policy) == expected
    # A caller's condition only narrows: the union of both is never returned.
    assert run([Condition("id", "IN", ["a", "b", "c"]), *policy]) == expected


@pytest.mark.parametrize(
    ("row_filter", "message"),
    [
        ({"district": {"like": "Inn%"}}, "unknown operator 'like'"),
        ({"district": {"eq": "a", "ne": "b"}}, "exactly one condition"),
        ({"district": {}}, "exactly one condition"),
        ({"district": {"in": []}}, "non-empty list"),
        ({"district": {"in": "Innenstadt"}}, "non-empty list"),
    ],
)
def test_malformed_row_filters_are_policy_errors(row_filter: dict, message: str) -> None:
    with pytest.raises(PolicyError, match=message) as err:
        conditions_from_row_filter(row_filter)
    assert "district" in str(err.value)


def test_a_row_filter_that_does_not_fit_the_schema_fails_closed() -> None:
    for row_filter in ({"capacity": {"gt": "many"}}, {"colour": {"eq": "red"}}):
        with pytest.raises(PolicyError, match="row filter does not fit"):
            run(conditions_from_row_filter(row_filter))


def test_injection_attempts_are_parameters_not_sql() -> None:
    with pytest.raises(InvalidRequest, match="unknown field"):
        run([Condition("capacity') OR 1=1 --", "=", 1)])
    assert run([Condition("district", "=", "x' OR '1'='1")]) == []


@pytest.mark.parametrize(
    ("cond", "message"),
    [
        (Condition("colour", "=", "red"), "unknown field 'colour'"),
        (Condition("capacity", "=", "many"), "capacity' is integer"),
        (Condition("live", "<", True), "has no order"),
        (Condition("geom", "=", "x"), "geometry"),
        (Condition("district", "IN", []), "non-empty list"),
    ],
)
def test_bad_conditions_name_the_field(cond: Condition, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as err:
        compile_filter([cond], TYPES)
    assert err.value.field == cond.field
