"""JSON array sources: objects as records, item numbers in errors, strict decoding."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from allmende.errors import ImportFileError
from allmende_node.sources import FieldSpec, read_source


def write(tmp_path: Path, document: Any, name: str = "places.json") -> Path:
    path = tmp_path / name
    text = document if isinstance(document, str) else json.dumps(document, ensure_ascii=False)
    path.write_text(text, encoding="utf-8")
    return path


def import_error(path: Path, **kwargs: Any) -> ImportFileError:
    with pytest.raises(ImportFileError) as caught:
        read_source(path, **kwargs)
    return caught.value


def test_array_of_objects(tmp_path: Path) -> None:
    items = [
        {"id": 1, "name": "Dom", "capacity": 120, "live": True},
        {"id": 2, "name": "Ring", "capacity": 80.5, "live": False, "note": "neu"},
    ]

    source = read_source(write(tmp_path, items))

    assert source.format == "json"
    assert source.extent is None
    assert source.fields == (
        FieldSpec("id", "string", nullable=False),
        FieldSpec("name", "string", nullable=False),
        FieldSpec("capacity", "number", nullable=False),
        FieldSpec("live", "boolean", nullable=False),
        FieldSpec("note", "string", nullable=True),
    )
    assert source.records == {
        "1": {"id": "1", "name": "Dom", "capacity": 120.0, "live": True, "note": None},
        "2": {"id": "2", "name": "Ring", "capacity": 80.5, "live": False, "note": "neu"},
    }


def test_fields_in_first_seen_order_and_missing_keys_are_null(tmp_path: Path) -> None:
    source = read_source(write(tmp_path, [{"id": "a", "x": 1}, {"y": 2, "id": "b"}]))

    assert [spec.name for spec in source.fields] == ["id", "x", "y"]
    assert source.records["b"] == {"id": "b", "x": None, "y": 2}
    assert source.field("x").nullable and source.field("y").nullable


def test_strings_that_look_like_numbers_stay_strings(tmp_path: Path) -> None:
    source = read_source(write(tmp_path, [{"id": "a", "n": "42", "b": "true"}]))

    assert source.field("n").type == "string"
    assert source.field("b").type == "string"
    assert source.records["a"]["n"] == "42"


def test_nested_values_become_canonical_json(tmp_path: Path) -> None:
    items = [{"id": "a", "v": [1, {"b": 2, "a": "ü"}]}, {"id": "b", "v": "plain"}]

    source = read_source(write(tmp_path, items))

    assert source.field("v").type == "string"
    assert source.records["a"]["v"] == '[1,{"a":"ü","b":2}]'
    assert source.records["b"]["v"] == "plain"


def test_mixed_types_fall_back_to_string_text(tmp_path: Path) -> None:
    source = read_source(write(tmp_path, [{"id": "a", "v": True}, {"id": "b", "v": 1.5}]))

    assert source.field("v").type == "string"
    assert [row["v"] for row in source.records.values()] == ["true", "1.5"]


def test_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "places.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"id": "a"}]).encode())

    assert list(read_source(path).records) == ["a"]


def test_non_object_item_names_it(tmp_path: Path) -> None:
    error = import_error(write(tmp_path, [{"id": "a"}, {"id": "b"}, ["c"]]))

    assert (error.where, error.problem) == ("item 3", "must be an object, not an array")


def test_missing_id_names_the_item(tmp_path: Path) -> None:
    error = import_error(write(tmp_path, [{"id": "a"}, {"id": None}]))

    assert (error.where, error.problem) == ("item 2", "id field 'id' is missing or empty")


def test_id_field_absent_everywhere(tmp_path: Path) -> None:
    error = import_error(write(tmp_path, [{"nr": "a"}]))

    assert error.where == "item 1"
    assert error.problem == "id field 'id' is not in the file (fields: nr)"


@pytest.mark.parametrize(
    ("bad_id", "kind"), [(1.5, "a number"), (True, "a boolean"), ([1], "an array")]
)
def test_id_must_be_string_or_integer(tmp_path: Path, bad_id: Any, kind: str) -> None:
    error = import_error(write(tmp_path, [{"id": bad_id}]))

    assert error.problem == f"id field 'id' must be a string or an integer, not {kind}"


def test_empty_string_id_is_refused(tmp_path: Path) -> None:
    assert import_error(write(tmp_path, [{"id": ""}])).problem == "id field 'id' is empty"


def test_integer_and_string_id_collide(tmp_path: Path) -> None:
    error = import_error(write(tmp_path, [{"id": 17}, {"id": "17"}]))

    assert (error.where, error.problem) == ("item 2", "duplicate id '17' (first at item 1)")


def test_bad_json_names_line_and_column(tmp_path: Path) -> None:
    error = import_error(write(tmp_path, '[\n  {"id": "a"},\n  {"id": "b",}\n]\n'))

    assert error.where == "line 3, column 14"
    assert error.problem == "not valid JSON: Expecting property name enclosed in double quotes"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[{"id": "a", "id": "b"}]', "an object has the key 'id' twice"),
        ('[{"id": "a", "v": NaN}]', "NaN is not valid JSON"),
        ('[{"id": "a", "v": 1e999}]', "the number 1e999 is too large"),
    ],
)
def test_values_json_would_silently_mangle_are_refused(
    tmp_path: Path, text: str, problem: str
) -> None:
    assert import_error(write(tmp_path, text)).problem == problem


def test_empty_field_name_is_refused(tmp_path: Path) -> None:
    error = import_error(write(tmp_path, [{"id": "a"}, {"id": "b", "": 1}]))

    assert (error.where, error.problem) == ("item 2", "empty field name")


@pytest.mark.parametrize(
    ("text", "problem"), [("[]", "no records"), ("", "no records"), ("  \n", "no records")]
)
def test_empty(tmp_path: Path, text: str, problem: str) -> None:
    assert problem in import_error(write(tmp_path, text)).problem


def test_top_level_object_is_not_a_json_source(tmp_path: Path) -> None:
    error = import_error(write(tmp_path, {"id": "a"}))

    assert (
        "must be a GeoJSON FeatureCollection or an array of objects, not an object" in error.problem
    )


def test_format_json_refuses_a_feature_collection(tmp_path: Path) -> None:
    path = write(tmp_path, {"type": "FeatureCollection", "features": []})

    error = import_error(path, format="json")

    assert error.problem == "a JSON source must be an array of objects, not an object"
