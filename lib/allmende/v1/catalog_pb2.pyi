import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Classification(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CLASSIFICATION_UNSPECIFIED: _ClassVar[Classification]
    CLASSIFICATION_OPEN: _ClassVar[Classification]
    CLASSIFICATION_INTERNAL: _ClassVar[Classification]
    CLASSIFICATION_RESTRICTED: _ClassVar[Classification]

class FieldType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FIELD_TYPE_UNSPECIFIED: _ClassVar[FieldType]
    FIELD_TYPE_STRING: _ClassVar[FieldType]
    FIELD_TYPE_INTEGER: _ClassVar[FieldType]
    FIELD_TYPE_NUMBER: _ClassVar[FieldType]
    FIELD_TYPE_BOOLEAN: _ClassVar[FieldType]
    FIELD_TYPE_TIMESTAMP: _ClassVar[FieldType]
    FIELD_TYPE_GEOMETRY: _ClassVar[FieldType]
CLASSIFICATION_UNSPECIFIED: Classification
CLASSIFICATION_OPEN: Classification
CLASSIFICATION_INTERNAL: Classification
CLASSIFICATION_RESTRICTED: Classification
FIELD_TYPE_UNSPECIFIED: FieldType
FIELD_TYPE_STRING: FieldType
FIELD_TYPE_INTEGER: FieldType
FIELD_TYPE_NUMBER: FieldType
FIELD_TYPE_BOOLEAN: FieldType
FIELD_TYPE_TIMESTAMP: FieldType
FIELD_TYPE_GEOMETRY: FieldType

class Field(_message.Message):
    __slots__ = ("name", "type", "nullable", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NULLABLE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: FieldType
    nullable: bool
    description: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[FieldType, str]] = ..., nullable: _Optional[bool] = ..., description: _Optional[str] = ...) -> None: ...

class BoundingBox(_message.Message):
    __slots__ = ("min_lon", "min_lat", "max_lon", "max_lat")
    MIN_LON_FIELD_NUMBER: _ClassVar[int]
    MIN_LAT_FIELD_NUMBER: _ClassVar[int]
    MAX_LON_FIELD_NUMBER: _ClassVar[int]
    MAX_LAT_FIELD_NUMBER: _ClassVar[int]
    min_lon: float
    min_lat: float
    max_lon: float
    max_lat: float
    def __init__(self, min_lon: _Optional[float] = ..., min_lat: _Optional[float] = ..., max_lon: _Optional[float] = ..., max_lat: _Optional[float] = ...) -> None: ...

class DatasetDescriptor(_message.Message):
    __slots__ = ("owner", "id", "title", "description", "keywords", "license", "classification", "fields", "key_field", "spatial_extent", "updated_at", "version", "record_count", "cluster", "gateway_address", "source")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    KEYWORDS_FIELD_NUMBER: _ClassVar[int]
    LICENSE_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_FIELD_NUMBER: _ClassVar[int]
    SPATIAL_EXTENT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RECORD_COUNT_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    owner: str
    id: str
    title: str
    description: str
    keywords: _containers.RepeatedScalarFieldContainer[str]
    license: str
    classification: Classification
    fields: _containers.RepeatedCompositeFieldContainer[Field]
    key_field: str
    spatial_extent: BoundingBox
    updated_at: _timestamp_pb2.Timestamp
    version: int
    record_count: int
    cluster: str
    gateway_address: str
    source: str
    def __init__(self, owner: _Optional[str] = ..., id: _Optional[str] = ..., title: _Optional[str] = ..., description: _Optional[str] = ..., keywords: _Optional[_Iterable[str]] = ..., license: _Optional[str] = ..., classification: _Optional[_Union[Classification, str]] = ..., fields: _Optional[_Iterable[_Union[Field, _Mapping]]] = ..., key_field: _Optional[str] = ..., spatial_extent: _Optional[_Union[BoundingBox, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., version: _Optional[int] = ..., record_count: _Optional[int] = ..., cluster: _Optional[str] = ..., gateway_address: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...

class ListDatasetsRequest(_message.Message):
    __slots__ = ("owner", "keyword")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    KEYWORD_FIELD_NUMBER: _ClassVar[int]
    owner: str
    keyword: str
    def __init__(self, owner: _Optional[str] = ..., keyword: _Optional[str] = ...) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("datasets",)
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[DatasetDescriptor]
    def __init__(self, datasets: _Optional[_Iterable[_Union[DatasetDescriptor, _Mapping]]] = ...) -> None: ...

class GetDatasetRequest(_message.Message):
    __slots__ = ("owner", "dataset")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    owner: str
    dataset: str
    def __init__(self, owner: _Optional[str] = ..., dataset: _Optional[str] = ...) -> None: ...
