import datetime

from allmende.v1 import catalog_pb2 as _catalog_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Operator(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPERATOR_UNSPECIFIED: _ClassVar[Operator]
    OPERATOR_EQ: _ClassVar[Operator]
    OPERATOR_NE: _ClassVar[Operator]
    OPERATOR_LT: _ClassVar[Operator]
    OPERATOR_LE: _ClassVar[Operator]
    OPERATOR_GT: _ClassVar[Operator]
    OPERATOR_GE: _ClassVar[Operator]
    OPERATOR_IN: _ClassVar[Operator]
    OPERATOR_PREFIX: _ClassVar[Operator]
    OPERATOR_IS_NULL: _ClassVar[Operator]

class StartFrom(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    START_FROM_UNSPECIFIED: _ClassVar[StartFrom]
    START_FROM_BEGINNING: _ClassVar[StartFrom]
    START_FROM_LIVE: _ClassVar[StartFrom]

class ChangeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANGE_KIND_UNSPECIFIED: _ClassVar[ChangeKind]
    CHANGE_KIND_UPSERT: _ClassVar[ChangeKind]
    CHANGE_KIND_DELETE: _ClassVar[ChangeKind]

class AggregateFunction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGGREGATE_FUNCTION_UNSPECIFIED: _ClassVar[AggregateFunction]
    AGGREGATE_FUNCTION_COUNT: _ClassVar[AggregateFunction]
    AGGREGATE_FUNCTION_SUM: _ClassVar[AggregateFunction]
    AGGREGATE_FUNCTION_MIN: _ClassVar[AggregateFunction]
    AGGREGATE_FUNCTION_MAX: _ClassVar[AggregateFunction]
    AGGREGATE_FUNCTION_AVG: _ClassVar[AggregateFunction]
OPERATOR_UNSPECIFIED: Operator
OPERATOR_EQ: Operator
OPERATOR_NE: Operator
OPERATOR_LT: Operator
OPERATOR_LE: Operator
OPERATOR_GT: Operator
OPERATOR_GE: Operator
OPERATOR_IN: Operator
OPERATOR_PREFIX: Operator
OPERATOR_IS_NULL: Operator
START_FROM_UNSPECIFIED: StartFrom
START_FROM_BEGINNING: StartFrom
START_FROM_LIVE: StartFrom
CHANGE_KIND_UNSPECIFIED: ChangeKind
CHANGE_KIND_UPSERT: ChangeKind
CHANGE_KIND_DELETE: ChangeKind
AGGREGATE_FUNCTION_UNSPECIFIED: AggregateFunction
AGGREGATE_FUNCTION_COUNT: AggregateFunction
AGGREGATE_FUNCTION_SUM: AggregateFunction
AGGREGATE_FUNCTION_MIN: AggregateFunction
AGGREGATE_FUNCTION_MAX: AggregateFunction
AGGREGATE_FUNCTION_AVG: AggregateFunction

class Comparison(_message.Message):
    __slots__ = ("field", "op", "value")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    field: str
    op: Operator
    value: _struct_pb2.Value
    def __init__(self, field: _Optional[str] = ..., op: _Optional[_Union[Operator, str]] = ..., value: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ...) -> None: ...

class WithinBox(_message.Message):
    __slots__ = ("field", "box")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    field: str
    box: _catalog_pb2.BoundingBox
    def __init__(self, field: _Optional[str] = ..., box: _Optional[_Union[_catalog_pb2.BoundingBox, _Mapping]] = ...) -> None: ...

class WithinDistance(_message.Message):
    __slots__ = ("field", "lon", "lat", "meters")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    LON_FIELD_NUMBER: _ClassVar[int]
    LAT_FIELD_NUMBER: _ClassVar[int]
    METERS_FIELD_NUMBER: _ClassVar[int]
    field: str
    lon: float
    lat: float
    meters: float
    def __init__(self, field: _Optional[str] = ..., lon: _Optional[float] = ..., lat: _Optional[float] = ..., meters: _Optional[float] = ...) -> None: ...

class TimeRange(_message.Message):
    __slots__ = ("field", "until")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    field: str
    until: _timestamp_pb2.Timestamp
    def __init__(self, field: _Optional[str] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., **kwargs) -> None: ...

class Expressions(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Expression]
    def __init__(self, items: _Optional[_Iterable[_Union[Expression, _Mapping]]] = ...) -> None: ...

class Expression(_message.Message):
    __slots__ = ("comparison", "bbox", "within", "time_range")
    COMPARISON_FIELD_NUMBER: _ClassVar[int]
    AND_FIELD_NUMBER: _ClassVar[int]
    OR_FIELD_NUMBER: _ClassVar[int]
    NOT_FIELD_NUMBER: _ClassVar[int]
    BBOX_FIELD_NUMBER: _ClassVar[int]
    WITHIN_FIELD_NUMBER: _ClassVar[int]
    TIME_RANGE_FIELD_NUMBER: _ClassVar[int]
    comparison: Comparison
    bbox: WithinBox
    within: WithinDistance
    time_range: TimeRange
    def __init__(self, comparison: _Optional[_Union[Comparison, _Mapping]] = ..., bbox: _Optional[_Union[WithinBox, _Mapping]] = ..., within: _Optional[_Union[WithinDistance, _Mapping]] = ..., time_range: _Optional[_Union[TimeRange, _Mapping]] = ..., **kwargs) -> None: ...

class Filter(_message.Message):
    __slots__ = ("all", "where")
    ALL_FIELD_NUMBER: _ClassVar[int]
    WHERE_FIELD_NUMBER: _ClassVar[int]
    all: _containers.RepeatedCompositeFieldContainer[Comparison]
    where: Expression
    def __init__(self, all: _Optional[_Iterable[_Union[Comparison, _Mapping]]] = ..., where: _Optional[_Union[Expression, _Mapping]] = ...) -> None: ...

class OrderBy(_message.Message):
    __slots__ = ("field", "descending")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    DESCENDING_FIELD_NUMBER: _ClassVar[int]
    field: str
    descending: bool
    def __init__(self, field: _Optional[str] = ..., descending: _Optional[bool] = ...) -> None: ...

class QueryRequest(_message.Message):
    __slots__ = ("owner", "dataset", "purpose", "fields", "filter", "page_size", "page_token", "order_by")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ORDER_BY_FIELD_NUMBER: _ClassVar[int]
    owner: str
    dataset: str
    purpose: str
    fields: _containers.RepeatedScalarFieldContainer[str]
    filter: Filter
    page_size: int
    page_token: str
    order_by: _containers.RepeatedCompositeFieldContainer[OrderBy]
    def __init__(self, owner: _Optional[str] = ..., dataset: _Optional[str] = ..., purpose: _Optional[str] = ..., fields: _Optional[_Iterable[str]] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., order_by: _Optional[_Iterable[_Union[OrderBy, _Mapping]]] = ...) -> None: ...

class Record(_message.Message):
    __slots__ = ("id", "json")
    ID_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    json: str
    def __init__(self, id: _Optional[str] = ..., json: _Optional[str] = ...) -> None: ...

class DecisionSummary(_message.Message):
    __slots__ = ("masked_fields", "row_filter_json", "max_rows", "policy_version", "reasons", "way_in", "agreements", "min_group_size", "requests_per_minute")
    class MaskedFieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MASKED_FIELDS_FIELD_NUMBER: _ClassVar[int]
    ROW_FILTER_JSON_FIELD_NUMBER: _ClassVar[int]
    MAX_ROWS_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    WAY_IN_FIELD_NUMBER: _ClassVar[int]
    AGREEMENTS_FIELD_NUMBER: _ClassVar[int]
    MIN_GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    masked_fields: _containers.ScalarMap[str, str]
    row_filter_json: str
    max_rows: int
    policy_version: str
    reasons: _containers.RepeatedScalarFieldContainer[str]
    way_in: str
    agreements: _containers.RepeatedScalarFieldContainer[str]
    min_group_size: int
    requests_per_minute: int
    def __init__(self, masked_fields: _Optional[_Mapping[str, str]] = ..., row_filter_json: _Optional[str] = ..., max_rows: _Optional[int] = ..., policy_version: _Optional[str] = ..., reasons: _Optional[_Iterable[str]] = ..., way_in: _Optional[str] = ..., agreements: _Optional[_Iterable[str]] = ..., min_group_size: _Optional[int] = ..., requests_per_minute: _Optional[int] = ...) -> None: ...

class QueryResponse(_message.Message):
    __slots__ = ("records", "next_page_token", "decision", "truncated")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    next_page_token: str
    decision: DecisionSummary
    truncated: bool
    def __init__(self, records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., decision: _Optional[_Union[DecisionSummary, _Mapping]] = ..., truncated: _Optional[bool] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("owner", "dataset", "purpose", "fields", "filter", "start", "resume_token", "max_batch")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    owner: str
    dataset: str
    purpose: str
    fields: _containers.RepeatedScalarFieldContainer[str]
    filter: Filter
    start: StartFrom
    resume_token: str
    max_batch: int
    def __init__(self, owner: _Optional[str] = ..., dataset: _Optional[str] = ..., purpose: _Optional[str] = ..., fields: _Optional[_Iterable[str]] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., start: _Optional[_Union[StartFrom, str]] = ..., resume_token: _Optional[str] = ..., max_batch: _Optional[int] = ...) -> None: ...

class ChangeEvent(_message.Message):
    __slots__ = ("kind", "record", "resume_token", "changed_at", "decision")
    KIND_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CHANGED_AT_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    kind: ChangeKind
    record: Record
    resume_token: str
    changed_at: _timestamp_pb2.Timestamp
    decision: DecisionSummary
    def __init__(self, kind: _Optional[_Union[ChangeKind, str]] = ..., record: _Optional[_Union[Record, _Mapping]] = ..., resume_token: _Optional[str] = ..., changed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., decision: _Optional[_Union[DecisionSummary, _Mapping]] = ...) -> None: ...

class Measure(_message.Message):
    __slots__ = ("function", "field", "name")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    function: AggregateFunction
    field: str
    name: str
    def __init__(self, function: _Optional[_Union[AggregateFunction, str]] = ..., field: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class AggregateRequest(_message.Message):
    __slots__ = ("owner", "dataset", "purpose", "filter", "group_by", "measures")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    MEASURES_FIELD_NUMBER: _ClassVar[int]
    owner: str
    dataset: str
    purpose: str
    filter: Filter
    group_by: _containers.RepeatedScalarFieldContainer[str]
    measures: _containers.RepeatedCompositeFieldContainer[Measure]
    def __init__(self, owner: _Optional[str] = ..., dataset: _Optional[str] = ..., purpose: _Optional[str] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., group_by: _Optional[_Iterable[str]] = ..., measures: _Optional[_Iterable[_Union[Measure, _Mapping]]] = ...) -> None: ...

class AggregateResponse(_message.Message):
    __slots__ = ("groups", "suppressed_groups", "decision", "truncated")
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    SUPPRESSED_GROUPS_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    groups: _containers.RepeatedScalarFieldContainer[str]
    suppressed_groups: int
    decision: DecisionSummary
    truncated: bool
    def __init__(self, groups: _Optional[_Iterable[str]] = ..., suppressed_groups: _Optional[int] = ..., decision: _Optional[_Union[DecisionSummary, _Mapping]] = ..., truncated: _Optional[bool] = ...) -> None: ...

class ChangeBatch(_message.Message):
    __slots__ = ("events", "resume_token", "decision")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[ChangeEvent]
    resume_token: str
    decision: DecisionSummary
    def __init__(self, events: _Optional[_Iterable[_Union[ChangeEvent, _Mapping]]] = ..., resume_token: _Optional[str] = ..., decision: _Optional[_Union[DecisionSummary, _Mapping]] = ...) -> None: ...
