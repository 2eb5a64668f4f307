"""Type inference for source fields and coercion of raw values to the inferred types.

Values come in two flavours: CSV cells (strings, where ``true``, ``42``, ``4.2`` and
ISO 8601 dates carry types) and JSON values (where only real booleans and numbers do,
and strings carry only timestamps). A field's type is the one kind all its non-null
values share; integers mixed with numbers give ``number``; anything else gives ``string``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from typing import Any

from allmende.errors import ImportFileError

from .model import FIELD_TYPES, FieldSpec, RawTable

__all__ = ["canonical_json", "infer_fields", "parse_timestamp"]

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

# Leading zeros mark codes (postcodes, AGS keys), not quantities: "01067" stays a string.
_TEXT_INTEGER = re.compile(r"-?(?:0|[1-9]\d*)")
_TEXT_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+(?:[eE][-+]?\d+)?")
# Under an explicit schema the user has asked for a number, so be more forgiving.
_LOOSE_INTEGER = re.compile(r"[-+]?\d+")
_LOOSE_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_BOOLEAN = re.compile(r"true|false", re.IGNORECASE)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_TIME = r"[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:?\d{2})?"
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}" + _TIME)
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}(?:" + _TIME + ")?")


def canonical_json(value: Any) -> str:
    """Return the canonical JSON text of ``value`` (sorted keys, no spaces, UTF-8 kept)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def parse_timestamp(text: str) -> date | datetime | None:
    """Parse an ISO 8601 date or datetime; None if ``text`` is not one (raises nothing).

    Aware datetimes are converted to UTC; naive datetimes are taken to be UTC already.
    Fractions below a microsecond are dropped.
    """
    if len(text) == 10:
        if not _DATE.fullmatch(text):
            return None
        try:
            return date.fromisoformat(text)
        except ValueError:
            return None
    if not _DATETIME.fullmatch(text):
        return None
    try:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            return moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def _format_timestamps(moments: list[date | datetime | None]) -> list[str | None]:
    # Either every datetime of a field carries microseconds or none does, so that the
    # strings sort like the moments they stand for.
    precise = any(isinstance(m, datetime) and m.microsecond for m in moments)
    spec = "microseconds" if precise else "seconds"
    out: list[str | None] = []
    for moment in moments:
        if isinstance(moment, datetime):
            # parse_timestamp gives UTC moments: swap isoformat's "+00:00" for "Z".
            out.append(moment.isoformat(timespec=spec)[:-6] + "Z")
        elif moment is None:
            out.append(None)
        else:
            out.append(moment.isoformat())
    return out


def _infer_text(values: list[str]) -> str:
    # Each check runs over the whole column in C (map) and stops at the first misfit.
    if all(map(_TEXT_INTEGER.fullmatch, values)):
        if max(map(len, values)) <= 18 or all(_INT64_MIN <= int(v) <= _INT64_MAX for v in values):
            return "integer"
        return "string"
    if all(map(_TEXT_NUMBER.fullmatch, values)):
        return "number" if all(map(math.isfinite, map(float, values))) else "string"
    if all(map(_BOOLEAN.fullmatch, values)):
        return "boolean"
    if all(map(_TIMESTAMP.fullmatch, values)):
        return "timestamp"
    return "string"


def _infer_json(values: list[Any]) -> str:
    types = set(map(type, values))
    if types == {bool}:
        return "boolean"
    if types <= {int, float}:
        if int in types and not (min(values) >= _INT64_MIN and max(values) <= _INT64_MAX):
            return "string"
        return "integer" if types == {int} else "number"
    if types == {str} and all(map(_TIMESTAMP.fullmatch, values)):
        return "timestamp"
    return "string"


def _infer(values: list[Any], text: bool) -> str:
    """Return the type all non-null values share; "timestamp" still needs parsing."""
    present = [value for value in values if value is not None]
    if not present:
        return "string"
    return _infer_text(present) if text else _infer_json(present)


def _timestamps(values: list[Any]) -> list[str | None] | None:
    """Normalise a column of timestamp strings; None if one of them is not a real moment."""
    # Timestamps repeat a lot (dates, hourly readings): parse each distinct text once.
    moments = {text: parse_timestamp(text) for text in set(values) if text is not None}
    if None in moments.values():
        return None
    normalised: dict[str | None, str | None] = dict(
        zip(moments, _format_timestamps(list(moments.values())), strict=True)
    )
    normalised[None] = None
    return list(map(normalised.__getitem__, values))


class _Refused(ValueError):
    """A value cannot be coerced to the type a schema override asks for."""


