"""Backbone messages a node refused or holds back: the quarantine, pending messages, the log.

Whatever a follower refuses (unsigned, forged, altered, replayed, from the wrong or a revoked
member) is kept in the store's ``quarantine`` table with the reason, for the operator
(``allmende backbone quarantine``). A message whose author the trust table does not know yet
waits in ``follower_pending``, since trust travels on another topic and may arrive later.
Rejections are counted by kind and logged at most once per kind and interval, so a hostile
producer cannot flood the log.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from google.protobuf.message import DecodeError

from allmende.errors import AllmendeError, StoreError
from allmende.v1 import backbone_pb2
from allmende_node.descriptors import rfc3339

__all__ = [
    "Arrival",
    "NotQuarantined",
    "PendingMessages",
    "Quarantine",
    "QuarantinedMessage",
    "RejectionLog",
]


def _now() -> str:
    return rfc3339(datetime.now(UTC))


@dataclass(frozen=True)
class Arrival:
    """One message as read from the backbone: where it was read, and when.

    ``partition`` and ``offset`` are -1 for a message handed over without a position;
    ``pending_id`` is its ``follower_pending`` row while it is held there.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    received_at: str
    pending_id: int | None = None

    @classmethod
    def now(
        cls,
        topic: str,
        value: bytes | None,
        *,
        partition: int = -1,
        offset: int = -1,
        key: bytes | None = None,
    ) -> Arrival:
        return cls(topic, partition, offset, key, value, _now())

    @property
    def where(self) -> str:
        return f"{self.topic}@{self.partition}:{self.offset}"

    def columns(self) -> tuple[str, int, int, bytes | None, bytes | None]:
        """Where it was read and what: the first five columns the store keeps of a message."""
        return (self.topic, self.partition, self.offset, self.key, self.value)


class NotQuarantined(AllmendeError):
    """The quarantine holds no message with that id."""

    grpc_code = "NOT_FOUND"
    reason = "NOT_QUARANTINED"


@dataclass(frozen=True)
class QuarantinedMessage:
    """One refused message as the quarantine keeps it."""

    id: int
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    author: str
    reason: str
    received_at: str

    @property
    def where(self) -> str:
        return f"{self.topic}@{self.partition}:{self.offset}"

    def envelope(self) -> backbone_pb2.Envelope | None:
        """The message as an Envelope, or None when it is not one."""
        env = backbone_pb2.Envelope()
        try:
            env.ParseFromString(self.value or b"")
        except DecodeError:
            return None
        return env


_COLUMNS = "id, topic, kafka_partition, kafka_offset, key, value, author, reason, received_at"


class Quarantine:
    """The store's ``quarantine`` table over one connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def add(self, arrival: Arrival, author: str, reason: str) -> int:
        """Keep a refused message; returns its id. Joins the caller's transaction if one is
        open. Raises StoreError."""
        try:
            cur = self.conn.execute(
                "INSERT INTO quarantine (topic, kafka_partition, kafka_offset, key, value, "
                "author, reason, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (*arrival.columns(), author, reason, arrival.received_at),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot quarantine a message of {arrival.where}: {exc}") from exc
        return int(cur.lastrowid or 0)

    def newest(self, limit: int = 50) -> list[QuarantinedMessage]:
        """The ``limit`` newest quarantined messages, newest first. Raises StoreError."""
        return self._select(f"SELECT {_COLUMNS} FROM quarantine ORDER BY id DESC LIMIT ?", limit)

    def get(self, message_id: int) -> QuarantinedMessage:
        """One quarantined message; raises NotQuarantined when there is none with that id,
        StoreError."""
        found = self._select(f"SELECT {_COLUMNS} FROM quarantine WHERE id = ?", message_id)
        if not found:
            raise NotQuarantined(f"the quarantine holds no message with id {message_id}")
        return found[0]

    def count(self) -> int:
        """How many messages are quarantined. Raises StoreError."""
        try:
            return int(self.conn.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0])
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the quarantine: {exc}") from exc

    def _select(self, sql: str, arg: int) -> list[QuarantinedMessage]:
        try:
            rows = self.conn.execute(sql, (arg,)).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the quarantine: {exc}") from exc
        return [
            QuarantinedMessage(int(r[0]), r[1], int(r[2]), int(r[3]), r[4], r[5], r[6], r[7], r[8])
            for r in rows
        ]


class PendingMessages:
    """The store's ``follower_pending`` table: messages waiting for their author's trust."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def hold(self, arrival: Arrival, author: str) -> Arrival:
        """Keep ``arrival``; returns it with its ``pending_id``. Joins the caller's
        transaction if one is open. Raises StoreError."""
        try:
            cur = self.conn.execute(
                "INSERT INTO follower_pending (topic, kafka_partition, kafka_offset, key, value, "
                "author, received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (*arrival.columns(), author, arrival.received_at),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot hold a message of {arrival.where}: {exc}") from exc
        return replace(arrival, pending_id=int(cur.lastrowid or 0))

    def release(self, arrival: Arrival) -> None:
        """Forget a held message (applied or quarantined now). Raises StoreError."""
        if arrival.pending_id is None:
            return
        try:
            self.conn.execute("DELETE FROM follower_pending WHERE id = ?", (arrival.pending_id,))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot release a held message of {arrival.where}: {exc}") from exc

    def load(self, topic: str) -> list[tuple[Arrival, str]]:
        """Every message held for ``topic``, oldest first, with its author. Raises StoreError."""
        try:
            rows = self.conn.execute(
                "SELECT id, topic, kafka_partition, kafka_offset, key, value, author, received_at "
                "FROM follower_pending WHERE topic = ? ORDER BY id",
                (topic,),
            ).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the held messages: {exc}") from exc
        return [(Arrival(r[1], r[2], r[3], r[4], r[5], r[7], pending_id=r[0]), r[6]) for r in rows]


class RejectionLog:
    """Counts rejections by kind and logs them: one line per kind at most every ``interval_s``.

    The next line of a kind says how many of that kind went unlogged in between.
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        interval_s: float = 10.0,
    ) -> None:
        self.logger = logger
        self.what = what
        self.interval_s = interval_s
        self.counts: Counter[str] = Counter()
        self._clock = clock
        self._last: dict[str, float] = {}
        self._unlogged: Counter[str] = Counter()

    def record(self, kind: str, where: str, reason: str) -> None:
        """Count one rejection of ``kind``; log it unless one of its kind was logged lately."""
        self.counts[kind] += 1
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval_s:
            self._unlogged[kind] += 1
            return
        self._last[kind] = now
        unlogged = self._unlogged.pop(kind, 0)
        self.logger.warning(
            "%s quarantined %s (%s): %s%s",
            self.what,
            where,
            kind,
            reason,
            f" [{unlogged} more of this kind not logged since]" if unlogged else "",
        )
