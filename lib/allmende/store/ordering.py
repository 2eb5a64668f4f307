"""Order by and keyset paging over record JSON: ORDER BY, the rows after a page, a row's sort key.

Records sort by the request's fields, nulls (and missing fields) first when ascending and last
when descending, then by record id ascending, so the order is total. The next page is
selected by the last row's sort key and id (``OrderPlan.after``), never by an offset: a row
inserted or deleted between pages moves no other row across a page boundary.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from allmende.errors import InvalidRequest
from allmende.store.expressions import check_column, instant_key, instant_key_sql, json_path
from allmende.store.filters import SqlFilter
from allmende.v1 import query_pb2

__all__ = ["MAX_ORDER_FIELDS", "OrderPlan", "SortField", "compile_order"]

MAX_ORDER_FIELDS = 8
_SORTABLE = ("string", "integer", "number", "boolean", "timestamp")


@dataclass(frozen=True)
class SortField:
    """One field of the order: its name, schema type and direction."""

    name: str
    type: str
    descending: bool


@dataclass(frozen=True)
class OrderPlan:
    """The order of a Query; ``sql``/``params`` is its ORDER BY clause (ties by id)."""

    fields: tuple[SortField, ...]
    column: str = "json"
    id_column: str = "id"

    def _key(self, f: SortField) -> tuple[str, tuple[Any, ...]]:
        value = f"json_extract({self.column}, ?)"
        if f.type == "timestamp":
            return instant_key_sql(value, (json_path(f.name),))
        return value, (json_path(f.name),)

    @property
    def sql(self) -> str:
        """``ORDER BY k1 ASC, k2 DESC, id ASC``; SQLite sorts NULL lowest, as the spec wants."""
        keys = [f"{self._key(f)[0]} {'DESC' if f.descending else 'ASC'}" for f in self.fields]
        return "ORDER BY " + ", ".join([*keys, f"{self.id_column} ASC"])

    @property
    def params(self) -> tuple[Any, ...]:
        """The parameters of ``sql``."""
        return tuple(p for f in self.fields for p in self._key(f)[1])

    @property
    def key_columns(self) -> tuple[str, tuple[Any, ...]]:
        """SQL selecting the sort key's values as columns (``k1, k2``), and its parameters.

        Each value equals what ``row_key`` computes from the row's JSON.
        """
        keys = [self._key(f) for f in self.fields]
        return ", ".join(sql for sql, _ in keys), tuple(p for _, ps in keys for p in ps)

    def row_key(self, record: str | Mapping[str, Any]) -> list[Any]:
        """The sort key of a row (its JSON text or decoded object), to resume after it.

        The values are JSON-safe (str, int, float, None), so they fit in a page token:
        booleans become 1/0 and timestamps their instant key, as SQLite compares them.
        """
        data = json.loads(record) if isinstance(record, str) else record
        out: list[Any] = []
        for f in self.fields:
            value = data.get(f.name)
            if f.type == "timestamp":
                value = instant_key(value)
            elif isinstance(value, bool):
                value = int(value)
            elif isinstance(value, str):
                value = value.split("\x00", 1)[0]  # SQLite's JSON functions stop at U+0000
            out.append(value)
        return out

    def after(self, last_key: Sequence[Any], last_id: str) -> SqlFilter:
        """A WHERE fragment selecting the rows that sort strictly after ``(last_key, last_id)``.

        Raises InvalidRequest when ``last_key`` does not fit this order (a token of another
        query).
        """
        if len(last_key) != len(self.fields):
            raise InvalidRequest("the page token does not fit the query's order")
        alternatives: list[str] = []
        params: list[Any] = []
        same: list[str] = []  # the earlier fields equal the last row's
        same_params: list[Any] = []
        for f, last in zip(self.fields, last_key, strict=True):
            key, key_params = self._key(f)
            later: str | None
            if last is None:
                # Nulls come first ascending: every value is later. Descending they are last.
                later, later_params = (None, []) if f.descending else (f"{key} IS NOT NULL", [])
            else:
                # A null compares as unknown: later when descending (nulls last), else not.
                later = f"COALESCE({key} {'<' if f.descending else '>'} ?, {int(f.descending)})"
                later_params = [last]
            if later is not None:
                alternatives.append(" AND ".join([*same, later]))
                params += [*same_params, *key_params, *later_params]
            same.append(f"{key} IS ?")
            same_params += [*key_params, last]
        alternatives.append(" AND ".join([*same, f"{self.id_column} > ?"]))
        params += [*same_params, last_id]
        return SqlFilter("(" + " OR ".join(f"({a})" for a in alternatives) + ")", tuple(params))


def compile_order(
    order_by: Sequence[query_pb2.OrderBy],
    field_types: Mapping[str, str],
    column: str = "json",
    id_column: str = "id",
    *,
    path: str = "order_by",
) -> OrderPlan:
    """Check ``order_by`` against the schema and plan the order (empty: by record id).

    Raises InvalidRequest naming ``order_by[i]`` and the field: empty, unknown, named twice,
    a geometry (which has no order), or more than MAX_ORDER_FIELDS fields.
    """
    if len(order_by) > MAX_ORDER_FIELDS:
        raise InvalidRequest(f"{path}: at most {MAX_ORDER_FIELDS} fields, not {len(order_by)}")
    fields: list[SortField] = []
    for i, item in enumerate(order_by):
        where = f"{path}[{i}]"
        if not item.field:
            raise InvalidRequest(f"{where}: field is empty", field="")
        ftype = field_types.get(item.field)
        if ftype is None:
            known = ", ".join(sorted(field_types))
            raise InvalidRequest(
                f"{where}: field {item.field!r} is unknown (fields: {known})", field=item.field
            )
        if ftype not in _SORTABLE:
            raise InvalidRequest(
                f"{where}: field {item.field!r} is a {ftype} and cannot be ordered",
                field=item.field,
            )
        if any(f.name == item.field for f in fields):
            raise InvalidRequest(f"{where}: field {item.field!r} is named twice", field=item.field)
        fields.append(SortField(item.field, ftype, item.descending))
    return OrderPlan(tuple(fields), check_column(column), check_column(id_column))
