"""GeoJSON sources: the Köln sample, feature ids, geometry validation and feature errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from allmende.errors import ImportFileError
from allmende_node.sources import FieldSpec, read_source

KOELN = Path(__file__).parent / "fixtures" / "sources" / "koeln.geojson"


def feature(properties: Any = None, geometry: Any = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "Feature",
        "properties": {"id": "a"} if properties is None else properties,
        "geometry": geometry if geometry is not None else {"type": "Point", "coordinates": [7, 50]},
    }
    out.update(extra)
    return out


def write_collection(tmp_path: Path, features: list[Any], **extra: Any) -> Path:
    path = tmp_path / "places.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features, **extra}))
    return path


def import_error(path: Path, **kwargs: Any) -> ImportFileError:
    with pytest.raises(ImportFileError) as caught:
        read_source(path, **kwargs)
    return caught.value


def test_koeln_parses_with_types_and_extent() -> None:
    source = read_source(KOELN)

    assert source.format == "geojson"
    assert source.id_field == "id"
    assert len(source.records) == 49
    types = {spec.name: spec.type for spec in source.fields}
    assert types["id"] == "string"
    assert types["name"] == "string"
    assert types["capacity"] == "integer"
    assert types["has_live_capacity"] == "boolean"
    assert types["geom"] == "geometry"
    assert source.fields[0].name == "id"
    assert source.fields[-1] == FieldSpec("geom", "geometry", nullable=False)
    assert source.field("public_url").nullable  # always null in the file
    min_lon, min_lat, max_lon, max_lat = source.extent or (0, 0, 0, 0)
    assert 6.8 < min_lon < max_lon < 7.1
    assert 50.8 < min_lat < max_lat < 51.1


def test_koeln_rows_keep_file_order_and_coerced_values() -> None:
    source = read_source(KOELN)

    first_id, first = next(iter(source.records.items()))
    assert first_id == "koeln-d-p001"
    assert first["id"] == "koeln-d-p001"
    assert first["capacity"] == 1748
    assert first["has_live_capacity"] is False
    assert first["public_url"] is None
    assert first["geom"] == {"type": "Point", "coordinates": [6.98351494, 50.93927181]}
    assert list(first) == [spec.name for spec in source.fields]


def test_json_suffix_holding_a_feature_collection_is_geojson(tmp_path: Path) -> None:
    path = tmp_path / "places.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature()]}))

    assert read_source(path).format == "geojson"


def test_feature_id_stands_in_for_missing_id_property(tmp_path: Path) -> None:
    path = write_collection(
        tmp_path, [feature({"name": "x"}, id=17), feature({"name": "y"}, id="b")]
    )

    source = read_source(path)

    assert list(source.records) == ["17", "b"]
    assert [spec.name for spec in source.fields] == ["id", "name", "geom"]
    assert source.records["17"]["id"] == "17"


def test_explicit_id_field(tmp_path: Path) -> None:
    path = write_collection(tmp_path, [feature({"nr": 1}), feature({"nr": 2})])

    source = read_source(path, id_field="nr")

    assert list(source.records) == ["1", "2"]
    assert source.field("nr") == FieldSpec("nr", "string", nullable=False)


def test_nested_properties_become_canonical_json_text(tmp_path: Path) -> None:
    path = write_collection(tmp_path, [feature({"id": "a", "tags": {"z": 1, "a": ["ö", 2]}})])

    source = read_source(path)

    assert source.field("tags").type == "string"
    assert source.records["a"]["tags"] == '{"a":["ö",2],"z":1}'


def test_every_geometry_type_is_accepted_and_sets_the_extent(tmp_path: Path) -> None:
    ring = [[7, 50], [8, 50], [8, 51], [7, 50]]
    geometries = [
        {"type": "Point", "coordinates": [7.5, 50.5, 120]},
        {"type": "MultiPoint", "coordinates": [[6, 49], [7, 50]]},
        {"type": "LineString", "coordinates": [[7, 50], [9, 52]]},
        {"type": "MultiLineString", "coordinates": [[[7, 50], [7.1, 50.1]]]},
        {"type": "Polygon", "coordinates": [ring]},
        {"type": "MultiPolygon", "coordinates": [[ring]], "bbox": [7, 50, 8, 51]},
    ]
    features = [feature({"id": str(n)}, g) for n, g in enumerate(geometries)]

    source = read_source(write_collection(tmp_path, features))

    assert source.extent == (6.0, 49.0, 9.0, 52.0)
    assert source.records["5"]["geom"] == {"type": "MultiPolygon", "coordinates": [[ring]]}


def test_null_geometry_makes_geom_nullable(tmp_path: Path) -> None:
    features = [
        feature({"id": "a"}),
        {"type": "Feature", "properties": {"id": "b"}, "geometry": None},
    ]

    source = read_source(write_collection(tmp_path, features))

    assert source.field("geom").nullable
    assert source.records["b"]["geom"] is None


@pytest.mark.parametrize(
    ("geometry", "problem"),
    [
        (
            {"type": "Point", "coordinates": ["x", 1]},
            'geometry coordinates must be [lon, lat] numbers, got ["x", 1]',
        ),
        ({"type": "Point", "coordinates": [7]}, "must be [lon, lat] numbers, got [7]"),
        ({"type": "Point", "coordinates": [True, 1]}, "must be [lon, lat] numbers"),
        ({"type": "Point", "coordinates": [200, 50]}, "longitude 200 is outside [-180, 180]"),
        ({"type": "Point", "coordinates": [7, 95]}, "latitude 95 is outside [-90, 90]"),
        ({"type": "Point"}, "Point geometry has no coordinates"),
        ({"type": "Circle", "coordinates": [7, 50]}, 'geometry type "Circle" is not supported'),
        ({"type": "GeometryCollection", "geometries": []}, "is not supported"),
        ("POINT (7 50)", "geometry must be an object or null, not a string"),
        (
            {"type": "LineString", "coordinates": [[7, 50]]},
            "LineString coordinates must be an array of at least 2 positions",
        ),
        (
            {"type": "Polygon", "coordinates": [[[7, 50], [8, 50], [8, 51], [7, 51]]]},
            "Polygon ring 1 is not closed",
        ),
        (
            {"type": "Polygon", "coordinates": [[[7, 50], [8, 50], [7, 50]]]},
            "Polygon ring 1 must be an array of at least 4 positions",
        ),
        ({"type": "MultiPoint", "coordinates": 7}, "MultiPoint coordinates must be an array"),
    ],
)
def test_bad_geometry_names_the_feature(tmp_path: Path, geometry: Any, problem: str) -> None:
    path = write_collection(tmp_path, [feature({"id": "a"}), feature({"id": "b"}, geometry)])

    error = import_error(path)

    assert error.where == "feature 2"
    assert problem in error.problem
    assert str(error).startswith(f"{path}, feature 2: ")


def test_bad_geometry_message_in_full(tmp_path: Path) -> None:
    features = [feature({"id": str(n)}) for n in range(11)]
    features.append(feature({"id": "x"}, {"type": "Point", "coordinates": ["x", 1]}))

    error = import_error(write_collection(tmp_path, features))

    assert str(error) == (
        f"{tmp_path / 'places.geojson'}, feature 12: "
        'geometry coordinates must be [lon, lat] numbers, got ["x", 1]'
    )


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ({"type": "Feature", "geometry": None}, "has no properties object"),
        ({"type": "Feature", "properties": None, "geometry": None}, "properties must be an object"),
        ({"type": "Point", "coordinates": [7, 50]}, 'type must be "Feature", got "Point"'),
        ([1, 2], "must be a Feature object, not an array"),
        (feature({"id": "b", "geom": "x"}), "property 'geom' clashes"),
    ],
)
def test_malformed_feature_names_it(tmp_path: Path, bad: Any, problem: str) -> None:
    error = import_error(write_collection(tmp_path, [feature({"id": "a"}), bad]))

    assert error.where == "feature 2"
    assert problem in error.problem


def test_feature_without_any_id(tmp_path: Path) -> None:
    path = write_collection(tmp_path, [feature({"id": "a"}), feature({"name": "no id"})])

    error = import_error(path)

    assert (error.where, error.problem) == ("feature 2", "id field 'id' is missing or empty")


def test_duplicate_feature_id_names_both(tmp_path: Path) -> None:
    features = [feature({"id": "a"}), feature({"id": "b"}), feature({"id": "a"})]

    error = import_error(write_collection(tmp_path, features))

    assert (error.where, error.problem) == ("feature 3", "duplicate id 'a' (first at feature 1)")


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ({"type": "FeatureCollection", "features": []}, "no records"),
        ({"type": "FeatureCollection"}, "must be an array of features, not null"),
        ({"type": "Feature", "properties": {}}, 'must be a FeatureCollection, got type "Feature"'),
        ([{"id": 1}], "must be a FeatureCollection, got an array"),
    ],
)
def test_bad_collection(tmp_path: Path, document: Any, problem: str) -> None:
    path = tmp_path / "places.geojson"
    path.write_text(json.dumps(document))

    assert problem in import_error(path).problem


def test_non_wgs84_crs_is_refused_and_crs84_accepted(tmp_path: Path) -> None:
    def crs(name: str) -> dict[str, Any]:
        return {"type": "name", "properties": {"name": name}}

    ok = write_collection(tmp_path, [feature()], crs=crs("urn:ogc:def:crs:OGC:1.3:CRS84"))
    assert len(read_source(ok).records) == 1

    bad = write_collection(tmp_path, [feature()], crs=crs("urn:ogc:def:crs:EPSG::25832"))
    error = import_error(bad)
    assert error.where == "crs"
    assert "WGS 84" in error.problem


def test_bad_json_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "places.geojson"
    path.write_text('{"type": "FeatureCollection",\n  "features": [,]}\n')

    error = import_error(path)

    assert error.where == "line 2, column 16"
    assert error.problem.startswith("not valid JSON: ")


def test_feature_without_geometry_member_is_read_as_unlocated(tmp_path) -> None:
    # Real exports omit the member (Zürich's car parks do); RFC 7946 would want null.
    doc = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {"id": "a"},
                "geometry": {"type": "Point", "coordinates": [8.5, 47.4]},
            },
            {"type": "Feature", "properties": {"id": "b"}},
        ],
    }
    path = tmp_path / "x.geojson"
    path.write_text(json.dumps(doc))
    parsed = read_source(path)
    assert parsed.records["b"]["geom"] is None
    assert parsed.field("geom").nullable