def _show(value: Any) -> str:
    shown = f"'{value}'" if isinstance(value, str) else canonical_json(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _to_string(value: Any) -> str:
    return value if isinstance(value, str) else canonical_json(value)


def _to_integer(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif (isinstance(value, float) and value.is_integer()) or (
        isinstance(value, str) and _LOOSE_INTEGER.fullmatch(value)
    ):
        number = int(value)
    else:
        raise _Refused("is not an integer")
    if not _INT64_MIN <= number <= _INT64_MAX:
        raise _Refused("is outside the 64-bit integer range")
    return number


def _to_number(value: Any) -> float:
    if isinstance(value, bool):
        raise _Refused("is not a number")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and _LOOSE_NUMBER.fullmatch(value):
        number = float(value)
        if math.isfinite(number):
            return number
    raise _Refused("is not a number")


def _to_boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.lower()
        if lowered == "true" or lowered == "false":
            return lowered == "true"
    raise _Refused("is not a boolean (true or false)")


def _to_moment(value: Any) -> date | datetime:
    moment = parse_timestamp(value) if isinstance(value, str) else None
    if moment is None:
        raise _Refused("is not an ISO 8601 date or datetime")
    return moment


def _to_geometry(value: Any) -> Any:
    return value


_COERCERS: dict[str, Callable[[Any], Any]] = {
    "string": _to_string,
    "integer": _to_integer,
    "number": _to_number,
    "boolean": _to_boolean,
    "timestamp": _to_moment,
    "geometry": _to_geometry,
}


def _text_boolean(value: str) -> bool:
    return value.lower() == "true"


def _same(value: Any) -> Any:
    return value


# Inferred types fit every value by construction, so these skip the checks.
_FAST_TEXT: dict[str, Callable[[Any], Any]] = {
    "string": _same,
    "integer": int,
    "number": float,
    "boolean": _text_boolean,
}
_FAST_JSON: dict[str, Callable[[Any], Any]] = {
    "string": _to_string,
    "integer": _same,
    "number": float,
    "boolean": _same,
    "geometry": _same,
}


def _coerce_column(
    path: str, table: RawTable, name: str, values: list[Any], type_: str, inferred: bool
) -> list[Any]:
    fast = (_FAST_TEXT if table.text else _FAST_JSON).get(type_) if inferred else None
    if fast is _same:
        return values
    if fast is not None:
        return [None if value is None else fast(value) for value in values]
    coerce = _COERCERS[type_]
    out: list[Any] = []
    append = out.append
    for index, value in enumerate(values):
        if value is None:
            append(None)
            continue
        try:
            append(coerce(value))
        except _Refused as exc:
            raise ImportFileError(
                path, table.where(index), f"field '{name}': {_show(value)} {exc}"
            ) from None
    return _format_timestamps(out) if type_ == "timestamp" else out


def _check_schema(path: str, table: RawTable, schema: Mapping[str, str], id_field: str) -> None:
    for name, type_ in schema.items():
        if name not in table.names:
            raise ImportFileError(
                path,
                "",
                f"schema override names field '{name}', which is not in the file "
                f"(fields: {', '.join(table.names)})",
            )
        if type_ not in FIELD_TYPES:
            raise ImportFileError(
                path,
                "",
                f"schema override gives field '{name}' the unknown type '{type_}' "
                f"(types: {', '.join(FIELD_TYPES)})",
            )
        fixed = table.fixed_types.get(name)
        if fixed is not None and type_ != fixed:
            raise ImportFileError(
                path, "", f"schema override: field '{name}' is always of type '{fixed}'"
            )
        if fixed is None and type_ == "geometry":
            raise ImportFileError(
                path,
                "",
                f"schema override: field '{name}' cannot be a geometry "
                "(only the geom field of a GeoJSON file is)",
            )
        if name == id_field and type_ != "string":
            raise ImportFileError(
                path,
                "",
                f"schema override: the id field '{name}' is always a string, not '{type_}'",
            )


def infer_fields(
    path: str, table: RawTable, schema: Mapping[str, str], id_field: str
) -> tuple[tuple[FieldSpec, ...], list[list[Any]]]:
    """Infer every field's type and coerce the table's columns to those types.

    Types named in ``schema`` win over inference; the id field is always a string.
    Returns the fields in column order and the coerced columns. Raises ImportFileError
    when the schema names an unknown field or type, or a value cannot be coerced to the
    type the schema asks for.
    """
    _check_schema(path, table, schema, id_field)
    specs: list[FieldSpec] = []
    columns: list[list[Any]] = []
    for name, values in zip(table.names, table.columns, strict=True):
        inferred = name not in schema
        if name in table.fixed_types:
            type_ = table.fixed_types[name]
        elif name == id_field:
            type_ = "string"
        elif not inferred:
            type_ = schema[name]
        else:
            type_ = _infer(values, table.text)
        coerced = None
        if type_ == "timestamp" and inferred:
            coerced = _timestamps(values)
            if coerced is None:  # looked like timestamps, but e.g. 2026-02-30 is not one
                type_ = "string"
        if coerced is None:
            coerced = _coerce_column(path, table, name, values, type_, inferred)
        specs.append(FieldSpec(name=name, type=type_, nullable=None in values))
        columns.append(coerced)
    return tuple(specs), columns
