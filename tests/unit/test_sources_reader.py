"""read_source as a whole: the public names, choosing the format, unreadable files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import allmende_node.sources as sources
from allmende.errors import AllmendeError, ImportFileError
from allmende_node.sources import FIELD_TYPES, read_source


def test_public_names() -> None:
    assert set(sources.__all__) >= {"FIELD_TYPES", "FieldSpec", "ParsedSource", "read_source"}
    assert FIELD_TYPES == ("string", "integer", "number", "boolean", "timestamp", "geometry")


def test_import_file_error_is_an_allmende_error() -> None:
    assert issubclass(ImportFileError, AllmendeError)
    assert ImportFileError.reason == "BAD_SOURCE_FILE"


def test_format_argument_wins_over_the_suffix(tmp_path: Path) -> None:
    path = tmp_path / "export.txt"
    path.write_text("id;n\na;1\n")

    source = read_source(path, format="csv")

    assert (source.format, source.path) == ("csv", str(path))


def test_suffix_is_case_insensitive(tmp_path: Path) -> None:
    path = tmp_path / "PLACES.CSV"
    path.write_text("id\na\n")

    assert read_source(str(path)).format == "csv"


def test_geojson_format_for_a_json_suffix(tmp_path: Path) -> None:
    path = tmp_path / "places.json"
    path.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [{"type": "Feature", "properties": {"id": "a"}, "geometry": None}],
            }
        )
    )

    assert read_source(path, format="geojson").format == "geojson"


def test_unknown_suffix(tmp_path: Path) -> None:
    path = tmp_path / "places.xlsx"
    path.write_bytes(b"PK\x03\x04")

    with pytest.raises(ImportFileError) as caught:
        read_source(path)

    assert caught.value.problem.startswith("unknown format: cannot tell it from the suffix '.xlsx'")


def test_unknown_format_argument(tmp_path: Path) -> None:
    path = tmp_path / "places.csv"
    path.write_text("id\na\n")

    with pytest.raises(ImportFileError) as caught:
        read_source(path, format="xml")

    assert caught.value.problem == "unknown format 'xml' (formats: geojson, csv, json)"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImportFileError) as caught:
        read_source(tmp_path / "nowhere.csv")

    assert caught.value.path == str(tmp_path / "nowhere.csv")
    assert caught.value.problem.startswith("cannot read the file: ")
