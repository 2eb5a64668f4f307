import datetime

from allmende.v1 import catalog_pb2 as _catalog_pb2
from allmende.v1 import query_pb2 as _query_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Envelope(_message.Message):
    __slots__ = ("author", "cluster", "payload_type", "payload", "created_at")
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_TYPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    author: str
    cluster: str
    payload_type: str
    payload: bytes
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, author: _Optional[str] = ..., cluster: _Optional[str] = ..., payload_type: _Optional[str] = ..., payload: _Optional[bytes] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CatalogEntry(_message.Message):
    __slots__ = ("dataset", "withdrawn")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    WITHDRAWN_FIELD_NUMBER: _ClassVar[int]
    dataset: _catalog_pb2.DatasetDescriptor
    withdrawn: bool
    def __init__(self, dataset: _Optional[_Union[_catalog_pb2.DatasetDescriptor, _Mapping]] = ..., withdrawn: _Optional[bool] = ...) -> None: ...

class RecordChange(_message.Message):
    __slots__ = ("owner", "dataset", "kind", "record_id", "json", "sequence", "changed_at", "dataset_version")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CHANGED_AT_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    owner: str
    dataset: str
    kind: _query_pb2.ChangeKind
    record_id: str
    json: str
    sequence: int
    changed_at: _timestamp_pb2.Timestamp
    dataset_version: int
    def __init__(self, owner: _Optional[str] = ..., dataset: _Optional[str] = ..., kind: _Optional[_Union[_query_pb2.ChangeKind, str]] = ..., record_id: _Optional[str] = ..., json: _Optional[str] = ..., sequence: _Optional[int] = ..., changed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., dataset_version: _Optional[int] = ...) -> None: ...
