"""The outbox: backbone messages waiting in the store until the broker acknowledged them.

The outbox, not the broker, guarantees that nothing a town published is lost: the importer
writes its messages in the same transaction as the change, and the publisher deletes them
only after the broker acknowledged them. ``write_transaction`` is the one way the node opens
a write transaction, so every writer takes SQLite's write lock up front; ``StoreHandle`` lets
a thread open its own connection, since each thread of the node uses its own.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from allmende.backbone import OutgoingMessage
from allmende.errors import StoreError
from allmende_node.descriptors import rfc3339

__all__ = ["Outbox", "OutboxRow", "StoreHandle", "StoreSource", "write_transaction"]

StoreSource = sqlite3.Connection | Callable[[], sqlite3.Connection]
"""A store connection, or a function opening one in the thread that first needs it."""


class StoreHandle:
    """The connection of one thread: given, or opened on first use (and then closed by us)."""

    def __init__(self, store: StoreSource) -> None:
        self._given = store if isinstance(store, sqlite3.Connection) else None
        self._factory = None if isinstance(store, sqlite3.Connection) else store
        self._opened: sqlite3.Connection | None = None

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection; opening it may raise StoreError."""
        if self._given is not None:
            return self._given
        if self._opened is None:
            assert self._factory is not None
            self._opened = self._factory()
        return self._opened

    def close(self) -> None:
        """Close the connection if this handle opened it; a given one stays open."""
        opened, self._opened = self._opened, None
        if opened is not None:
            opened.close()


@contextmanager
def write_transaction(conn: sqlite3.Connection, what: str = "writing") -> Iterator[None]:
    """Run the block in one IMMEDIATE transaction; commit on success, roll back on any error.

    Inside a transaction that is already open it joins it (the outer one commits). The write
    lock is taken at BEGIN, so a read-then-write block cannot fail halfway with
    SQLITE_BUSY in WAL mode. Raises StoreError (naming ``what``) for any sqlite3 error.
    """
    if conn.in_transaction:
        yield
        return
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        raise StoreError(f"{what}: cannot start a transaction: {exc}") from exc
    try:
        yield
    except sqlite3.Error as exc:
        conn.rollback()
        raise StoreError(f"{what} failed and was rolled back: {exc}") from exc
    except BaseException:
        conn.rollback()
        raise
    try:
        conn.commit()
    except sqlite3.Error as exc:
        conn.rollback()
        raise StoreError(f"{what}: commit failed: {exc}") from exc


@dataclass(frozen=True)
class OutboxRow:
    """One message waiting for the backbone; ``seq`` orders them and acknowledges them."""

    seq: int
    topic: str
    key: bytes
    value: bytes
    created_at: str

    def message(self) -> OutgoingMessage:
        return OutgoingMessage(topic=self.topic, key=self.key, value=self.value)


class Outbox:
    """The ``outbox`` table of one store connection. Use the connection from one thread only."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def enqueue(self, messages: Iterable[OutgoingMessage], now: datetime | None = None) -> int:
        """Append ``messages`` in order; returns how many.

        Joins the caller's open transaction (so a change and its messages commit together),
        else runs in its own. Raises StoreError.
        """
        created = rfc3339(now or datetime.now(UTC))
        rows = [(m.topic, m.key, m.value, created) for m in messages]
        with write_transaction(self.conn, "enqueueing outbox messages"):
            self.conn.executemany(
                "INSERT INTO outbox (topic, key, value, created_at) VALUES (?, ?, ?, ?)", rows
            )
        return len(rows)

    def pending(self, limit: int = 500) -> list[OutboxRow]:
        """Up to ``limit`` waiting messages, oldest first. Raises StoreError."""
        try:
            rows = self.conn.execute(
                "SELECT seq, topic, key, value, created_at FROM outbox ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"reading the outbox failed: {exc}") from exc
        return [OutboxRow(r[0], r[1], bytes(r[2]), bytes(r[3]), r[4]) for r in rows]

    def acknowledge(self, seqs: Iterable[int]) -> int:
        """Delete the messages numbered ``seqs`` (the broker has them); returns how many.

        Raises StoreError.
        """
        params = [(int(s),) for s in seqs]
        with write_transaction(self.conn, "acknowledging outbox messages"):
            cur = self.conn.executemany("DELETE FROM outbox WHERE seq = ?", params)
        return max(cur.rowcount, 0)

    def count(self) -> int:
        """How many messages are waiting. Raises StoreError."""
        try:
            return int(self.conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        except sqlite3.Error as exc:
            raise StoreError(f"reading the outbox failed: {exc}") from exc

    def pending_keys(self, topic: str) -> set[bytes]:
        """Keys of the messages waiting for ``topic``. Raises StoreError."""
        try:
            rows = self.conn.execute(
                "SELECT DISTINCT key FROM outbox WHERE topic = ?", (topic,)
            ).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"reading the outbox failed: {exc}") from exc
        return {bytes(r[0]) for r in rows}
