"""Building the DatasetDescriptor a node announces for one of its datasets, and its catalog entry."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from allmende.backbone import OutgoingMessage, Signer, Topics, catalog_key, seal
from allmende.config import DatasetSource, NodeConfig
from allmende.errors import ConfigError
from allmende.v1 import backbone_pb2, catalog_pb2
from allmende_node.signing_keys import node_signer
from allmende_node.sources import ParsedSource

__all__ = [
    "CLASSIFICATIONS",
    "FIELD_TYPES",
    "build_descriptor",
    "catalog_message",
    "parse_descriptor",
    "rfc3339",
    "same_content",
    "timestamp",
]

CLASSIFICATIONS: dict[str, catalog_pb2.Classification] = {
    "open": catalog_pb2.CLASSIFICATION_OPEN,
    "internal": catalog_pb2.CLASSIFICATION_INTERNAL,
    "restricted": catalog_pb2.CLASSIFICATION_RESTRICTED,
}
"""Configuration names of the classifications → ``catalog_pb2.Classification`` values."""

FIELD_TYPES: dict[str, catalog_pb2.FieldType] = {
    "string": catalog_pb2.FIELD_TYPE_STRING,
    "integer": catalog_pb2.FIELD_TYPE_INTEGER,
    "number": catalog_pb2.FIELD_TYPE_NUMBER,
    "boolean": catalog_pb2.FIELD_TYPE_BOOLEAN,
    "timestamp": catalog_pb2.FIELD_TYPE_TIMESTAMP,
    "geometry": catalog_pb2.FIELD_TYPE_GEOMETRY,
}
"""Source field types (``allmende_node.sources.FIELD_TYPES``) → ``catalog_pb2.FieldType`` values."""


def rfc3339(moment: datetime) -> str:
    """``moment`` as RFC 3339 in UTC with milliseconds (``2026-11-22T10:00:00.000Z``).

    A naive datetime is taken to be UTC already.
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def timestamp(moment: datetime) -> Timestamp:
    """``moment`` as a protobuf Timestamp (a naive datetime is taken to be UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    ts = Timestamp()
    ts.FromDatetime(moment.astimezone(UTC))
    return ts


def build_descriptor(
    config: NodeConfig,
    source: DatasetSource,
    parsed: ParsedSource,
    *,
    version: int,
    updated_at: datetime | None,
) -> catalog_pb2.DatasetDescriptor:
    """Describe ``parsed`` as dataset ``source.id`` of this node's member.

    ``version`` and ``updated_at`` are set as given (``updated_at=None`` leaves it unset, which
    :func:`same_content` relies on). Raises ConfigError naming the dataset when its
    classification or one of its field types has no protobuf counterpart.
    """
    problems = []
    classification = CLASSIFICATIONS.get(source.classification)
    if classification is None:
        problems.append(
            f"classification {source.classification!r} is not one of {', '.join(CLASSIFICATIONS)}"
        )
    fields = []
    for spec in parsed.fields:
        ftype = FIELD_TYPES.get(spec.type)
        if ftype is None:
            problems.append(f"field {spec.name!r} has unknown type {spec.type!r}")
            continue
        fields.append(catalog_pb2.Field(name=spec.name, type=ftype, nullable=spec.nullable))
    if problems:
        raise ConfigError(f"dataset {source.id!r} ({source.file})", problems)
    desc = catalog_pb2.DatasetDescriptor(
        owner=config.member,
        id=source.id,
        title=source.title,
        description=source.description,
        keywords=list(source.keywords),
        license=source.license,
        classification=classification,
        fields=fields,
        key_field=parsed.id_field,
        version=version,
        record_count=len(parsed.records),
        cluster=config.cluster,
        gateway_address=config.gateway_address,
        source=source.source,
    )
    if parsed.extent is not None:
        min_lon, min_lat, max_lon, max_lat = parsed.extent
        desc.spatial_extent.CopyFrom(
            catalog_pb2.BoundingBox(
                min_lon=min_lon, min_lat=min_lat, max_lon=max_lon, max_lat=max_lat
            )
        )
    if updated_at is not None:
        desc.updated_at.CopyFrom(timestamp(updated_at))
    return desc


def same_content(a: catalog_pb2.DatasetDescriptor, b: catalog_pb2.DatasetDescriptor) -> bool:
    """True when ``a`` and ``b`` differ at most in ``version`` and ``updated_at``."""
    return _without_stamps(a) == _without_stamps(b)


def _without_stamps(desc: catalog_pb2.DatasetDescriptor) -> bytes:
    copy = catalog_pb2.DatasetDescriptor()
    copy.CopyFrom(desc)
    copy.ClearField("version")
    copy.ClearField("updated_at")
    return copy.SerializeToString(deterministic=True)


def parse_descriptor(blob: bytes) -> catalog_pb2.DatasetDescriptor:
    """Decode descriptor bytes as the store keeps them (raises google.protobuf DecodeError)."""
    desc = catalog_pb2.DatasetDescriptor()
    desc.ParseFromString(blob)
    return desc


def catalog_message(
    config: NodeConfig,
    desc: catalog_pb2.DatasetDescriptor,
    *,
    withdrawn: bool = False,
    created_at: datetime | None = None,
    signer: Signer | None = None,
) -> OutgoingMessage:
    """The signed CatalogEntry announcing (or withdrawing) ``desc`` on the catalog topic.

    ``signer`` defaults to the node's own (:func:`allmende_node.signing_keys.node_signer`):
    nothing leaves a node unsigned. Raises ConfigError when the node has no ``[keys]``,
    IdentityError when its signing key cannot be read or belongs to another member.
    """
    entry = backbone_pb2.CatalogEntry(dataset=desc, withdrawn=withdrawn)
    value = seal(
        config.member,
        config.cluster,
        entry,
        created_at=timestamp(created_at) if created_at is not None else None,
        signer=signer if signer is not None else node_signer(config),
    )
    return OutgoingMessage(
        topic=Topics(config.backbone.topic_prefix).catalog,
        key=catalog_key(desc.owner, desc.id),
        value=value,
    )
