"""The town store: SQLite schema, read access, and the compilers of filters, orders and
aggregates into parameterised SQL."""

from allmende.store.aggregates import AggregatePlan, AggregateResult, MeasureSpec, plan_aggregate
from allmende.store.expressions import (
    and_filters,
    compile_expression,
    compile_request_filter,
    filter_fields,
    register_functions,
)
from allmende.store.filters import (
    Condition,
    SqlFilter,
    compile_filter,
    conditions_from_row_filter,
)
from allmende.store.ordering import OrderPlan, compile_order
from allmende.store.reader import ChangeRow, StoreReader
from allmende.store.schema import SCHEMA_VERSION, connect

__all__ = [
    "SCHEMA_VERSION",
    "AggregatePlan",
    "AggregateResult",
    "ChangeRow",
    "Condition",
    "MeasureSpec",
    "OrderPlan",
    "SqlFilter",
    "StoreReader",
    "and_filters",
    "compile_expression",
    "compile_filter",
    "compile_order",
    "compile_request_filter",
    "conditions_from_row_filter",
    "connect",
    "filter_fields",
    "plan_aggregate",
    "register_functions",
]
