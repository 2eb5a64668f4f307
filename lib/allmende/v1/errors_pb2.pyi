from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Denial(_message.Message):
    __slots__ = ("reasons", "policy_version", "subject_member", "owner", "dataset")
    REASONS_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_MEMBER_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    reasons: _containers.RepeatedScalarFieldContainer[str]
    policy_version: str
    subject_member: str
    owner: str
    dataset: str
    def __init__(self, reasons: _Optional[_Iterable[str]] = ..., policy_version: _Optional[str] = ..., subject_member: _Optional[str] = ..., owner: _Optional[str] = ..., dataset: _Optional[str] = ...) -> None: ...
