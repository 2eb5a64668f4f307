"""Compiles request filters and policy row filters into parameterised SQL over record JSON."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from allmende.errors import InvalidRequest, PolicyError

__all__ = [
    "Condition",
    "SqlFilter",
    "compile_filter",
    "conditions_from_row_filter",
]

_ORDERED = {"integer", "number", "timestamp", "string"}


@dataclass(frozen=True)
class Condition:
    """``field op value``; op is one of = != < <= > >= IN. ``origin`` names where it came from."""

    field: str
    op: str
    value: Any
    origin: str = "filter"


@dataclass(frozen=True)
class SqlFilter:
    """A WHERE fragment (``TRUE`` when empty) and its parameters, for one JSON column."""

    sql: str
    params: tuple[Any, ...]


_ROW_FILTER_OPS = {"eq": "=", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "in": "IN"}


def conditions_from_row_filter(row_filter: Mapping[str, Mapping[str, Any]]) -> list[Condition]:
    """Turn a policy decision's row_filter ``{field: {op: value}}`` into conditions.

    ``op`` is one of eq, ne, lt, le, gt, ge, in (a non-empty list), exactly one per field;
    the values are checked against the schema when the filter is compiled. Raises
    PolicyError naming the field for anything else: the owner's filter is broken, and
    nothing is served under a filter the gateway cannot apply exactly.
    """
    out = []
    for name, spec in sorted(row_filter.items()):
        where = f"the policy's row filter on field {name!r}"
        if not isinstance(spec, Mapping) or len(spec) != 1:
            raise PolicyError(f"{where} must hold exactly one condition {{op: value}}")
        ((op, value),) = spec.items()
        sql_op = _ROW_FILTER_OPS.get(op)
        if sql_op is None:
            known = ", ".join(_ROW_FILTER_OPS)
            raise PolicyError(f"{where} uses unknown operator {op!r} (known: {known})")
        if sql_op == "IN":
            if not isinstance(value, list | tuple) or not value:
                raise PolicyError(f"{where}: 'in' needs a non-empty list, not {value!r}")
            value = list(value)
        out.append(Condition(name, sql_op, value, origin="policy"))
    return out


def _check_value(cond: Condition, ftype: str) -> None:
    values = cond.value if cond.op == "IN" else [cond.value]
    if cond.op == "IN" and (not isinstance(cond.value, list) or not cond.value):
        raise InvalidRequest(f"field {cond.field!r}: 'in' needs a non-empty list", field=cond.field)
    if ftype == "geometry":
        raise InvalidRequest(
            f"field {cond.field!r} is a geometry and cannot be compared", field=cond.field
        )
    if cond.op in {"<", "<=", ">", ">="} and ftype not in _ORDERED:
        raise InvalidRequest(
            f"field {cond.field!r} ({ftype}) has no order for {cond.op}", field=cond.field
        )
    for v in values:
        ok = {
            "string": isinstance(v, str),
            "timestamp": isinstance(v, str),
            "integer": isinstance(v, int) and not isinstance(v, bool),
            "number": isinstance(v, int | float) and not isinstance(v, bool),
            "boolean": isinstance(v, bool),
        }.get(ftype, False)
        if not ok:
            raise InvalidRequest(
                f"field {cond.field!r} is {ftype}; {v!r} is not a {ftype} value", field=cond.field
            )


def compile_filter(
    conditions: Sequence[Condition], field_types: Mapping[str, str], column: str = "json"
) -> SqlFilter:
    """AND all ``conditions`` into SQL over the JSON text in ``column``.

    Every field is checked against ``field_types`` (name → type) and every value against the
    field's type; raises InvalidRequest naming the field and the problem (PolicyError for a
    condition of the policy's row filter). Values and JSON paths are bound as parameters,
    never spliced into the SQL.
    """
    parts: list[str] = []
    params: list[Any] = []
    for cond in conditions:
        try:
            ftype = field_types.get(cond.field)
            if ftype is None:
                known = ", ".join(sorted(field_types))
                raise InvalidRequest(
                    f"unknown field {cond.field!r} (fields: {known})", field=cond.field
                )
            _check_value(cond, ftype)
        except InvalidRequest as exc:
            if cond.origin != "policy":
                raise
            # Not the caller's mistake: the owner's row filter does not fit the dataset.
            raise PolicyError(f"the policy's row filter does not fit the dataset: {exc}") from exc
        path = '$."' + cond.field.replace('"', '""') + '"'
        if cond.op == "IN":
            marks = ", ".join("?" for _ in cond.value)
            parts.append(f"json_extract({column}, ?) IN ({marks})")
            params += [path, *cond.value]
        else:
            parts.append(f"json_extract({column}, ?) {cond.op} ?")
            params += [path, cond.value]
    if not parts:
        return SqlFilter("1", ())
    return SqlFilter("(" + " AND ".join(parts) + ")", tuple(params))
