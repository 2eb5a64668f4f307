"""Importing a parsed source into the town store: diff, change log, catalog row and outbox.

One import is one transaction. The parsed records are compared with the ``records`` table by
id (as canonical JSON); new and changed records are upserted, records missing from the file
are deleted, and every change is appended to ``changes`` with the record as it was before.
The dataset's version goes up by one only when something changed (records, schema or
metadata); re-importing an unchanged file writes nothing.

What goes on the backbone, through the outbox: one CatalogEntry for the new version, and the
changes as signed RecordBatches (allmende_node.record_batches) on
``<prefix>.records.<owner>.<dataset>`` keyed by the dataset id. Open datasets travel in
plaintext; ``internal`` and ``restricted`` ones encrypted under the dataset's current data
key (allmende_node.keys), which only members entitled by an agreement receive.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from allmende.backbone import OutgoingMessage, Topics
from allmende.config import DatasetSource, NodeConfig
from allmende.errors import DatasetNotFound, ImportFileError, InvalidRequest
from allmende.store import connect
from allmende.v1 import backbone_pb2, catalog_pb2, query_pb2
from allmende_node.descriptors import (
    build_descriptor,
    catalog_message,
    parse_descriptor,
    rfc3339,
    same_content,
    timestamp,
)
from allmende_node.keys import current_data_key
from allmende_node.outbox import Outbox, write_transaction
from allmende_node.record_batches import batch_messages
from allmende_node.signing_keys import node_signer
from allmende_node.sources import ParsedSource, read_source

__all__ = [
    "ImportResult",
    "canonical_json",
    "import_configured",
    "import_dataset",
    "import_file",
    "withdraw_dataset",
]


@dataclass(frozen=True)
class ImportResult:
    """What one import did: the dataset's version afterwards and how many records changed."""

    dataset: str
    version: int
    upserts: int
    deletes: int
    unchanged: int


def canonical_json(row: dict[str, Any]) -> str:
    """The one JSON text of a record the store keeps and compares."""
    return json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class _Diff:
    upserts: list[tuple[str, str, str | None]]  # id, new json, old json (None when new)
    deletes: list[tuple[str, str]]  # id, old json
    unchanged: int


def _diff(conn: sqlite3.Connection, dataset: str, parsed: ParsedSource) -> _Diff:
    old = dict(
        conn.execute(
            "SELECT id, json FROM records WHERE dataset = ? ORDER BY id", (dataset,)
        ).fetchall()
    )
    upserts, unchanged = [], 0
    for record_id, row in parsed.records.items():
        new_json = canonical_json(row)
        old_json = old.get(record_id)
        if new_json == old_json:
            unchanged += 1
        else:
            upserts.append((record_id, new_json, old_json))
    deletes = [(rid, js) for rid, js in old.items() if rid not in parsed.records]
    return _Diff(upserts, deletes, unchanged)


def _file_hash(path: str | Path) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return ""


def import_dataset(
    conn: sqlite3.Connection,
    config: NodeConfig,
    source: DatasetSource,
    parsed: ParsedSource,
    now: datetime | None = None,
    *,
    source_hash: str | None = None,
) -> ImportResult:
    """Bring dataset ``source.id`` in the store to the state of ``parsed``, in one transaction.

    ``source_hash`` is the sha256 of the file ``parsed`` was read from (hashed from
    ``parsed.path`` when not given). Raises StoreError (everything rolled back) when SQLite
    fails, ConfigError when the dataset's classification or a field type is unknown or the
    node has no ``[keys]``, and IdentityError when the member's signing key cannot be read
    (nothing is written then).
    """
    now = now or datetime.now(UTC)
    if source_hash is None:
        source_hash = _file_hash(parsed.path)
    with write_transaction(conn, f"importing dataset {source.id!r} into the store"):
        row = conn.execute(
            "SELECT descriptor, version, source_hash FROM datasets WHERE id = ?", (source.id,)
        ).fetchone()
        diff = _diff(conn, source.id, parsed)
        old_version = int(row[1]) if row else 0
        candidate = build_descriptor(config, source, parsed, version=old_version, updated_at=None)
        metadata_changed = row is None or not same_content(parse_descriptor(row[0]), candidate)
        if not diff.upserts and not diff.deletes and not metadata_changed:
            if row[2] != source_hash:
                conn.execute(
                    "UPDATE datasets SET source_hash = ? WHERE id = ?", (source_hash, source.id)
                )
            return ImportResult(source.id, old_version, 0, 0, diff.unchanged)
        version = old_version + 1
        desc = build_descriptor(config, source, parsed, version=version, updated_at=now)
        _write(conn, config, source, desc, diff, source_hash, now)
    return ImportResult(source.id, version, len(diff.upserts), len(diff.deletes), diff.unchanged)


