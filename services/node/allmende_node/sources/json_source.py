"""Decoding JSON files and reading a JSON array of objects into a raw table."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from allmende.errors import ImportFileError

from .model import RawTable

__all__ = ["decode_text", "json_type", "load_json", "parse_json_array", "table_from_objects"]


def decode_text(path: str, data: bytes) -> str:
    """Decode UTF-8 bytes (a leading byte order mark is dropped).

    Raises ImportFileError naming the line of the first byte that is not UTF-8.
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ImportFileError(
            path, f"line {line}", f"not UTF-8 text (byte 0x{data[exc.start]:02x})"
        ) from None


class _BadValue(ValueError):
    """A JSON document is well-formed but holds something a source may not."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _BadValue(f"an object has the key '{key}' twice")
            seen.add(key)
    return obj


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise _BadValue(f"the number {text} is too large")
    return number


def _no_constant(name: str) -> Any:
    raise _BadValue(f"{name} is not valid JSON")


def load_json(path: str, data: bytes) -> Any:
    """Decode and parse a JSON document.

    Raises ImportFileError for text that is not UTF-8, JSON syntax errors (naming
    ``line N, column M``), objects with a repeated key, and NaN/Infinity or numbers too
    large for a float.
    """
    text = decode_text(path, data)
    try:
        return json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_float=_finite_float,
            parse_constant=_no_constant,
        )
    except json.JSONDecodeError as exc:
        raise ImportFileError(
            path, f"line {exc.lineno}, column {exc.colno}", f"not valid JSON: {exc.msg}"
        ) from None
    except _BadValue as exc:
        raise ImportFileError(path, "", str(exc)) from None


def table_from_objects(
    path: str, format: str, objects: Sequence[dict[str, Any]], label: str
) -> RawTable:
    """Lay out objects as columns, fields in the order they first appear.

    Nested objects and arrays stay as they are (inference turns them into JSON text).
    Raises ImportFileError for an empty field name, naming the object as ``label N``.
    """
    names: dict[str, None] = {}
    for index, obj in enumerate(objects):
        for key in obj:
            if key not in names:
                if not key.strip():
                    raise ImportFileError(path, f"{label} {index + 1}", "empty field name")
                names[key] = None
    columns = [[obj.get(name) for obj in objects] for name in names]
    return RawTable(
        format=format,
        names=list(names),
        columns=columns,
        positions=list(range(1, len(objects) + 1)),
        label=label,
        text=False,
    )


def parse_json_array(path: str, document: Any) -> RawTable:
    """Read a parsed JSON document that must be an array of objects.

    Raises ImportFileError when the document is not an array, is empty ("no records"),
    or holds an item that is not an object (naming ``item N``, 1-based).
    """
    if not isinstance(document, list):
        raise ImportFileError(
            path, "", f"a JSON source must be an array of objects, not {json_type(document)}"
        )
    if not document:
        raise ImportFileError(path, "", "no records (the array is empty)")
    for index, item in enumerate(document):
        if not isinstance(item, dict):
            raise ImportFileError(
                path, f"item {index + 1}", f"must be an object, not {json_type(item)}"
            )
    return table_from_objects(path, "json", document, "item")


def json_type(value: Any) -> str:
    """Name the JSON type of a parsed value, with its article, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
