"""Type inference and coercion: each type from CSV cells and JSON values, nulls, edge cases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from allmende_node.sources import FieldSpec, ParsedSource, read_source


def csv_column(tmp_path: Path, *cells: str) -> ParsedSource:
    text = "id;v\n" + "".join(f"{n};{cell}\n" for n, cell in enumerate(cells))
    path = tmp_path / "column.csv"
    path.write_text(text, encoding="utf-8")
    return read_source(path)


def json_column(tmp_path: Path, *values: Any) -> ParsedSource:
    path = tmp_path / "column.json"
    path.write_text(json.dumps([{"id": n, "v": value} for n, value in enumerate(values)]))
    return read_source(path)


def column(source: ParsedSource) -> tuple[str, list[Any]]:
    return source.field("v").type, [row["v"] for row in source.records.values()]


@pytest.mark.parametrize(
    ("cells", "type_", "values"),
    [
        (("1", "-20", "0"), "integer", [1, -20, 0]),
        (("1.5", "-0.25", ".5", "2e3"), "number", [1.5, -0.25, 0.5, 2000.0]),
        (("1", "2.5"), "number", [1.0, 2.5]),
        (("true", "FALSE", "True"), "boolean", [True, False, True]),
        (("2026-11-22", "2026-01-02"), "timestamp", ["2026-11-22", "2026-01-02"]),
        (("hello", "1"), "string", ["hello", "1"]),
        (("true", "1"), "string", ["true", "1"]),
        (("1,5", "2,5"), "string", ["1,5", "2,5"]),  # decimal commas are not numbers
        (("01067", "10115"), "string", ["01067", "10115"]),  # leading zero: a code
        (("1.", "2"), "string", ["1.", "2"]),
        (("nan", "inf"), "string", ["nan", "inf"]),
        (("9223372036854775807",), "integer", [9223372036854775807]),
        (("9223372036854775808",), "string", ["9223372036854775808"]),  # beyond int64
        (("1e999",), "string", ["1e999"]),
        (("2026-02-30",), "string", ["2026-02-30"]),  # not a real day
        (("2026-11-22", "later"), "string", ["2026-11-22", "later"]),
    ],
)
def test_csv_inference(
    tmp_path: Path, cells: tuple[str, ...], type_: str, values: list[Any]
) -> None:
    assert column(csv_column(tmp_path, *cells)) == (type_, values)


@pytest.mark.parametrize(
    ("values", "type_", "coerced"),
    [
        ((1, -20), "integer", [1, -20]),
        ((1, 2.5), "number", [1.0, 2.5]),
        ((1.0,), "number", [1.0]),
        ((True, False), "boolean", [True, False]),
        ((True, 1), "string", ["true", "1"]),  # bools are not integers
        (("2026-11-22T10:00:00Z",), "timestamp", ["2026-11-22T10:00:00Z"]),
        (("x", {"a": 1}), "string", ["x", '{"a":1}']),
        ((2**63,), "string", ["9223372036854775808"]),
    ],
)
def test_json_inference(
    tmp_path: Path, values: tuple[Any, ...], type_: str, coerced: list[Any]
) -> None:
    assert column(json_column(tmp_path, *values)) == (type_, coerced)


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("2026-11-22T10:00:00Z", "2026-11-22T10:00:00Z"),
        ("2026-11-22 10:00:00+01:00", "2026-11-22T09:00:00Z"),
        ("2026-11-22T10:00:00-0230", "2026-11-22T12:30:00Z"),
        ("2026-11-22T10:00", "2026-11-22T10:00:00Z"),  # naive: taken as UTC
        ("2026-11-22T00:30:00+01:00", "2026-11-21T23:30:00Z"),
        ("2026-11-22", "2026-11-22"),  # a date stays a date
    ],
)
def test_timestamps_are_normalised_to_utc(tmp_path: Path, text: str, normalised: str) -> None:
    assert column(csv_column(tmp_path, text)) == ("timestamp", [normalised])


def test_fractions_are_kept_for_the_whole_field(tmp_path: Path) -> None:
    source = csv_column(tmp_path, "2026-11-22T10:00:00Z", "2026-11-22T10:00:00.25Z", "2026-11-22")

    assert column(source) == (
        "timestamp",
        ["2026-11-22T10:00:00.000000Z", "2026-11-22T10:00:00.250000Z", "2026-11-22"],
    )


def test_nullable_from_empty_cells_and_missing_keys(tmp_path: Path) -> None:
    assert csv_column(tmp_path, "1", "", "3").field("v") == FieldSpec("v", "integer", nullable=True)
    assert csv_column(tmp_path, "1", "2").field("v").nullable is False
    assert json_column(tmp_path, None, None).field("v") == FieldSpec("v", "string", nullable=True)


def test_null_values_do_not_decide_the_type(tmp_path: Path) -> None:
    assert column(json_column(tmp_path, None, 2, None)) == ("integer", [None, 2, None])
