"""The trust follower: applies the cluster CA's signed statements from ``<prefix>.trust``.

It reads every partition of the trust topic from the beginning with a plain consumer (no
group) and hands each message to ``TrustStore.apply``, which verifies the CA's signature and
keeps, per member, the statement with the highest version: a MemberRecord (the member's
keys) or a Revocation. The node's other followers and the gateway read the result from the
store's ``trust`` table; the gateway cuts off revoked members from it.

A statement that is not applied — undecodable, unsigned or not signed by our CA, about
another cluster, or older than what was applied (a replay) — is counted by kind, logged (one
line per kind at most every 10 s), and kept in the ``quarantine`` table with the reason
``<kind>: <detail>``; following goes on with the next message.

The follower keeps its position (the topic's id and the next offset per partition) in the
store's ``follower_offsets`` table and resumes from it after a restart: reading the history
again would make every superseded statement look like a replay. Like the catalog follower it
survives a broker that restarts with empty memory: it watches the topic's id and the
partitions' high watermarks and reads the topic again from the start when either shows it
was recreated. Re-applying a statement is harmless (an equal version changes nothing).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from allmende.backbone import Topics, open_envelope
from allmende.config import NodeConfig
from allmende.errors import BackboneError, IdentityError, StoreError
from allmende.signing import SignatureInvalid
from allmende.trust import TrustStore
from allmende.v1 import backbone_pb2
from allmende_node.backbone_link import Backoff, OutageLog, TopicAdmin
from allmende_node.descriptors import rfc3339
from allmende_node.outbox import StoreHandle, StoreSource, write_transaction

__all__ = ["REJECTION_KINDS", "TrustFollower", "load_ca_certificate"]

log = logging.getLogger(__name__)

# What a refused statement is counted as; the quarantine's reason starts with the kind.
REJECTION_KINDS = (
    "undecodable",
    "unsigned",
    "bad-signature",
    "foreign-cluster",
    "replayed",
    "invalid",
)
_LOG_EVERY_S = 10.0  # a hostile producer must not flood the log: one line per kind and interval


def load_ca_certificate(path: Path) -> x509.Certificate:
    """The cluster CA certificate trust statements verify with; raises IdentityError."""
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise IdentityError(f"cannot read the cluster CA certificate {path}: {exc}") from exc


class TrustFollower:
    """Follows the trust topic into one store. Use from one thread; ``run`` is its loop.

    ``rejected`` counts refused statements by kind (REJECTION_KINDS), ``applied`` the
    statements that changed the trust table and ``read`` every message read. ``caught_up``
    is set once the follower has read to the end of the topic as it was when it connected
    (the node starts following the catalog after that, or after a deadline).
    """

    def __init__(
        self,
        config: NodeConfig,
        store: StoreSource,
        *,
        ca_certificate: x509.Certificate | None = None,
        sleep: Callable[[float], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
        check_interval_s: float = 1.0,
        poll_timeout_ms: int = 200,
        backoff: Backoff | None = None,
    ) -> None:
        """Raises IdentityError when no CA certificate is given and ``config.keys`` names
        none or an unreadable one."""
        if ca_certificate is None:
            if config.keys is None:
                raise IdentityError(
                    f"node {config.member} has no [keys] cluster_ca to verify trust statements"
                )
            ca_certificate = load_ca_certificate(config.keys.cluster_ca)
        self.config = config
        self.ca_certificate = ca_certificate
        self.topic = Topics(config.backbone.topic_prefix).trust
        self.check_interval_s = check_interval_s
        self.poll_timeout_ms = poll_timeout_ms
        self.backoff = backoff or Backoff(0.2, 5.0)
        self.rejected: Counter[str] = Counter()
        self.applied = 0
        self.read = 0
        self.restarts = 0
        self.caught_up = threading.Event()
        self.outage = OutageLog(log, f"trust follower of {config.member}", clock)
        self._sleep = sleep
        self._clock = clock
        self._store = StoreHandle(store)
        self._trust: TrustStore | None = None
        self._admin = TopicAdmin(config.backbone)
        self._consumer: Any = None  # a kafka.KafkaConsumer once connected
        self._topic_id: str | None = None
        self._partitions: list = []  # kafka.TopicPartition
        self._next: dict[int, int] = {}  # partition -> offset after the last message read
        self._saved: dict[int, int] = {}  # partition -> the offset the store holds
        self._last_check = 0.0
        self._last_logged: dict[str, float] = {}

    @property
    def trust(self) -> TrustStore:
        """The TrustStore over this follower's connection; opening it may raise StoreError."""
        if self._trust is None:
            self._trust = TrustStore(self._store.conn, self.config.cluster, self.ca_certificate)
        return self._trust

    # -- applying ------------------------------------------------------------------------

    def apply(
        self, raw: bytes | None, *, partition: int = -1, offset: int = -1, key: bytes | None = None
    ) -> bool:
        """Verify and apply one trust message; True when the trust table changed.

        A refused message is counted, logged and quarantined, never raised. Raises
        StoreError when the store cannot be written.
        """
        where = (self.topic, partition, offset, key, raw)
        try:
            env, stmt = open_envelope(raw or b"", backbone_pb2.TrustStatement)
        except BackboneError as exc:
            return self._reject(where, "", "undecodable", str(exc))
        if not env.signature:
            return self._reject(where, env.author, "unsigned", "trust statement is not signed")
        try:
            changed = self.trust.apply(raw or b"")
        except SignatureInvalid as exc:
            return self._reject(where, env.author, "bad-signature", str(exc))
        except IdentityError as exc:
            kind = self._classify(env, stmt)
            return self._reject(where, env.author, kind, str(exc).removeprefix(f"{kind} "))
        except BackboneError as exc:  # open_envelope above accepted it; kept for safety
            return self._reject(where, env.author, "undecodable", str(exc))
        self.applied += changed
        if changed:
            body = stmt.member if stmt.WhichOneof("statement") == "member" else stmt.revocation
            log.info(
                "trust follower of %s applied %s of %s (version %d)",
                self.config.member,
                stmt.WhichOneof("statement"),
                body.member,
                body.version,
            )
        return changed

    def _classify(self, env: backbone_pb2.Envelope, stmt: backbone_pb2.TrustStatement) -> str:
        """Why TrustStore refused a statement whose CA signature verified."""
        kind = stmt.WhichOneof("statement")
        if kind is None:
            return "invalid"
        body = stmt.member if kind == "member" else stmt.revocation
        if env.cluster != self.config.cluster or body.cluster != self.config.cluster:
            return "foreign-cluster"
        try:
            row = self.trust.conn.execute(
                "SELECT version FROM trust WHERE member = ?", (body.member,)
            ).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read trust state: {exc}") from exc
        return "replayed" if row is not None and body.version < row[0] else "invalid"

    def _reject(
        self,
        where: tuple[str, int, int, bytes | None, bytes | None],
        author: str,
        kind: str,
        detail: str,
    ) -> bool:
        topic, partition, offset, key, raw = where
        conn = self._store.conn
        try:
            with conn:
                conn.execute(
                    "INSERT INTO quarantine (topic, kafka_partition, kafka_offset, key, value, "
                    "author, reason, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (topic, partition, offset, key, raw, author, f"{kind}: {detail}", _now()),
                )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot quarantine a trust statement: {exc}") from exc
        self.rejected[kind] += 1
        now = self._clock()
        last = self._last_logged.get(kind)
        if last is None or now - last >= _LOG_EVERY_S:
            self._last_logged[kind] = now
            log.warning(
                "trust follower of %s quarantined %s@%d:%d (%s, %d so far): %s",
                self.config.member,
                topic,
                partition,
                offset,
                kind,
                self.rejected[kind],
                detail,
            )
        return False

    # -- reading -------------------------------------------------------------------------

    def poll_once(self, timeout_ms: int | None = None) -> int:
        """Read what the trust topic has (waiting up to ``timeout_ms``) and apply it.

        Connects on first use (creating the topic if missing). Returns how many messages were
        read. Raises BackboneError when the backbone cannot be reached (call ``disconnect``;
        the next call starts over from the beginning) and StoreError.
        """
        from kafka.errors import KafkaError

        if self._consumer is None:
            self._connect()
        elif self._clock() - self._last_check >= self.check_interval_s:
            self._check_topic()
        wait = self.poll_timeout_ms if timeout_ms is None else timeout_ms
        try:
            batches = self._consumer.poll(timeout_ms=wait, max_records=500)
        except KafkaError as exc:
            raise BackboneError(f"reading {self.topic} failed: {exc}") from exc
        count = 0
        try:
            for tp, messages in batches.items():
                for message in messages:
                    self.apply(
                        message.value,
                        partition=tp.partition,
                        offset=message.offset,
                        key=message.key,
                    )
                    self._next[tp.partition] = message.offset + 1
                    count += 1
            self._save_positions()
        except StoreError:
            self._rewind()
            raise
        finally:
            self.read += count
        self._check_highwater()
        return count

    def _rewind(self) -> None:
        """Seek back to the first message not settled, so it is read again."""
        for tp in self._partitions:
            if tp.partition in self._next:
                self._consumer.seek(tp, self._next[tp.partition])
            else:
                self._consumer.seek_to_beginning(tp)

    def _save_positions(self) -> None:
        """Record the position of every partition read past what the store holds."""
        moved = {p: o for p, o in self._next.items() if self._saved.get(p) != o}
        if not moved or self._topic_id is None:
            return
        conn = self._store.conn
        with write_transaction(conn, "recording the trust follower's position"):
            conn.execute(
                "DELETE FROM follower_offsets WHERE topic = ? AND topic_id != ?",
                (self.topic, self._topic_id),
            )
            conn.executemany(
                "INSERT INTO follower_offsets (topic, topic_id, kafka_partition, next_offset) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (topic, kafka_partition) DO UPDATE SET "
                "topic_id = excluded.topic_id, next_offset = excluded.next_offset",
                [(self.topic, self._topic_id, p, o) for p, o in moved.items()],
            )
        self._saved.update(moved)

    def _stored_positions(self) -> dict[int, tuple[str, int]]:
        try:
            rows = self._store.conn.execute(
                "SELECT kafka_partition, topic_id, next_offset FROM follower_offsets "
                "WHERE topic = ?",
                (self.topic,),
            ).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"reading the trust follower's position failed: {exc}") from exc
        return {int(p): (str(tid), int(off)) for p, tid, off in rows}

    def _connect(self) -> None:
        from kafka import KafkaConsumer, TopicPartition
        from kafka.errors import KafkaError

        topic_id, partitions = self._admin.ensure([self.topic])[self.topic]
        try:
            consumer = KafkaConsumer(
                **self.config.backbone.kafka_options(),
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                allow_auto_create_topics=False,
                bootstrap_timeout_ms=2000,
            )
        except (KafkaError, OSError) as exc:
            raise BackboneError(f"cannot reach the backbone to follow {self.topic}: {exc}") from exc
        self._consumer = consumer
        self._partitions = [TopicPartition(self.topic, p) for p in range(max(partitions, 1))]
        consumer.assign(self._partitions)
        self._resume(topic_id)

    def _resume(self, topic_id: str) -> None:
        """Continue where the store says this follower stopped, if it read this very topic."""
        stored = self._stored_positions()
        if not stored or {tid for tid, _ in stored.values()} != {topic_id}:
            self._from_start(topic_id)
            return
        self._topic_id = topic_id
        self._next = {}
        for tp in self._partitions:
            if tp.partition in stored:
                self._next[tp.partition] = stored[tp.partition][1]
                self._consumer.seek(tp, self._next[tp.partition])
            else:
                self._consumer.seek_to_beginning(tp)
        self._saved = dict(self._next)
        self._last_check = self._clock()

    def _from_start(self, topic_id: str) -> None:
        self._consumer.seek_to_beginning(*self._partitions)
        self._topic_id = topic_id
        self._next = {}
        self._saved = {}
        self._last_check = self._clock()

    def _check_topic(self) -> None:
        """Read the topic again from the start if it was recreated (a broker restart)."""
        from kafka import TopicPartition

        info = self._admin.describe([self.topic])[self.topic]
        if info is None:
            info = self._admin.ensure([self.topic])[self.topic]
        topic_id, partitions = info
        if topic_id != self._topic_id:
            log.info(
                "trust follower of %s: %s was recreated (backbone restart?); reading it again",
                self.config.member,
                self.topic,
            )
            self.restarts += 1
            if partitions != len(self._partitions):
                self._partitions = [TopicPartition(self.topic, p) for p in range(partitions)]
                self._consumer.assign(self._partitions)
            self._from_start(topic_id)
        self._last_check = self._clock()

    def _check_highwater(self) -> None:
        """Notice a topic that lost its messages; set ``caught_up`` once at the end."""
        at_end = True
        for tp in self._partitions:
            high = self._consumer.highwater(tp)
            read = self._next.get(tp.partition, 0)
            if high is None:
                at_end = False
            elif high < read:
                log.info(
                    "trust follower of %s: %s ends at %d, before offset %d we read; "
                    "reading it again from the start",
                    self.config.member,
                    self.topic,
                    high,
                    read,
                )
                self.restarts += 1
                self._consumer.seek_to_beginning(tp)
                self._next[tp.partition] = 0
                at_end = False
            elif read < high:
                at_end = False
        if at_end:
            self.caught_up.set()

    # -- the loop ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Follow until ``stop`` is set; on a backbone outage log once, back off (0.2 s
        doubling to 5 s) and start over from the beginning when it is back. Closes its
        clients (and the store connection, when it opened it) before returning; raises
        nothing.
        """
        try:
            while not stop.is_set():
                try:
                    self.poll_once()
                except BackboneError as exc:
                    self.outage.failed(exc)
                    self.disconnect()
                    if self._pause(stop, self.backoff.next()):
                        break
                    continue
                except StoreError as exc:
                    log.error("trust follower of %s: %s", self.config.member, exc)
                    if self._pause(stop, self.backoff.next()):
                        break
                    continue
                self.backoff.reset()
                self.outage.recovered()
        finally:
            self.close()

    def _pause(self, stop: threading.Event, seconds: float) -> bool:
        if self._sleep is not None:
            self._sleep(seconds)
            return stop.is_set()
        return stop.wait(seconds)

    def disconnect(self) -> None:
        """Close the backbone clients; the next poll reconnects and reads from the start."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                consumer.close()
            except Exception as exc:  # closing a consumer of a dead broker may raise anything
                log.debug("closing consumer: %s", exc)
        self._admin.close()

    def close(self) -> None:
        """Close the backbone clients, and the store connection if this follower opened it."""
        self.disconnect()
        self._trust = None
        self._store.close()


def _now() -> str:
    return rfc3339(datetime.now(UTC))