def _write(
    conn: sqlite3.Connection,
    config: NodeConfig,
    source: DatasetSource,
    desc: catalog_pb2.DatasetDescriptor,
    diff: _Diff,
    source_hash: str,
    now: datetime,
) -> None:
    """Write records, change log, dataset row, own catalog row and outbox; inside the txn."""
    changed_at = rfc3339(now)
    blob = desc.SerializeToString(deterministic=True)
    conn.executemany(
        "INSERT INTO records (dataset, id, json) VALUES (?, ?, ?) "
        "ON CONFLICT (dataset, id) DO UPDATE SET json = excluded.json",
        [(source.id, rid, js) for rid, js, _ in diff.upserts],
    )
    conn.executemany(
        "DELETE FROM records WHERE dataset = ? AND id = ?",
        [(source.id, rid) for rid, _ in diff.deletes],
    )
    logged: list[tuple[int, query_pb2.ChangeKind, str, str | None]] = []  # seq, kind, id, json
    for rid, new_json, old_json in diff.upserts:
        cur = conn.execute(
            "INSERT INTO changes (dataset, record_id, kind, json, old_json, changed_at) "
            "VALUES (?, ?, 'upsert', ?, ?, ?)",
            (source.id, rid, new_json, old_json, changed_at),
        )
        logged.append((int(cur.lastrowid or 0), query_pb2.CHANGE_KIND_UPSERT, rid, new_json))
    for rid, old_json in diff.deletes:
        cur = conn.execute(
            "INSERT INTO changes (dataset, record_id, kind, json, old_json, changed_at) "
            "VALUES (?, ?, 'delete', NULL, ?, ?)",
            (source.id, rid, old_json, changed_at),
        )
        logged.append((int(cur.lastrowid or 0), query_pb2.CHANGE_KIND_DELETE, rid, None))
    conn.execute(
        "INSERT INTO datasets (id, descriptor, version, source_hash) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET descriptor = excluded.descriptor, "
        "version = excluded.version, source_hash = excluded.source_hash",
        (source.id, blob, desc.version, source_hash),
    )
    conn.execute(
        "INSERT INTO catalog (owner, dataset, version, descriptor, received_at) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (owner, dataset) DO UPDATE SET "
        "version = excluded.version, descriptor = excluded.descriptor, "
        "received_at = excluded.received_at",
        (config.member, source.id, desc.version, blob, changed_at),
    )
    messages = [catalog_message(config, desc, created_at=now)]
    messages += _record_messages(conn, config, desc, logged, now)
    Outbox(conn).enqueue(messages, now)


def _record_messages(
    conn: sqlite3.Connection,
    config: NodeConfig,
    desc: catalog_pb2.DatasetDescriptor,
    logged: list[tuple[int, query_pb2.ChangeKind, str, str | None]],
    now: datetime,
) -> list[OutgoingMessage]:
    """The change log entries of this import as RecordBatch messages; inside the txn."""
    if not logged:
        return []
    created_at = timestamp(now)
    changes = []
    for seq, kind, rid, new_json in logged:
        change = backbone_pb2.RecordChange(
            owner=config.member,
            dataset=desc.id,
            kind=kind,
            record_id=rid,
            json=new_json or "",
            sequence=seq,
            dataset_version=desc.version,
        )
        change.changed_at.CopyFrom(created_at)
        changes.append(change)
    data_key = None
    if desc.classification != catalog_pb2.CLASSIFICATION_OPEN:
        data_key = current_data_key(conn, config.member, desc.id, now)
    return batch_messages(
        config.member,
        config.cluster,
        Topics(config.backbone.topic_prefix),
        desc,
        changes,
        signer=node_signer(config),
        data_key=data_key,
        created_at=created_at,
    )


def import_file(
    conn: sqlite3.Connection,
    config: NodeConfig,
    source: DatasetSource,
    now: datetime | None = None,
) -> ImportResult:
    """Read ``source.file`` completely, then import it with :func:`import_dataset`.

    Raises ImportFileError (naming the file and the line or feature) before anything is
    written when the file is unreadable or malformed; StoreError when SQLite fails.
    """
    try:
        data = Path(source.file).read_bytes()
    except OSError as exc:
        raise ImportFileError(
            str(source.file), "", f"cannot read the file: {exc.strerror}"
        ) from exc
    parsed = read_source(
        source.file,
        format=source.format or None,
        id_field=source.id_field or None,
        schema=dict(source.schema) or None,
    )
    return import_dataset(
        conn, config, source, parsed, now, source_hash=hashlib.sha256(data).hexdigest()
    )


def import_configured(
    config: NodeConfig, only: str = ""
) -> Iterator[tuple[DatasetSource, ImportResult]]:
    """Import every configured dataset (or only the one named), yielding each result.

    Opens the store and closes it when done. Raises InvalidRequest when ``only`` names no
    configured dataset; ImportFileError for a malformed file (datasets before it stay
    imported, it and the rest are untouched); StoreError.
    """
    sources = [s for s in config.datasets if not only or s.id == only]
    if only and not sources:
        known = ", ".join(s.id for s in config.datasets) or "none"
        raise InvalidRequest(f"no dataset {only!r} is configured (configured: {known})")
    conn = connect(config.store_path)
    try:
        for source in sources:
            yield source, import_file(conn, config, source)
    finally:
        conn.close()


def withdraw_dataset(
    conn: sqlite3.Connection, config: NodeConfig, dataset_id: str, now: datetime | None = None
) -> int:
    """Remove an own dataset from the store and announce its withdrawal; returns its last version.

    Its records, change log, dataset row and own catalog row go; a CatalogEntry with
    ``withdrawn`` set (one version higher, so followers drop every older entry) is queued.
    Raises DatasetNotFound when the store has no such dataset, StoreError when SQLite fails.
    """
    now = now or datetime.now(UTC)
    with write_transaction(conn, f"withdrawing dataset {dataset_id!r}"):
        row = conn.execute(
            "SELECT descriptor, version FROM datasets WHERE id = ?", (dataset_id,)
        ).fetchone()
        if row is None:
            raise DatasetNotFound(config.member, dataset_id)
        desc = parse_descriptor(row[0])
        desc.version = int(row[1]) + 1
        desc.record_count = 0
        desc.updated_at.CopyFrom(timestamp(now))
        for table, column in (("records", "dataset"), ("changes", "dataset"), ("datasets", "id")):
            conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (dataset_id,))
        conn.execute(
            "DELETE FROM catalog WHERE owner = ? AND dataset = ?", (config.member, dataset_id)
        )
        Outbox(conn).enqueue([catalog_message(config, desc, withdrawn=True, created_at=now)], now)
    return desc.version
