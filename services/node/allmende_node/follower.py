"""The catalog follower: keeps the store's federated ``catalog`` table from the backbone.

It reads the catalog topic with a plain consumer (no group, so any number of nodes follow
the same topic independently) and checks every message once, on arrival, before applying
it: a decodable envelope of our cluster, signed by its author with the key the cluster CA
registered for it (``trust`` table), the author not revoked, the author the dataset's owner,
and no replay (a version older than the applied one). Whatever fails is counted, logged and
quarantined (:mod:`allmende_node.quarantine`). A message whose author the trust table does
not know yet is held until trust arrives (it travels on another topic) and quarantined only
after ``grace_s``. The highest version wins; an equal version (a re-announcement) changes
nothing; a withdrawn entry removes the row. Entries about our own datasets are verified but
not applied: the importer writes that row.

The follower keeps its position (the topic's id and the next offset per partition) in the
store, in the same transaction as what it writes, and resumes from it: re-reading history
would make every superseded version look like a replay. An in-memory broker that restarts
forgets the topic, and tansu then answers a fetch beyond the end with no records and no
error, so ``auto_offset_reset`` never fires. The follower therefore watches the topic's id
and the partitions' high watermarks and reads the topic again from the start when either
shows it was recreated.
"""

from __future__ import annotations

import enum
import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from allmende.backbone import Topics, open_envelope
from allmende.config import NodeConfig
from allmende.errors import BackboneError, StoreError
from allmende.identity import NAME_PATTERN
from allmende.signing import SignatureInvalid, verify_member
from allmende.trust import TrustStore, UnknownMember
from allmende.v1 import backbone_pb2
from allmende_node.backbone_link import Backoff, OutageLog, TopicAdmin
from allmende_node.descriptors import rfc3339
from allmende_node.follower_position import FollowerPosition
from allmende_node.outbox import StoreHandle, StoreSource, write_transaction
from allmende_node.quarantine import Arrival, PendingMessages, Quarantine, RejectionLog
from allmende_node.signing_keys import cluster_ca_certificate

__all__ = ["CatalogFollower", "Outcome"]

log = logging.getLogger(__name__)


class Outcome(enum.Enum):
    """What became of one catalog message."""

    APPLIED = "applied"  # the catalog table changed
    IGNORED = "ignored"  # valid, but changes nothing (re-announcement, our own dataset)
    HELD = "held"  # its author is not known yet; waiting for trust
    QUARANTINED = "quarantined"


class _Refused(Exception):
    def __init__(self, kind: str, author: str, reason: str) -> None:
        super().__init__(reason)
        self.kind, self.author, self.reason = kind, author, reason


class _NotYetTrusted(Exception):
    def __init__(self, author: str) -> None:
        super().__init__(author)
        self.author = author


