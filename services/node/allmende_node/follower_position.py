"""Where a backbone follower resumes: the topic's id and the next offset per partition, in the store.

A follower that re-read a topic from the start after every restart would see every
superseded version again and could not tell it from a replay, so it records its position
in the same transaction as what it wrote. The topic id makes a recreated topic (an
in-memory broker that restarted) recognisable: its offsets start at 0 again and the
recorded ones mean nothing there.
"""

from __future__ import annotations

import sqlite3

from allmende.errors import StoreError
from allmende_node.outbox import write_transaction

__all__ = ["FollowerPosition"]


class FollowerPosition:
    """One follower's position on one topic: ``next`` (partition → the offset after the last
    message settled) in memory, and what the store's ``follower_offsets`` holds."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.topic_id: str | None = None
        self.next: dict[int, int] = {}
        self._saved: dict[int, int] = {}

    def stored(self, conn: sqlite3.Connection) -> dict[int, tuple[str, int]]:
        """What the store holds: partition → (topic id, next offset). Raises StoreError."""
        try:
            rows = conn.execute(
                "SELECT kafka_partition, topic_id, next_offset FROM follower_offsets "
                "WHERE topic = ?",
                (self.topic,),
            ).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"reading the position on {self.topic} failed: {exc}") from exc
        return {int(p): (str(tid), int(off)) for p, tid, off in rows}

    def resume(self, conn: sqlite3.Connection, topic_id: str) -> bool | None:
        """Take up the stored position if it was recorded on ``topic_id``.

        Returns True when resumed (``next`` holds the stored offsets), False when the store
        holds a position on an earlier incarnation of the topic, None when it holds none;
        in both latter cases the follower starts over. Raises StoreError.
        """
        stored = self.stored(conn)
        if not stored or {tid for tid, _ in stored.values()} != {topic_id}:
            self.start_over(topic_id)
            return False if stored else None
        self.topic_id = topic_id
        self.next = {p: off for p, (_, off) in stored.items()}
        self._saved = dict(self.next)
        return True

    def start_over(self, topic_id: str) -> None:
        """Read ``topic_id`` from its start (the stored position is replaced when it moves)."""
        self.topic_id = topic_id
        self.next = {}
        self._saved = {}

    def invalidate(self) -> None:
        """After a transaction failed: write every partition again at the next ``flush``."""
        self._saved = {}

    def record(self, conn: sqlite3.Connection, partition: int, offset: int) -> None:
        """Inside the caller's transaction: the message at ``offset`` is settled.

        Does nothing for a message without a position (``partition`` < 0) or before the
        topic is known. Raises StoreError.
        """
        if partition < 0 or self.topic_id is None:
            return
        self._write(conn, partition, offset + 1)

    def flush(self, conn: sqlite3.Connection) -> None:
        """Store ``next`` where it moved past what the store holds. Raises StoreError."""
        moved = {p: o for p, o in self.next.items() if self._saved.get(p) != o}
        if not moved or self.topic_id is None:
            return
        with write_transaction(conn, f"recording the position on {self.topic}"):
            for partition, offset in moved.items():
                self._write(conn, partition, offset)

    def _write(self, conn: sqlite3.Connection, partition: int, next_offset: int) -> None:
        try:
            conn.execute(
                "DELETE FROM follower_offsets WHERE topic = ? AND topic_id != ?",
                (self.topic, self.topic_id),
            )
            conn.execute(
                "INSERT INTO follower_offsets (topic, topic_id, kafka_partition, next_offset) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (topic, kafka_partition) DO UPDATE SET "
                "topic_id = excluded.topic_id, next_offset = excluded.next_offset",
                (self.topic, self.topic_id, partition, next_offset),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"recording the position on {self.topic} failed: {exc}") from exc
        self._saved[partition] = next_offset
