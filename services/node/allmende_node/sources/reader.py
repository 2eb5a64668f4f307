"""Reading a source file of any format into a ParsedSource: dispatch, ids and assembly."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from allmende.errors import ImportFileError

from .csv_source import parse_csv
from .geojson import parse_geojson
from .inference import infer_fields
from .json_source import json_type, load_json, parse_json_array
from .model import FORMATS, ParsedSource, RawTable

__all__ = ["read_source"]

DEFAULT_ID_FIELD = "id"


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ImportFileError(str(path), "", f"cannot read the file: {exc.strerror}") from exc


def _is_feature_collection(document: Any) -> bool:
    return isinstance(document, dict) and document.get("type") == "FeatureCollection"


def _parse(path: Path, data: bytes, format: str | None, id_field: str) -> RawTable:
    name = str(path)
    if format is not None and format not in FORMATS:
        raise ImportFileError(
            name, "", f"unknown format '{format}' (formats: {', '.join(FORMATS)})"
        )
    suffix = path.suffix.lower()
    if format is None and suffix not in (".geojson", ".json", ".csv"):
        raise ImportFileError(
            name,
            "",
            f"unknown format: cannot tell it from the suffix '{suffix}' "
            f"(expected .geojson, .json or .csv, or pass format=)",
        )
    if format == "csv" or (format is None and suffix == ".csv"):
        return parse_csv(name, data)
    if not data.strip():
        raise ImportFileError(name, "", "no records (the file is empty)")
    document = load_json(name, data)
    if format == "geojson" or (format is None and suffix == ".geojson"):
        return parse_geojson(name, document, id_field)
    if format is None and _is_feature_collection(document):
        return parse_geojson(name, document, id_field)
    if format is None and not isinstance(document, list):
        raise ImportFileError(
            name,
            "",
            "unknown format: a .json source must be a GeoJSON FeatureCollection or an "
            f"array of objects, not {json_type(document)}",
        )
    return parse_json_array(name, document)


def _check_ids(path: str, table: RawTable, id_field: str) -> list[str]:
    """Return the record ids as strings; raise ImportFileError for a missing or repeated id."""
    if id_field not in table.names:
        where = f"line {table.header_line}" if table.header_line else table.where(0)
        raise ImportFileError(
            path,
            where,
            f"id field '{id_field}' is not in the file (fields: {', '.join(table.names)})",
        )
    column = table.columns[table.names.index(id_field)]
    first_index: dict[str, int] = {}
    ids: list[str] = []
    for index, value in enumerate(column):
        if isinstance(value, str):
            key = value
        elif isinstance(value, int) and not isinstance(value, bool):
            key = str(value)
        elif value is None:
            raise ImportFileError(
                path, table.where(index), f"id field '{id_field}' is missing or empty"
            )
        else:
            raise ImportFileError(
                path,
                table.where(index),
                f"id field '{id_field}' must be a string or an integer, not {json_type(value)}",
            )
        if not key:
            raise ImportFileError(path, table.where(index), f"id field '{id_field}' is empty")
        if key in first_index:
            raise ImportFileError(
                path,
                table.where(index),
                f"duplicate id '{key}' (first at {table.where(first_index[key])})",
            )
        first_index[key] = index
        ids.append(key)
    return ids


def read_source(
    path: str | Path,
    *,
    format: str | None = None,
    id_field: str | None = None,
    schema: Mapping[str, str] | None = None,
) -> ParsedSource:
    """Read a GeoJSON, CSV or JSON source file completely into typed records.

    ``format`` is one of ``geojson``, ``csv``, ``json``; without it the suffix decides
    (``.geojson``; ``.csv``; ``.json`` holding a FeatureCollection or an array of objects).
    ``id_field`` names the field holding each record's unique id (default ``id``; for
    GeoJSON a feature's own ``id`` stands in when it has no ``id`` property). Ids are
    strings (a JSON integer 17 becomes ``"17"``) and the id field is always of type string.
    ``schema`` maps field names to types from FIELD_TYPES and overrides inference for them.

    Without an override a field's type is what all its non-null values share: integer
    (CSV digits with an optional minus and no leading zero, within 64 bits; JSON
    integers), number (decimals, also mixed with integers; CSV with a decimal point),
    boolean (CSV true/false in any case; JSON booleans), timestamp (ISO 8601 dates or
    datetimes), else string. Nested JSON values become canonical JSON text. Timestamps become RFC 3339 in UTC with ``Z``; datetimes without
    an offset are taken to be UTC already; dates stay ``YYYY-MM-DD``. A field is nullable
    if a record lacks it or holds null (an empty CSV cell).

    Reading is all-or-nothing. Raises ImportFileError, naming the file and the line, item
    or feature, for an unreadable file, an unknown format, a malformed file, no records,
    a missing, non-string/integer or repeated id, a bad schema override, or a value the
    override's type cannot hold.
    """
    source = Path(path)
    name = str(source)
    key_field = id_field or DEFAULT_ID_FIELD
    data = _read_bytes(source)
    table = _parse(source, data, format, key_field)
    ids = _check_ids(name, table, key_field)
    table.columns[table.names.index(key_field)] = ids
    fields, columns = infer_fields(name, table, schema or {}, key_field)
    names = [spec.name for spec in fields]
    # Every column has one value per id (the parsers build them so); skip strict checks.
    records = {key: dict(zip(names, values)) for key, values in zip(ids, zip(*columns))}  # noqa: B905
    return ParsedSource(
        path=name,
        format=table.format,
        id_field=key_field,
        fields=fields,
        records=records,
        extent=table.extent,
    )
