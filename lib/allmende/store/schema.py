"""The town store's SQLite schema, shared by the node (writer) and the gateway (reader)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from allmende.errors import StoreError

__all__ = ["SCHEMA_VERSION", "connect", "create_schema"]

SCHEMA_VERSION = 3

# records: the current state, one row per record, its canonical JSON stored once.
# changes: the append-only change log Subscribe serves; `old_json` is the record before the
#   change, so a subscriber under a row filter can be told when a record leaves its view.
# outbox: backbone messages written in the same transaction as the change, deleted once the
#   broker acknowledged them; the outbox, not the broker, guarantees nothing is lost.
# catalog: the federated catalog, every member's latest descriptor (our own included).
# trust: the CA's latest statement per member (its keys, or its revocation), verified.
# quarantine: backbone messages refused (unsigned, forged, altered, replayed), for the operator.
# replica_records / replica_state: verified copies of other members' datasets this node
#   replicates ([node] replicas), applied batch by batch in sequence order.
# data_keys: per-dataset data keys: our own (to encrypt) and those granted to us (to decrypt).
# follower_offsets: where a backbone follower resumes, per topic partition, with the id of the
#   topic it read (a recreated topic, after a broker restart, is read from its start again).
# follower_pending: messages whose author the trust table does not know yet, held (bounded)
#   until trust arrives or their grace period ends; kept here so a restart does not lose them.
# policy_bundles: every signed policy bundle the node's policy follower checked, accepted or
#   refused (with the reason): the cluster's (signer "@ca") and this member's own. The gateway
#   decides with the newest accepted one of each.
_DDL = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS datasets (
    id          TEXT PRIMARY KEY,
    descriptor  BLOB NOT NULL,
    version     INTEGER NOT NULL,
    source_hash TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS records (
    dataset TEXT NOT NULL,
    id      TEXT NOT NULL,
    json    TEXT NOT NULL,
    PRIMARY KEY (dataset, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS changes (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset    TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('upsert', 'delete')),
    json       TEXT,
    old_json   TEXT,
    changed_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS changes_by_dataset ON changes (dataset, seq);
CREATE TABLE IF NOT EXISTS outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    topic      TEXT NOT NULL,
    key        BLOB NOT NULL,
    value      BLOB NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS trust (
    member     TEXT PRIMARY KEY,
    cluster    TEXT NOT NULL,
    version    INTEGER NOT NULL,
    revoked    INTEGER NOT NULL DEFAULT 0,
    reason     TEXT NOT NULL DEFAULT '',
    statement  BLOB NOT NULL,
    applied_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    topic       TEXT NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kafka_offset    INTEGER NOT NULL,
    key         BLOB,
    value       BLOB,
    author      TEXT NOT NULL DEFAULT '',
    reason      TEXT NOT NULL,
    received_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS data_keys (
    owner        TEXT NOT NULL,
    dataset      TEXT NOT NULL,
    key_version  INTEGER NOT NULL,
    key          BLOB NOT NULL,
    recipients   TEXT NOT NULL DEFAULT '[]',
    created_at   TEXT NOT NULL,
    PRIMARY KEY (owner, dataset, key_version)
);
CREATE TABLE IF NOT EXISTS replica_records (
    owner   TEXT NOT NULL,
    dataset TEXT NOT NULL,
    id      TEXT NOT NULL,
    json    TEXT NOT NULL,
    PRIMARY KEY (owner, dataset, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS replica_state (
    owner           TEXT NOT NULL,
    dataset         TEXT NOT NULL,
    last_sequence   INTEGER NOT NULL DEFAULT 0,
    dataset_version INTEGER NOT NULL DEFAULT 0,
    key_version     INTEGER NOT NULL DEFAULT 0,
    status          TEXT NOT NULL DEFAULT 'following',
    updated_at      TEXT NOT NULL,
    PRIMARY KEY (owner, dataset)
);
CREATE TABLE IF NOT EXISTS catalog (
    owner       TEXT NOT NULL,
    dataset     TEXT NOT NULL,
    version     INTEGER NOT NULL,
    descriptor  BLOB NOT NULL,
    received_at TEXT NOT NULL,
    PRIMARY KEY (owner, dataset)
);
CREATE TABLE IF NOT EXISTS follower_offsets (
    topic           TEXT NOT NULL,
    topic_id        TEXT NOT NULL,
    kafka_partition INTEGER NOT NULL,
    next_offset     INTEGER NOT NULL,
    PRIMARY KEY (topic, kafka_partition)
);
CREATE TABLE IF NOT EXISTS follower_pending (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    topic           TEXT NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kafka_offset    INTEGER NOT NULL,
    key             BLOB,
    value           BLOB,
    author          TEXT NOT NULL DEFAULT '',
    received_at     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS policy_bundles (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    kind         TEXT NOT NULL DEFAULT '',
    signer       TEXT NOT NULL DEFAULT '',
    owner        TEXT NOT NULL DEFAULT '',
    version      INTEGER NOT NULL DEFAULT 0,
    status       TEXT NOT NULL CHECK (status IN ('accepted', 'refused')),
    reason       TEXT NOT NULL DEFAULT '',
    sha256       TEXT NOT NULL,
    rollback_of  INTEGER NOT NULL DEFAULT 0,
    comment      TEXT NOT NULL DEFAULT '',
    published_at TEXT NOT NULL DEFAULT '',
    envelope     BLOB NOT NULL,
    received_at  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS policy_bundles_newest ON policy_bundles (kind, owner, status, version);
"""


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open the store at ``path``; the writer creates it, a reader requires it to exist.

    Raises StoreError naming the file when it cannot be opened or has another schema version.
    """
    path = Path(path)
    try:
        if readonly:
            if not path.exists():
                raise StoreError(f"store {path} does not exist yet (has the node imported data?)")
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open store {path}: {exc}") from exc
    if not readonly:
        create_schema(conn, path)
    else:
        _check_version(conn, path)
    return conn


def create_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Create the tables if missing and record the schema version; raises StoreError."""
    try:
        with conn:
            conn.executescript(_DDL)
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            # Versions 2 and 3 only added tables (CREATE IF NOT EXISTS above): a version 1
            # or 2 store is upgraded in place, nothing in it changes.
            conn.execute(
                "UPDATE meta SET value = ? WHERE key = 'schema_version' AND value IN ('1', '2')",
                (str(SCHEMA_VERSION),),
            )
    except sqlite3.Error as exc:
        raise StoreError(f"cannot create the schema in {path}: {exc}") from exc
    _check_version(conn, path)


def _check_version(conn: sqlite3.Connection, path: Path) -> None:
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.Error as exc:
        raise StoreError(f"{path} is not an allmende store: {exc}") from exc
    if row is None or row[0] != str(SCHEMA_VERSION):
        found = row[0] if row else "none"
        raise StoreError(
            f"{path} has store schema version {found}, this allmende needs {SCHEMA_VERSION}"
        )
