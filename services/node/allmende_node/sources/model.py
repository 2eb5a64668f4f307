"""The typed results of reading a source file, and the raw table the parsers hand on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["FIELD_TYPES", "FORMATS", "FieldSpec", "ParsedSource", "RawTable"]

FIELD_TYPES = ("string", "integer", "number", "boolean", "timestamp", "geometry")
"""Every type a field can have; ``geometry`` only for the ``geom`` field of GeoJSON."""

FORMATS = ("geojson", "csv", "json")
"""Every source format :func:`read_source` understands."""


@dataclass(frozen=True)
class FieldSpec:
    """One field (column) of a source: its name, type (one of FIELD_TYPES) and nullability."""

    name: str
    type: str
    nullable: bool


@dataclass(frozen=True)
class ParsedSource:
    """A source file read completely: its fields in file order and its records by id.

    ``records`` maps each record id (always a string) to a row holding every field of
    ``fields``, with values coerced to the field's type (None where missing). Its insertion
    order is the order of the file. ``extent`` is ``(min_lon, min_lat, max_lon, max_lat)``
    over all geometries, or None when the source has none.
    """

    path: str
    format: str
    id_field: str
    fields: tuple[FieldSpec, ...]
    records: dict[str, dict[str, Any]]
    extent: tuple[float, float, float, float] | None

    def field(self, name: str) -> FieldSpec:
        """Return the field called ``name``; raises KeyError if there is none."""
        for spec in self.fields:
            if spec.name == name:
                return spec
        raise KeyError(name)


@dataclass
class RawTable:
    """What a parser found, before ids are checked and types inferred.

    ``columns[i]`` holds the raw values of ``names[i]``, one per record, None for null or
    missing. ``text`` says the values are CSV cell strings rather than JSON values.
    ``positions`` and ``label`` locate record i in the file for error messages (``line 7``,
    ``item 3``, ``feature 12``); ``header_line`` is the CSV header's line, if there is one.
    ``fixed_types`` are fields whose type the format decides (the GeoJSON geometry).
    """

    format: str
    names: list[str]
    columns: list[list[Any]]
    positions: list[int]
    label: str
    text: bool
    header_line: int | None = None
    fixed_types: dict[str, str] = field(default_factory=dict)
    extent: tuple[float, float, float, float] | None = None

    def where(self, index: int) -> str:
        """Name the position of record ``index`` (0-based) the way the format counts."""
        return f"{self.label} {self.positions[index]}"

    def __len__(self) -> int:
        return len(self.positions)
