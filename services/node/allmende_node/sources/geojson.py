"""Reading a GeoJSON FeatureCollection: properties become fields, the geometry the field geom."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from allmende.errors import ImportFileError

from .json_source import json_type, table_from_objects
from .model import RawTable

__all__ = ["GEOMETRY_FIELD", "GEOMETRY_TYPES", "parse_geojson"]

GEOMETRY_FIELD = "geom"
GEOMETRY_TYPES = (
    "Point",
    "MultiPoint",
    "LineString",
    "MultiLineString",
    "Polygon",
    "MultiPolygon",
)

# GeoJSON is WGS 84 lon/lat (RFC 7946); older files may still say so with a "crs" member.
_WGS84_NAMES = {
    "urn:ogc:def:crs:OGC:1.3:CRS84",
    "urn:ogc:def:crs:OGC::CRS84",
    "urn:ogc:def:crs:EPSG::4326",
    "EPSG:4326",
}


class _FeatureError(ValueError):
    """A feature is malformed; the message says how, the caller says which feature."""


def _show(value: Any) -> str:
    shown = json.dumps(value, ensure_ascii=False)
    return shown if len(shown) <= 80 else shown[:77] + "..."


class _Bounds:
    """The running extent of every position seen."""

    def __init__(self) -> None:
        self.min_lon = self.min_lat = float("inf")
        self.max_lon = self.max_lat = float("-inf")

    def add(self, lon: float, lat: float) -> None:
        self.min_lon = min(self.min_lon, lon)
        self.max_lon = max(self.max_lon, lon)
        self.min_lat = min(self.min_lat, lat)
        self.max_lat = max(self.max_lat, lat)

    def extent(self) -> tuple[float, float, float, float] | None:
        if self.min_lon > self.max_lon:
            return None
        return (
            float(self.min_lon),
            float(self.min_lat),
            float(self.max_lon),
            float(self.max_lat),
        )


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _position(value: Any, bounds: _Bounds) -> None:
    if not (isinstance(value, list) and 2 <= len(value) <= 3 and all(map(_number, value))):
        raise _FeatureError(f"geometry coordinates must be [lon, lat] numbers, got {_show(value)}")
    lon, lat = value[0], value[1]
    if not -180 <= lon <= 180:
        raise _FeatureError(
            f"longitude {lon} is outside [-180, 180] in {_show(value)} "
            "(GeoJSON needs WGS 84 [lon, lat])"
        )
    if not -90 <= lat <= 90:
        raise _FeatureError(
            f"latitude {lat} is outside [-90, 90] in {_show(value)} "
            "(GeoJSON needs WGS 84 [lon, lat], longitude first)"
        )
    bounds.add(lon, lat)


def _array(value: Any, kind: str, what: str, minimum: int = 0) -> list[Any]:
    if not isinstance(value, list) or len(value) < minimum:
        at_least = f"at least {minimum} " if minimum else ""
        raise _FeatureError(
            f"{kind} coordinates must be an array of {at_least}{what}, got {_show(value)}"
        )
    return value


def _line(value: Any, bounds: _Bounds, kind: str = "LineString") -> None:
    for position in _array(value, kind, "positions", 2):
        _position(position, bounds)


def _polygon(value: Any, bounds: _Bounds, kind: str = "Polygon") -> None:
    for number, ring in enumerate(_array(value, kind, "linear rings", 1), start=1):
        if not isinstance(ring, list) or len(ring) < 4:
            raise _FeatureError(
                f"{kind} ring {number} must be an array of at least 4 positions, got {_show(ring)}"
            )
        for position in ring:
            _position(position, bounds)
        if ring[0] != ring[-1]:
            raise _FeatureError(
                f"{kind} ring {number} is not closed (first position {_show(ring[0])}, "
                f"last {_show(ring[-1])})"
            )


def _point(value: Any, bounds: _Bounds) -> None:
    _position(value, bounds)


def _multi_point(value: Any, bounds: _Bounds) -> None:
    for position in _array(value, "MultiPoint", "positions"):
        _position(position, bounds)


def _multi_line(value: Any, bounds: _Bounds) -> None:
    for line in _array(value, "MultiLineString", "LineString coordinates"):
        _line(line, bounds, "MultiLineString")


def _multi_polygon(value: Any, bounds: _Bounds) -> None:
    for polygon in _array(value, "MultiPolygon", "Polygon coordinates"):
        _polygon(polygon, bounds, "MultiPolygon")


_CHECKS: dict[str, Callable[[Any, _Bounds], None]] = {
    "Point": _point,
    "MultiPoint": _multi_point,
    "LineString": _line,
    "MultiLineString": _multi_line,
    "Polygon": _polygon,
    "MultiPolygon": _multi_polygon,
}


def _geometry(value: Any, bounds: _Bounds) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _FeatureError(f"geometry must be an object or null, not {json_type(value)}")
    kind = value.get("type")
    if kind not in _CHECKS:
        raise _FeatureError(
            f"geometry type {_show(kind)} is not supported (supported: {', '.join(GEOMETRY_TYPES)})"
        )
    if "coordinates" not in value:
        raise _FeatureError(f"{kind} geometry has no coordinates")
    _CHECKS[kind](value["coordinates"], bounds)
    # Only the two members that define the shape are kept; bbox and foreign members go.
    return {"type": kind, "coordinates": value["coordinates"]}


def _check_collection(path: str, document: Any) -> list[Any]:
    if not isinstance(document, dict) or document.get("type") != "FeatureCollection":
        found = document.get("type") if isinstance(document, dict) else None
        got = f"type {_show(found)}" if found is not None else json_type(document)
        raise ImportFileError(path, "", f"a GeoJSON source must be a FeatureCollection, got {got}")
    crs = document.get("crs")
    if crs is not None:
        properties = crs.get("properties") if isinstance(crs, dict) else None
        name = properties.get("name") if isinstance(properties, dict) else None
        if name not in _WGS84_NAMES:
            raise ImportFileError(
                path, "crs", f"coordinates must be WGS 84 lon/lat (RFC 7946), got crs {_show(crs)}"
            )
    features = document.get("features")
    if not isinstance(features, list):
        raise ImportFileError(
            path, "features", f"must be an array of features, not {json_type(features)}"
        )
    if not features:
        raise ImportFileError(path, "", "no records (the FeatureCollection has no features)")
    return features


def _properties(feature: Any, use_feature_id: bool) -> dict[str, Any]:
    if not isinstance(feature, dict):
        raise _FeatureError(f"must be a Feature object, not {json_type(feature)}")
    if feature.get("type") != "Feature":
        raise _FeatureError(f'type must be "Feature", got {_show(feature.get("type"))}')
    properties = feature.get("properties")
    if not isinstance(properties, dict):
        raise _FeatureError(
            f"properties must be an object, not {json_type(properties)}"
            if "properties" in feature
            else "has no properties object"
        )
    if GEOMETRY_FIELD in properties:
        raise _FeatureError(
            f"property '{GEOMETRY_FIELD}' clashes with the field that holds the geometry"
        )
    # RFC 7946 requires a geometry member (null when unlocated), but real exports omit it
    # (Zürich's car parks do); such a feature is read as one without a location.
    if use_feature_id and properties.get("id") is None and feature.get("id") is not None:
        # The feature's own id stands in for a missing id property, as the first field.
        merged = {"id": feature["id"]}
        merged.update((key, value) for key, value in properties.items() if key != "id")
        return merged
    return properties


def parse_geojson(path: str, document: Any, id_field: str) -> RawTable:
    """Read a parsed GeoJSON document that must be a FeatureCollection.

    Each feature's properties become fields; its geometry becomes the field ``geom``
    (type geometry, the geometry object with only ``type`` and ``coordinates``). When
    ``id_field`` is ``"id"`` and a feature has no ``id`` property, its top-level ``id``
    is used. Raises ImportFileError naming ``feature N`` (1-based) for a malformed
    feature or geometry, and for a document that is not a non-empty FeatureCollection in
    WGS 84.
    """
    features = _check_collection(path, document)
    bounds = _Bounds()
    rows: list[dict[str, Any]] = []
    geometries: list[dict[str, Any] | None] = []
    for number, feature in enumerate(features, start=1):
        where = f"feature {number}"
        try:
            rows.append(_properties(feature, id_field == "id"))
            geometries.append(_geometry(feature.get("geometry"), bounds))
        except _FeatureError as exc:
            raise ImportFileError(path, where, str(exc)) from None
    table = table_from_objects(path, "geojson", rows, "feature")
    table.names.append(GEOMETRY_FIELD)
    table.columns.append(geometries)
    table.fixed_types[GEOMETRY_FIELD] = "geometry"
    table.extent = bounds.extent()
    return table
