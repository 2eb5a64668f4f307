"""Explicit schema overrides: forcing types, and every way an override can be wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from allmende.errors import ImportFileError
from allmende_node.sources import FieldSpec, read_source

CSV = (
    "id;capacity;plz;opened;live\np-1;120;01067;2026-11-22T10:00:00+01:00;ja\np-2;80;10115;;nein\n"
)


def write(tmp_path: Path, text: str, name: str = "places.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def import_error(path: Path, **kwargs: Any) -> ImportFileError:
    with pytest.raises(ImportFileError) as caught:
        read_source(path, **kwargs)
    return caught.value


def test_override_forces_types(tmp_path: Path) -> None:
    path = write(tmp_path, "id;capacity;plz\np-1;120;1067\np-2;80;10115\n")

    source = read_source(path, schema={"capacity": "number", "plz": "string"})

    assert source.field("capacity") == FieldSpec("capacity", "number", nullable=False)
    assert source.field("plz") == FieldSpec("plz", "string", nullable=False)
    assert source.records["p-1"] == {"id": "p-1", "capacity": 120.0, "plz": "1067"}


def test_override_coerces_leading_zero_codes_to_integers(tmp_path: Path) -> None:
    source = read_source(write(tmp_path, CSV), schema={"plz": "integer"})

    assert [row["plz"] for row in source.records.values()] == [1067, 10115]


def test_override_timestamp_normalises_and_keeps_nulls(tmp_path: Path) -> None:
    source = read_source(write(tmp_path, CSV), schema={"opened": "timestamp"})

    assert [row["opened"] for row in source.records.values()] == ["2026-11-22T09:00:00Z", None]
    assert source.field("opened").nullable


def test_override_on_json_values(tmp_path: Path) -> None:
    items = [
        {"id": "a", "n": "4.5", "i": 3.0, "b": "TRUE"},
        {"id": "b", "n": 2, "i": "7", "b": False},
    ]
    path = write(tmp_path, json.dumps(items), "items.json")

    source = read_source(path, schema={"n": "number", "i": "integer", "b": "boolean"})

    assert [(r["n"], r["i"], r["b"]) for r in source.records.values()] == [
        (4.5, 3, True),
        (2.0, 7, False),
    ]


def test_override_string_keeps_json_numbers_as_text(tmp_path: Path) -> None:
    path = write(tmp_path, json.dumps([{"id": "a", "v": 1.5}, {"id": "b", "v": [1]}]), "i.json")

    source = read_source(path, schema={"v": "string"})

    assert [row["v"] for row in source.records.values()] == ["1.5", "[1]"]


@pytest.mark.parametrize(
    ("text", "schema", "where", "problem"),
    [
        (
            "id;capacity\np-1;12\np-2;viele\n",
            {"capacity": "number"},
            "line 3",
            "field 'capacity': 'viele' is not a number",
        ),
        (
            "id;capacity\np-1;1.5\n",
            {"capacity": "integer"},
            "line 2",
            "field 'capacity': '1.5' is not an integer",
        ),
        (
            "id;capacity\np-1;99999999999999999999\n",
            {"capacity": "integer"},
            "line 2",
            "field 'capacity': '99999999999999999999' is outside the 64-bit integer range",
        ),
        (CSV, {"live": "boolean"}, "line 2", "field 'live': 'ja' is not a boolean (true or false)"),
        (
            "id;when\np-1;2026-11-22\np-2;gestern\n",
            {"when": "timestamp"},
            "line 3",
            "field 'when': 'gestern' is not an ISO 8601 date or datetime",
        ),
    ],
)
def test_value_the_override_cannot_hold(
    tmp_path: Path, text: str, schema: dict[str, str], where: str, problem: str
) -> None:
    error = import_error(write(tmp_path, text), schema=schema)

    assert (error.where, error.problem) == (where, problem)


def test_override_error_message_in_full(tmp_path: Path) -> None:
    text = "id;capacity\n" + "".join(f"p-{n};{n}\n" for n in range(5)) + "p-9;viele\n"

    error = import_error(write(tmp_path, text), schema={"capacity": "number"})

    assert (
        str(error)
        == f"{tmp_path / 'places.csv'}, line 7: field 'capacity': 'viele' is not a number"
    )


def test_json_value_the_override_cannot_hold(tmp_path: Path) -> None:
    path = write(tmp_path, json.dumps([{"id": "a", "n": 1}, {"id": "b", "n": True}]), "i.json")

    error = import_error(path, schema={"n": "integer"})

    assert (error.where, error.problem) == ("item 2", "field 'n': true is not an integer")


def test_override_naming_an_unknown_field(tmp_path: Path) -> None:
    error = import_error(write(tmp_path, CSV), schema={"capacty": "number"})

    assert error.where == ""
    assert error.problem == (
        "schema override names field 'capacty', which is not in the file "
        "(fields: id, capacity, plz, opened, live)"
    )


def test_override_naming_an_unknown_type(tmp_path: Path) -> None:
    error = import_error(write(tmp_path, CSV), schema={"capacity": "float"})

    assert error.problem.startswith(
        "schema override gives field 'capacity' the unknown type 'float'"
    )
    assert "(types: string, integer, number, boolean, timestamp, geometry)" in error.problem


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        ({"id": "integer"}, "the id field 'id' is always a string, not 'integer'"),
        ({"capacity": "geometry"}, "field 'capacity' cannot be a geometry"),
    ],
)
def test_overrides_that_are_never_allowed(
    tmp_path: Path, schema: dict[str, str], problem: str
) -> None:
    assert problem in import_error(write(tmp_path, CSV), schema=schema).problem


def test_geometry_field_cannot_be_overridden(tmp_path: Path) -> None:
    feature = {"type": "Feature", "properties": {"id": "a"}, "geometry": None}
    path = write(
        tmp_path, json.dumps({"type": "FeatureCollection", "features": [feature]}), "g.geojson"
    )

    assert read_source(path, schema={"geom": "geometry"}).field("geom").type == "geometry"
    error = import_error(path, schema={"geom": "string"})
    assert error.problem == "schema override: field 'geom' is always of type 'geometry'"
