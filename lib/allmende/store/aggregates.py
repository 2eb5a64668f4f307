"""Counts, sums, minima, maxima and averages over groups of records, as parameterised SQL.

``plan_aggregate`` checks an Aggregate request's group_by fields and measures against the
dataset's schema; ``AggregatePlan.sql`` compiles it with a filter into one SQLite statement
over the records' JSON (``json_extract``, every path and value bound as a parameter), and
``AggregatePlan.groups`` turns its rows into the groups a caller may see: groups under the
grant's minimum size are left out and counted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from allmende.errors import InvalidRequest
from allmende.store.filters import SqlFilter
from allmende.v1 import query_pb2

__all__ = ["AggregatePlan", "AggregateResult", "MeasureSpec", "plan_aggregate"]

FUNCTIONS = {
    query_pb2.AGGREGATE_FUNCTION_COUNT: "count",
    query_pb2.AGGREGATE_FUNCTION_SUM: "sum",
    query_pb2.AGGREGATE_FUNCTION_MIN: "min",
    query_pb2.AGGREGATE_FUNCTION_MAX: "max",
    query_pb2.AGGREGATE_FUNCTION_AVG: "avg",
}
# The field types each function accepts (COUNT takes no field).
_FIELD_TYPES = {
    "sum": ("integer", "number"),
    "avg": ("integer", "number"),
    "min": ("integer", "number", "timestamp"),
    "max": ("integer", "number", "timestamp"),
}
_GROUPABLE = ("string", "integer", "number", "boolean", "timestamp")


@dataclass(frozen=True)
class MeasureSpec:
    """One measure: ``function`` (count, sum, min, max, avg) of ``field``, reported as ``name``."""

    function: str
    field: str
    name: str


@dataclass(frozen=True)
class AggregateResult:
    """The groups a caller may see, and how many were left out for being too small."""

    groups: list[dict[str, Any]]
    suppressed_groups: int
    truncated: bool


def _path(field: str) -> str:
    return '$."' + field.replace('"', '""') + '"'


def _unknown(field: str, where: str, field_types: Mapping[str, str]) -> InvalidRequest:
    known = ", ".join(sorted(field_types))
    return InvalidRequest(f"{where}: unknown field {field!r} (fields: {known})", field=field)


def _group_by(group_by: Sequence[str], field_types: Mapping[str, str]) -> tuple[str, ...]:
    seen: set[str] = set()
    for i, name in enumerate(group_by):
        where = f"group_by[{i}]"
        ftype = field_types.get(name)
        if ftype is None:
            raise _unknown(name, where, field_types)
        if ftype not in _GROUPABLE:
            raise InvalidRequest(
                f"{where}: field {name!r} is a {ftype} and cannot form groups", field=name
            )
        if name in seen:
            raise InvalidRequest(f"{where}: field {name!r} is named twice", field=name)
        seen.add(name)
    return tuple(group_by)


def _measure(i: int, m: query_pb2.Measure, field_types: Mapping[str, str]) -> MeasureSpec:
    where = f"measures[{i}]"
    function = FUNCTIONS.get(m.function)
    if function is None:
        raise InvalidRequest(
            f"{where}: function is missing (COUNT, SUM, MIN, MAX or AVG)", field=m.field
        )
    if function == "count":
        if m.field:
            raise InvalidRequest(
                f"{where}: COUNT counts records and takes no field (got {m.field!r})",
                field=m.field,
            )
        return MeasureSpec("count", "", m.name or "count")
    if not m.field:
        raise InvalidRequest(f"{where}: {function.upper()} needs a field", field="")
    ftype = field_types.get(m.field)
    if ftype is None:
        raise _unknown(m.field, where, field_types)
    allowed = _FIELD_TYPES[function]
    if ftype not in allowed:
        raise InvalidRequest(
            f"{where}: {function.upper()} needs a field of type {' or '.join(allowed)}; "
            f"{m.field!r} is {ftype}",
            field=m.field,
        )
    return MeasureSpec(function, m.field, m.name or f"{function}_{m.field}")


def plan_aggregate(
    group_by: Sequence[str], measures: Sequence[query_pb2.Measure], field_types: Mapping[str, str]
) -> AggregatePlan:
    """Check the request against the schema (field name → type) and plan it.

    Raises InvalidRequest naming the field for an unknown field, a field of the wrong type,
    a group_by field named twice, no measures, and two outputs with the same name.
    """
    groups = _group_by(group_by, field_types)
    if not measures:
        raise InvalidRequest("measures: name at least one (e.g. COUNT)", field="measures")
    specs = tuple(_measure(i, m, field_types) for i, m in enumerate(measures))
    names = set(groups)
    for i, spec in enumerate(specs):
        if spec.name in names:
            raise InvalidRequest(
                f"measures[{i}]: the name {spec.name!r} is already used in this answer; "
                "give the measure another name",
                field=spec.name,
            )
        names.add(spec.name)
    booleans = frozenset(g for g in groups if field_types[g] == "boolean")
    return AggregatePlan(groups, specs, booleans)


@dataclass(frozen=True)
class AggregatePlan:
    """A checked Aggregate request: its group_by fields and measures."""

    group_by: tuple[str, ...]
    measures: tuple[MeasureSpec, ...]
    booleans: frozenset[str] = frozenset()

    @property
    def fields(self) -> tuple[str, ...]:
        """Every field the answer depends on (group_by and measured), sorted, no repeats."""
        return tuple(sorted({*self.group_by, *(m.field for m in self.measures if m.field)}))

    def sql(self, dataset: str, flt: SqlFilter) -> tuple[str, list[Any]]:
        """One SELECT over the dataset's records passing ``flt``: the group values, the group's
        record count, then every measure, grouped and ordered by the group values."""
        cols: list[str] = []
        params: list[Any] = []
        for i, name in enumerate(self.group_by):
            cols.append(f"json_extract(json, ?) AS g{i}")
            params.append(_path(name))
        cols.append("COUNT(*)")
        for m in self.measures:
            if m.function == "count":
                cols.append("COUNT(*)")
            else:
                cols.append(f"{m.function.upper()}(json_extract(json, ?))")
                params.append(_path(m.field))
        sql = f"SELECT {', '.join(cols)} FROM records WHERE dataset = ? AND {flt.sql}"
        params += [dataset, *flt.params]
        if self.group_by:
            keys = ", ".join(f"g{i}" for i in range(len(self.group_by)))
            sql += f" GROUP BY {keys} ORDER BY {keys}"
        return sql, params

    def groups(
        self, rows: Sequence[Sequence[Any]], min_group_size: int, max_groups: int
    ) -> AggregateResult:
        """The groups of ``rows`` (as ``sql`` selects them) a caller may see.

        Groups of fewer than ``min_group_size`` records are left out and counted; at most
        ``max_groups`` are returned (``truncated`` says whether more were there).
        """
        out: list[dict[str, Any]] = []
        suppressed, truncated = 0, False
        n_groups = len(self.group_by)
        for row in rows:
            count = int(row[n_groups])
            if min_group_size > 0 and count < min_group_size:
                suppressed += 1
                continue
            if len(out) >= max_groups:
                truncated = True
                continue
            group: dict[str, Any] = {}
            for name, value in zip(self.group_by, row[:n_groups], strict=True):
                # SQLite's json_extract gives booleans as 0 and 1.
                group[name] = bool(value) if name in self.booleans and value is not None else value
            for m, value in zip(self.measures, row[n_groups + 1 :], strict=True):
                group[m.name] = value
            out.append(group)
        return AggregateResult(out, suppressed, truncated)
