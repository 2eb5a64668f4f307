"""Turning the changes of one import into signed RecordBatch messages for the backbone.

Changes go out in batches of up to ``BATCH_SIZE``, in sequence order, on
``<prefix>.records.<owner>.<dataset>`` keyed by the dataset id (so one partition keeps a
dataset's batches in order). One Ed25519 signature covers a whole batch: the envelope's
signing input holds the SHA-256 of the payload, which holds every change. Open datasets
carry their changes in plaintext; internal and restricted ones under the dataset's current
data key (allmende.datakeys).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from google.protobuf.timestamp_pb2 import Timestamp

from allmende.backbone import OutgoingMessage, Signer, Topics, seal
from allmende.datakeys import DataKey, DataKeyError, encrypt_changes
from allmende.v1 import backbone_pb2, catalog_pb2

__all__ = ["BATCH_SIZE", "batch_messages", "build_batches"]

BATCH_SIZE = 500
"""Most changes in one RecordBatch (one signature, one encryption)."""


def build_batches(
    owner: str,
    desc: catalog_pb2.DatasetDescriptor,
    changes: Sequence[backbone_pb2.RecordChange],
    data_key: DataKey | None,
    batch_size: int = BATCH_SIZE,
) -> list[backbone_pb2.RecordBatch]:
    """The RecordBatch payloads for ``changes`` (in sequence order) of dataset ``desc``.

    Raises DataKeyError when a non-open dataset has no data key (or one of another dataset),
    ValueError when ``changes`` are not in strictly increasing sequence order.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    seqs = [c.sequence for c in changes]
    if any(a >= b for a, b in itertools.pairwise(seqs)):
        raise ValueError(f"changes of {owner}/{desc.id} are not in increasing sequence order")
    encrypted = desc.classification != catalog_pb2.CLASSIFICATION_OPEN
    if encrypted and data_key is None:
        raise DataKeyError(f"{owner}/{desc.id} is not open: its records need a data key")
    out = []
    for start in range(0, len(changes), batch_size):
        chunk = changes[start : start + batch_size]
        batch = backbone_pb2.RecordBatch(
            owner=owner,
            dataset=desc.id,
            first_sequence=chunk[0].sequence,
            last_sequence=chunk[-1].sequence,
            dataset_version=desc.version,
        )
        body = backbone_pb2.RecordChanges(changes=chunk)
        if encrypted:
            assert data_key is not None
            encrypt_changes(data_key, batch, body)
        else:
            batch.plaintext.CopyFrom(body)
        out.append(batch)
    return out


def batch_messages(
    owner: str,
    cluster: str,
    topics: Topics,
    desc: catalog_pb2.DatasetDescriptor,
    changes: Sequence[backbone_pb2.RecordChange],
    *,
    signer: Signer | None,
    data_key: DataKey | None,
    created_at: Timestamp,
    batch_size: int = BATCH_SIZE,
) -> list[OutgoingMessage]:
    """The outbox messages carrying ``changes``: sealed RecordBatches signed by ``signer``.

    The node always passes its own signer; None leaves the batches unsigned (for tests of
    what verifying consumers refuse). Raises what :func:`build_batches` raises, and
    IdentityError when the signer is not ``owner``.
    """
    topic = topics.records(owner, desc.id)
    return [
        OutgoingMessage(
            topic=topic,
            key=desc.id.encode(),
            value=seal(owner, cluster, batch, created_at=created_at, signer=signer),
        )
        for batch in build_batches(owner, desc, changes, data_key, batch_size)
    ]
