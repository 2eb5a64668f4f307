"""The catalog follower: keeps the store's federated ``catalog`` table from the backbone.

It reads the catalog topic from the beginning with a plain consumer (no group, so any
number of nodes follow the same topic independently) and applies every CatalogEntry
idempotently: the highest version wins, an equal or older one changes nothing, a withdrawn
entry removes the row. It rejects (logs and counts, by reason) what is not a decodable
envelope, what comes from another cluster, and what a member announces about a dataset it
does not own. Entries about our own datasets are skipped: the importer writes that row.

An in-memory broker that restarts forgets the topic and its offsets, and the tansu broker
then answers a fetch beyond the end with no records and no error, so ``auto_offset_reset``
never fires. The follower therefore watches the topic's id and the partitions' high
watermarks and reads the topic again from the start when either shows it was recreated;
re-applying entries is harmless.
"""

from __future__ import annotations

import logging
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
from allmende.v1 import backbone_pb2
from allmende_node.backbone_link import Backoff, OutageLog, TopicAdmin
from allmende_node.descriptors import rfc3339
from allmende_node.outbox import StoreHandle, StoreSource, write_transaction

__all__ = ["CatalogFollower"]

log = logging.getLogger(__name__)


class CatalogFollower:
    """Follows the catalog topic into one store. Use from one thread; ``run`` is its loop.

    ``rejected`` counts refused messages by reason (``undecodable``, ``foreign-cluster``,
    ``author-not-owner``, ``invalid-descriptor``); ``applied`` counts catalog rows changed
    and ``read`` every message read.
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
    ) -> None:
        self.config = config
        self.topic = Topics(config.backbone.topic_prefix).catalog
        self.check_interval_s = check_interval_s
        self.poll_timeout_ms = poll_timeout_ms
        self.backoff = backoff or Backoff(0.2, 5.0)
        self.rejected: Counter[str] = Counter()
        self.applied = 0
        self.read = 0
        self.restarts = 0
        self.outage = OutageLog(log, f"catalog follower of {config.member}", clock)
        self._sleep = sleep
        self._clock = clock
        self._store = StoreHandle(store)
        self._admin = TopicAdmin(config.backbone)
        self._consumer: Any = None  # a kafka.KafkaConsumer once connected
        self._topic_id: str | None = None
        self._partitions: list = []  # kafka.TopicPartition
        self._next: dict[int, int] = {}  # partition -> offset after the last message read
        self._last_check = 0.0

    # -- applying ------------------------------------------------------------------------

    def apply(self, raw: bytes | None) -> bool:
        """Apply one catalog message; returns True when the catalog table changed.

        A refused message is logged and counted in ``rejected``, never raised. Raises
        StoreError when the store cannot be written.
        """
        try:
            env, entry = open_envelope(raw or b"", backbone_pb2.CatalogEntry)
        except BackboneError as exc:
            return self._reject("undecodable", str(exc))
        desc = entry.dataset
        if env.cluster != self.config.cluster or desc.cluster != self.config.cluster:
            return self._reject(
                "foreign-cluster",
                f"{env.author} wrote for cluster {env.cluster!r} about a dataset of cluster "
                f"{desc.cluster!r}; this node is in {self.config.cluster!r}",
            )
        if env.author != desc.owner:
            return self._reject(
                "author-not-owner",
                f"{env.author} announced dataset {desc.id!r} of {desc.owner!r}; "
                f"a member may only announce its own datasets",
            )
        if not NAME_PATTERN.fullmatch(desc.owner) or not NAME_PATTERN.fullmatch(desc.id):
            return self._reject(
                "invalid-descriptor", f"owner {desc.owner!r} or id {desc.id!r} is not a name"
            )
        if desc.owner == self.config.member:
            return False  # the importer keeps our own row; the echo may be older
        conn = self._store.conn
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
        changed = cur.rowcount > 0
        self.applied += changed
        return changed

    def _reject(self, reason: str, detail: str) -> bool:
        self.rejected[reason] += 1
        log.warning(
            "catalog follower of %s rejected a message (%s): %s", self.config.member, reason, detail
        )
        return False

    # -- reading -------------------------------------------------------------------------

    def poll_once(self, timeout_ms: int | None = None) -> int:
        """Read what the catalog topic has (waiting up to ``timeout_ms``) and apply it.

        Connects on first use (creating the topic if missing). Returns how many messages were
        read. Raises BackboneError when the backbone cannot be reached (call ``disconnect``,
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
        for tp, messages in batches.items():
            for message in messages:
                self.apply(message.value)
                self._next[tp.partition] = message.offset + 1
                count += 1
        self.read += count
        self._check_highwater()
        return count

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
        self._from_start(topic_id)

    def _from_start(self, topic_id: str) -> None:
        assert self._consumer is not None
        self._consumer.seek_to_beginning(*self._partitions)
        self._topic_id = topic_id
        self._next = {}
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
            if high is not None and high < self._next.get(tp.partition, 0):
                log.info(
                    "catalog follower of %s: %s ends at %d, before offset %d we read; "
                    "reading it again from the start",
                    self.config.member,
                    self.topic,
                    high,
                    self._next[tp.partition],
                )
                self.restarts += 1
                self._consumer.seek_to_beginning(tp)
                self._next[tp.partition] = 0

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
        self._store.close()
