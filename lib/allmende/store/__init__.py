"""The town store: SQLite schema, read access and the filter compiler."""

from allmende.store.aggregates import AggregatePlan, AggregateResult, MeasureSpec, plan_aggregate
from allmende.store.filters import (
    Condition,
    SqlFilter,
    compile_filter,
    conditions_from_proto,
    conditions_from_row_filter,
)
from allmende.store.reader import ChangeRow, StoreReader
from allmende.store.schema import SCHEMA_VERSION, connect

__all__ = [
    "SCHEMA_VERSION",
    "AggregatePlan",
    "AggregateResult",
    "ChangeRow",
    "Condition",
    "MeasureSpec",
    "SqlFilter",
    "StoreReader",
    "compile_filter",
    "conditions_from_proto",
    "conditions_from_row_filter",
    "connect",
    "plan_aggregate",
]