class CatalogFollower:
    """Follows the catalog topic into one store. Use from one thread; ``run`` is its loop.

    ``rejected`` counts quarantined messages by kind (``undecodable``, ``foreign-cluster``,
    ``unsigned``, ``bad-signature``, ``revoked-member``, ``unknown-member``,
    ``author-not-owner``, ``invalid-descriptor``, ``replayed``); ``applied`` counts catalog
    rows changed, ``read`` every message read and ``held`` the messages waiting for their
    author's trust. ``clock`` (monotonic seconds) times the topic checks, the grace period
    and the log's rate limit. Raises ConfigError when the node has no ``[keys]`` and
    IdentityError when the cluster CA certificate cannot be read.
    """

    def __init__(
        self,
        config: NodeConfig,
        store: StoreSource,
        *,
        sleep: Callable[[float], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
        check_interval_s: float = 1.0,
        poll_timeout_ms: int = 200,
        backoff: Backoff | None = None,
        grace_s: float = 30.0,
        max_held: int = 1000,
        log_interval_s: float = 10.0,
    ) -> None:
        self.config = config
        self.topic = Topics(config.backbone.topic_prefix).catalog
        self.check_interval_s = check_interval_s
        self.poll_timeout_ms = poll_timeout_ms
        self.backoff = backoff or Backoff(0.2, 5.0)
        self.grace_s = grace_s
        self.max_held = max_held
        self.rejections = RejectionLog(
            log, f"catalog follower of {config.member}", clock=clock, interval_s=log_interval_s
        )
        self.applied = 0
        self.read = 0
        self.restarts = 0
        self.outage = OutageLog(log, f"catalog follower of {config.member}", clock)
        self._ca = cluster_ca_certificate(config)
        self._sleep = sleep
        self._clock = clock
        self._store = StoreHandle(store)
        self._admin = TopicAdmin(config.backbone)
        self._consumer: Any = None  # a kafka.KafkaConsumer once connected
        self._position = FollowerPosition(self.topic)
        self._partitions: list = []  # kafka.TopicPartition
        self._last_check = 0.0
        self._held: list[tuple[Arrival, str, float]] | None = None  # (message, author, since)
        self._trust_seen: tuple[int, int] | None = None

    @property
    def rejected(self) -> Counter[str]:
        return self.rejections.counts

    @property
    def held(self) -> int:
        return len(self._held or [])

    @property
    def _conn(self) -> sqlite3.Connection:
        return self._store.conn

    # -- checking and applying -----------------------------------------------------------

    def apply(
        self,
        raw: bytes | None,
        *,
        partition: int = -1,
        offset: int = -1,
        key: bytes | None = None,
    ) -> bool:
        """Check and apply one catalog message; returns True when the catalog table changed.

        A refused message is quarantined, logged and counted in ``rejected``, never raised;
        one by an author not known yet is held. Raises StoreError when the store fails.
        """
        arrival = Arrival.now(self.topic, raw, partition=partition, offset=offset, key=key)
        return self.process(arrival) is Outcome.APPLIED

    def process(self, arrival: Arrival) -> Outcome:
        """Check ``arrival`` once and apply, ignore, hold or quarantine it. Raises StoreError."""
        held = self._held_messages()
        try:
            env, entry = self._verified(arrival, waiting=arrival.pending_id is None)
        except _Refused as refusal:
            return self._quarantine(arrival, refusal.kind, refusal.author, refusal.reason)
        except _NotYetTrusted as unknown:
            if arrival.pending_id is None:
                self._hold(held, arrival, unknown.author)
            return Outcome.HELD
        return self._apply_entry(arrival, env.author, entry)

    def _verified(
        self, arrival: Arrival, *, waiting: bool
    ) -> tuple[backbone_pb2.Envelope, backbone_pb2.CatalogEntry]:
        """The envelope and entry when they pass every check but the replay check.

        Raises _Refused, or _NotYetTrusted for an author the trust table does not know (or,
        for a fresh message, an author with messages still held: they keep their order).
        """
        try:
            env, entry = open_envelope(arrival.value or b"", backbone_pb2.CatalogEntry)
        except BackboneError as exc:
            raise _Refused("undecodable", "", f"undecodable: {exc}") from exc
        author, cluster = env.author, self.config.cluster
        if env.cluster != cluster:
            raise _Refused(
                "foreign-cluster",
                author,
                f"foreign cluster: {author} wrote for cluster {env.cluster!r}; "
                f"this node is in {cluster!r}",
            )
        if waiting and any(a == author for _, a, _ in self._held_messages()):
            raise _NotYetTrusted(author)
        try:
            keys = TrustStore(self._conn, cluster, self._ca).member(author)
        except UnknownMember as exc:
            raise _NotYetTrusted(author) from exc
        if keys.revoked:
            raise _Refused(
                "revoked-member", author, f"signed by revoked member {author} ({keys.revoked})"
            )
        try:
            verify_member(env, keys.signing_public_key)
        except SignatureInvalid as exc:
            if not env.signature:
                raise _Refused(
                    "unsigned", author, f"unsigned: {author} is named as author, no signature"
                ) from exc
            raise _Refused(
                "bad-signature",
                author,
                f"bad signature: does not verify with {author}'s registered key "
                "(forged, or altered after signing)",
            ) from exc
        desc = entry.dataset
        if desc.cluster != cluster:
            raise _Refused(
                "foreign-cluster",
                author,
                f"foreign cluster: dataset {desc.owner}/{desc.id} is of cluster "
                f"{desc.cluster!r}; this node is in {cluster!r}",
            )
        if author != desc.owner:
            raise _Refused(
                "author-not-owner",
                author,
                f"wrong author: {author} announced dataset {desc.owner}/{desc.id}; "
                "a member may only announce its own datasets",
            )
        if not NAME_PATTERN.fullmatch(desc.owner) or not NAME_PATTERN.fullmatch(desc.id):
            raise _Refused(
                "invalid-descriptor",
                author,
                f"invalid descriptor: owner {desc.owner!r} or id {desc.id!r} is not a name",
            )
        return env, entry

    def _apply_entry(
        self, arrival: Arrival, author: str, entry: backbone_pb2.CatalogEntry
    ) -> Outcome:
        desc = entry.dataset
        if desc.owner == self.config.member:
            self._settle(arrival)  # the importer keeps our own row; the echo may be older
            return Outcome.IGNORED
        conn = self._conn
        try:
            row = conn.execute(
                "SELECT version FROM catalog WHERE owner = ? AND dataset = ?", (desc.owner, desc.id)
            ).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"reading the catalog failed: {exc}") from exc
        applied = None if row is None else int(row[0])
        if applied is not None and desc.version < applied:
            return self._quarantine(
                arrival,
                "replayed",
                author,
                f"replayed: version {desc.version} of {desc.owner}/{desc.id} is older than "
                f"applied version {applied}",
            )
        if (entry.withdrawn and applied is None) or (
            not entry.withdrawn and applied == desc.version
        ):
            self._settle(arrival)  # a re-announcement, or withdrawing what we do not have
            return Outcome.IGNORED
        with write_transaction(conn, f"applying catalog entry {desc.owner}/{desc.id}"):
            if entry.withdrawn:
                cur = conn.execute(
                    "DELETE FROM catalog WHERE owner = ? AND dataset = ? AND version <= ?",
                    (desc.owner, desc.id, desc.version),
                )
            else:
                cur = conn.execute(
                    "INSERT INTO catalog (owner, dataset, version, descriptor, received_at) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (owner, dataset) DO UPDATE SET "
                    "version = excluded.version, descriptor = excluded.descriptor, "
                    "received_at = excluded.received_at WHERE excluded.version > catalog.version",
                    (
                        desc.owner,
                        desc.id,
                        desc.version,
                        desc.SerializeToString(deterministic=True),
                        rfc3339(datetime.now(UTC)),
                    ),
                )
            self._bookkeep(conn, arrival)
        changed = cur.rowcount > 0
        self.applied += changed
        return Outcome.APPLIED if changed else Outcome.IGNORED

    def _quarantine(self, arrival: Arrival, kind: str, author: str, reason: str) -> Outcome:
        conn = self._conn
        with write_transaction(conn, f"quarantining a message of {arrival.where}"):
            Quarantine(conn).add(arrival, author, reason)
            self._bookkeep(conn, arrival)
        self.rejections.record(kind, arrival.where, reason)
        return Outcome.QUARANTINED

    def _bookkeep(self, conn: sqlite3.Connection, arrival: Arrival) -> None:
        """Inside the transaction that settled ``arrival``: release it if it was held,
        else record that the follower is past it."""
        if arrival.pending_id is not None:
            PendingMessages(conn).release(arrival)
        else:
            self._position.record(conn, arrival.partition, arrival.offset)

    def _settle(self, arrival: Arrival) -> None:
        """``arrival`` needs no write of its own; only a held one must be released."""
        if arrival.pending_id is not None:
            with write_transaction(self._conn, "releasing a held message"):
                PendingMessages(self._conn).release(arrival)

    # -- messages of authors not known yet -------------------------------------------------

    def _held_messages(self) -> list[tuple[Arrival, str, float]]:
        """The held messages, loaded from the store on first use (their grace starts anew)."""
        if self._held is None:
            now = self._clock()
            self._held = [
                (a, author, now) for a, author in PendingMessages(self._conn).load(self.topic)
            ]
        return self._held

    def _hold(self, held: list[tuple[Arrival, str, float]], arrival: Arrival, author: str) -> None:
        if len(held) >= self.max_held:
            oldest, oldest_author, _ = held.pop(0)
            self._quarantine(
                oldest,
                "unknown-member",
                oldest_author,
                f"unknown member {oldest_author}: more than {self.max_held} messages waited "
                "for the cluster CA's statements; this was the oldest",
            )
        conn = self._conn
        with write_transaction(conn, f"holding a message of {arrival.where}"):
            kept = PendingMessages(conn).hold(arrival, author)
            self._position.record(conn, arrival.partition, arrival.offset)
        if not held:
            log.info(
                "catalog follower of %s: holding messages of %s until the cluster CA's "
                "statement about it arrives (at most %.0f s)",
                self.config.member,
                author,
                self.grace_s,
            )
        held.append((kept, author, self._clock()))

    def retry_held(self) -> int:
        """When the trust table changed, check the held messages again, oldest first; then
        quarantine those held longer than ``grace_s``. Returns how many were settled.
        Raises StoreError."""
        held = self._held_messages()
        if not held:
            return 0
        try:
            seen = self._conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(version), 0) FROM trust"
            ).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"reading the trust table failed: {exc}") from exc
        changed = tuple(seen) != self._trust_seen
        now, settled = self._clock(), 0
        # Settled messages leave the list one by one, so a StoreError half-way through
        # leaves exactly the unsettled ones held (and the trust change still to be seen).
        for item in list(held):
            arrival, author, since = item
            if changed and self.process(arrival) is not Outcome.HELD:
                pass  # settled: applied, ignored or quarantined
            elif now - since >= self.grace_s:
                self._quarantine(
                    arrival,
                    "unknown-member",
                    author,
                    f"unknown member {author}: the cluster CA made no statement about it "
                    f"within {self.grace_s:.0f} s",
                )
            else:
                continue
            held.remove(item)
            settled += 1
        self._trust_seen = tuple(seen)
        return settled

    # -- reading -------------------------------------------------------------------------

    def poll_once(self, timeout_ms: int | None = None) -> int:
        """Retry held messages, read what the catalog topic has (waiting up to
        ``timeout_ms``) and check and apply it.

        Connects on first use (creating the topic if missing) and resumes where the store
        says it stopped. Returns how many messages were read. Raises BackboneError when the
        backbone cannot be reached (call ``disconnect``; the next call resumes) and
        StoreError (what was read but not settled is read again).
        """
        from kafka.errors import KafkaError

        if self._consumer is None:
            self._connect()
        elif self._clock() - self._last_check >= self.check_interval_s:
            self._check_topic()
        self.retry_held()
        wait = self.poll_timeout_ms if timeout_ms is None else timeout_ms
        try:
            batches = self._consumer.poll(timeout_ms=wait, max_records=500)
        except KafkaError as exc:
            raise BackboneError(f"reading {self.topic} failed: {exc}") from exc
        count = 0
        try:
            for tp, messages in batches.items():
                for message in messages:
                    arrival = Arrival.now(
                        self.topic,
                        message.value,
                        partition=tp.partition,
                        offset=message.offset,
                        key=message.key,
                    )
                    self.process(arrival)
                    self._position.next[tp.partition] = message.offset + 1
                    count += 1
            self._position.flush(self._conn)
        except StoreError:
            self._rewind()
            raise
        finally:
            self.read += count
        self._check_highwater()
        return count

    def _rewind(self) -> None:
        """Seek back to the first message not settled, so it is read again."""
        self._position.invalidate()
        for tp in self._partitions:
            if tp.partition in self._position.next:
                self._consumer.seek(tp, self._position.next[tp.partition])
            else:
                self._consumer.seek_to_beginning(tp)

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
                # tansu creates a missing topic with 4 partitions on a metadata request;
                # the catalog topic must be created by us, with one.
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
        resumed = self._position.resume(self._conn, topic_id)
        if resumed is False:
            log.info(
                "catalog follower of %s: %s was recreated since it was last read "
                "(backbone restart?); reading it from the start",
                self.config.member,
                self.topic,
            )
        for tp in self._partitions:
            if tp.partition in self._position.next:
                self._consumer.seek(tp, self._position.next[tp.partition])
            else:
                self._consumer.seek_to_beginning(tp)
        self._last_check = self._clock()

    def _from_start(self, topic_id: str) -> None:
        assert self._consumer is not None
        self._consumer.seek_to_beginning(*self._partitions)
        self._position.start_over(topic_id)
        self._last_check = self._clock()

    def _check_topic(self) -> None:
        """Read the topic again from the start if it was recreated (a broker restart)."""
        from kafka import TopicPartition

        info = self._admin.describe([self.topic])[self.topic]
        if info is None:
            info = self._admin.ensure([self.topic])[self.topic]
        topic_id, partitions = info
        if topic_id != self._position.topic_id:
            log.info(
                "catalog follower of %s: %s was recreated (backbone restart?); reading it again",
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
        """A high watermark below what we read means the broker lost the topic's messages."""
        for tp in self._partitions:
            high = self._consumer.highwater(tp)
            if high is not None and high < self._position.next.get(tp.partition, 0):
                log.info(
                    "catalog follower of %s: %s ends at %d, before offset %d we read; "
                    "reading it again from the start",
                    self.config.member,
                    self.topic,
                    high,
                    self._position.next[tp.partition],
                )
                self.restarts += 1
                self._consumer.seek_to_beginning(tp)
                self._position.next[tp.partition] = 0

    # -- the loop ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Follow until ``stop`` is set; on a backbone outage log once, back off (0.2 s
        doubling to 5 s) and resume when it is back. Closes its
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
                    log.error("catalog follower of %s: %s", self.config.member, exc)
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
        """Close the backbone clients; the next poll reconnects and resumes."""
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
        self._store.close()
