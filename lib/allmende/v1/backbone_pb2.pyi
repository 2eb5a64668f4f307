import datetime

from allmende.v1 import catalog_pb2 as _catalog_pb2
from allmende.v1 import query_pb2 as _query_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Envelope(_message.Message):
    __slots__ = ("author", "cluster", "payload_type", "payload", "created_at", "signature")
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_TYPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    author: str
    cluster: str
    payload_type: str
    payload: bytes
    created_at: _timestamp_pb2.Timestamp
    signature: bytes
    def __init__(self, author: _Optional[str] = ..., cluster: _Optional[str] = ..., payload_type: _Optional[str] = ..., payload: _Optional[bytes] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., signature: _Optional[bytes] = ...) -> None: ...

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

class RecordChanges(_message.Message):
    __slots__ = ("changes",)
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedCompositeFieldContainer[RecordChange]
    def __init__(self, changes: _Optional[_Iterable[_Union[RecordChange, _Mapping]]] = ...) -> None: ...

class RecordBatch(_message.Message):
    __slots__ = ("owner", "dataset", "first_sequence", "last_sequence", "dataset_version", "plaintext", "encrypted")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTED_FIELD_NUMBER: _ClassVar[int]
    owner: str
    dataset: str
    first_sequence: int
    last_sequence: int
    dataset_version: int
    plaintext: RecordChanges
    encrypted: EncryptedChanges
    def __init__(self, owner: _Optional[str] = ..., dataset: _Optional[str] = ..., first_sequence: _Optional[int] = ..., last_sequence: _Optional[int] = ..., dataset_version: _Optional[int] = ..., plaintext: _Optional[_Union[RecordChanges, _Mapping]] = ..., encrypted: _Optional[_Union[EncryptedChanges, _Mapping]] = ...) -> None: ...

class EncryptedChanges(_message.Message):
    __slots__ = ("key_version", "nonce", "ciphertext")
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    key_version: int
    nonce: bytes
    ciphertext: bytes
    def __init__(self, key_version: _Optional[int] = ..., nonce: _Optional[bytes] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class DataKeyGrant(_message.Message):
    __slots__ = ("owner", "dataset", "key_version", "recipient", "ephemeral_public_key", "nonce", "wrapped_key", "revoked")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    EPHEMERAL_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    WRAPPED_KEY_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    owner: str
    dataset: str
    key_version: int
    recipient: str
    ephemeral_public_key: bytes
    nonce: bytes
    wrapped_key: bytes
    revoked: bool
    def __init__(self, owner: _Optional[str] = ..., dataset: _Optional[str] = ..., key_version: _Optional[int] = ..., recipient: _Optional[str] = ..., ephemeral_public_key: _Optional[bytes] = ..., nonce: _Optional[bytes] = ..., wrapped_key: _Optional[bytes] = ..., revoked: _Optional[bool] = ...) -> None: ...

class MemberRecord(_message.Message):
    __slots__ = ("cluster", "member", "signing_public_key", "encryption_public_key", "certificate_serials", "version", "issued_at")
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    SIGNING_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_SERIALS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    member: str
    signing_public_key: bytes
    encryption_public_key: bytes
    certificate_serials: _containers.RepeatedScalarFieldContainer[str]
    version: int
    issued_at: _timestamp_pb2.Timestamp
    def __init__(self, cluster: _Optional[str] = ..., member: _Optional[str] = ..., signing_public_key: _Optional[bytes] = ..., encryption_public_key: _Optional[bytes] = ..., certificate_serials: _Optional[_Iterable[str]] = ..., version: _Optional[int] = ..., issued_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Revocation(_message.Message):
    __slots__ = ("cluster", "member", "reason", "version", "revoked_at")
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    member: str
    reason: str
    version: int
    revoked_at: _timestamp_pb2.Timestamp
    def __init__(self, cluster: _Optional[str] = ..., member: _Optional[str] = ..., reason: _Optional[str] = ..., version: _Optional[int] = ..., revoked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TrustStatement(_message.Message):
    __slots__ = ("member", "revocation")
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    REVOCATION_FIELD_NUMBER: _ClassVar[int]
    member: MemberRecord
    revocation: Revocation
    def __init__(self, member: _Optional[_Union[MemberRecord, _Mapping]] = ..., revocation: _Optional[_Union[Revocation, _Mapping]] = ...) -> None: ...

class PolicyModule(_message.Message):
    __slots__ = ("name", "source")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    source: str
    def __init__(self, name: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...

class PolicyBundle(_message.Message):
    __slots__ = ("cluster", "owner", "version", "modules", "agreements_json", "settings_json", "published_at", "comment", "rollback_of")
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODULES_FIELD_NUMBER: _ClassVar[int]
    AGREEMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_JSON_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_AT_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_OF_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    owner: str
    version: int
    modules: _containers.RepeatedCompositeFieldContainer[PolicyModule]
    agreements_json: str
    settings_json: str
    published_at: _timestamp_pb2.Timestamp
    comment: str
    rollback_of: int
    def __init__(self, cluster: _Optional[str] = ..., owner: _Optional[str] = ..., version: _Optional[int] = ..., modules: _Optional[_Iterable[_Union[PolicyModule, _Mapping]]] = ..., agreements_json: _Optional[str] = ..., settings_json: _Optional[str] = ..., published_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., comment: _Optional[str] = ..., rollback_of: _Optional[int] = ...) -> None: ...

class DecisionRecord(_message.Message):
    __slots__ = ("owner", "sequence", "entry_json", "entry_hash")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ENTRY_JSON_FIELD_NUMBER: _ClassVar[int]
    ENTRY_HASH_FIELD_NUMBER: _ClassVar[int]
    owner: str
    sequence: int
    entry_json: str
    entry_hash: bytes
    def __init__(self, owner: _Optional[str] = ..., sequence: _Optional[int] = ..., entry_json: _Optional[str] = ..., entry_hash: _Optional[bytes] = ...) -> None: ...
