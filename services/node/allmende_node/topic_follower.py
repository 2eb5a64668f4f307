"""What every backbone follower does: read one topic into the store, resume, quarantine, retry.

A follower reads every partition of its topic with a plain consumer (no group, so any number
of nodes follow the same topic independently) and hands each message, as an
:class:`~allmende_node.quarantine.Arrival`, to its subclass, which checks and applies it.
What the subclass refuses is quarantined, logged and counted here, in the same transaction
as the follower's position.

The follower keeps its position (the topic's id and the next offset per partition) in the
store and resumes from it: re-reading history would make every superseded version look like
a replay. An in-memory broker that restarts forgets the topic, and tansu then answers a
fetch beyond the end with no records and no error, so ``auto_offset_reset`` never fires.
The follower therefore watches the topic's id and the partitions' high watermarks and reads
the topic again from the start when either shows it was recreated.
"""

from __future__ import annotations

import abc
import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TypedDict

from allmende.config import NodeConfig
from allmende.errors import BackboneError, StoreError
from allmende_node.backbone_link import Backoff, OutageLog, TopicAdmin, close_quietly, pause
from allmende_node.follower_position import FollowerPosition
from allmende_node.outbox import StoreHandle, StoreSource, write_transaction
from allmende_node.quarantine import Arrival, Quarantine, RejectionLog

__all__ = ["FollowerOptions", "TopicFollower"]


class FollowerOptions(TypedDict, total=False):
    """The keyword arguments every follower takes, with their defaults.

    ``sleep`` replaces waiting on the stop event between retries (tests); ``clock``
    (monotonic seconds, ``time.monotonic``) times the topic checks and the rejection log;
    ``check_interval_s`` (1.0) is how often the topic's id is checked; ``poll_timeout_ms``
    (200) how long one poll waits; ``backoff`` (0.2 s doubling to 5 s) the retry delays;
    ``log_interval_s`` (10.0) how often one kind of rejection is logged at most.
    """

    sleep: Callable[[float], object] | None
    clock: Callable[[], float]
    check_interval_s: float
    poll_timeout_ms: int
    backoff: Backoff | None
    log_interval_s: float


class TopicFollower(abc.ABC):
    """Follows one topic into one store. Use from one thread; ``run`` is its loop.

    A subclass names its ``role`` (for the log), implements ``_accept`` (check and apply one
    arrival) and may override the hooks ``_before_read``, ``_read_to_end`` and ``_bookkeep``;
    it logs through its own module's logger. ``rejected`` counts quarantined messages by
    kind, ``applied`` the changes the subclass made, ``read`` every message read,
    ``restarts`` how often the topic was found recreated and ``lag`` how many messages the
    topic held beyond what was read at the last poll (None before the first).
    Options: :class:`FollowerOptions`.
    """

    role = "topic follower"

    def __init__(
        self,
        config: NodeConfig,
        store: StoreSource,
        topic: str,
        *,
        sleep: Callable[[float], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
        check_interval_s: float = 1.0,
        poll_timeout_ms: int = 200,
        backoff: Backoff | None = None,
        log_interval_s: float = 10.0,
    ) -> None:
        logger = logging.getLogger(type(self).__module__)
        self.config = config
        self.topic = topic
        self.what = what = f"{self.role} of {config.member}"
        self.check_interval_s = check_interval_s
        self.poll_timeout_ms = poll_timeout_ms
        self.backoff = backoff or Backoff(0.2, 5.0)
        self.rejections = RejectionLog(logger, what, clock=clock, interval_s=log_interval_s)
        self.applied = 0
        self.read = 0
        self.restarts = 0
        self.lag: int | None = None
        self.outage = OutageLog(logger, what, clock)
        self._log = logger
        self._sleep = sleep
        self._clock = clock
        self._store = StoreHandle(store)
        self._admin = TopicAdmin(config.backbone)
        self._consumer: Any = None  # a kafka.KafkaConsumer once connected
        self._position = FollowerPosition(topic)
        self._partitions: list = []  # kafka.TopicPartition
        self._last_check = 0.0

    @property
    def rejected(self) -> Counter[str]:
        return self.rejections.counts

    @property
    def _conn(self) -> sqlite3.Connection:
        return self._store.conn

    # -- what a subclass does ------------------------------------------------------------

    @abc.abstractmethod
    def _accept(self, arrival: Arrival) -> bool:
        """Check ``arrival`` and apply or quarantine it; True when the store's state changed.

        Raises StoreError only; a refused message is quarantined, never raised.
        """

    def _before_read(self) -> None:  # noqa: B027 -- an optional hook, empty by default
        """Called by ``poll_once`` once connected, before it reads. Raises StoreError."""

    def _read_to_end(self) -> None:  # noqa: B027 -- an optional hook, empty by default
        """Called by ``poll_once`` when every partition was read to its high watermark."""

    def _bookkeep(self, conn: sqlite3.Connection, arrival: Arrival) -> None:
        """Inside the transaction that settled ``arrival``: the follower is past it."""
        self._position.record(conn, arrival.partition, arrival.offset)

    # -- checking and quarantining -------------------------------------------------------

    def apply(
        self, raw: bytes | None, *, partition: int = -1, offset: int = -1, key: bytes | None = None
    ) -> bool:
        """Check and apply one message of the topic; True when the store's state changed.

        A refused message is quarantined, logged and counted in ``rejected``, never raised.
        Raises StoreError when the store cannot be read or written.
        """
        arrival = Arrival.now(self.topic, raw, partition=partition, offset=offset, key=key)
        return self._accept(arrival)

    def _quarantine(self, arrival: Arrival, kind: str, author: str, reason: str) -> None:
        """Keep a refused ``arrival`` with its position, count and log it. Raises StoreError."""
        conn = self._conn
        with write_transaction(conn, f"quarantining a message of {arrival.where}"):
            Quarantine(conn).add(arrival, author, reason)
            self._bookkeep(conn, arrival)
        self.rejections.record(kind, arrival.where, reason)

    # -- reading -------------------------------------------------------------------------

    def poll_once(self, timeout_ms: int | None = None) -> int:
        """Read what the topic has (waiting up to ``timeout_ms``) and check and apply it.

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
        self._before_read()
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
                    self._accept(arrival)
                    self._position.next[tp.partition] = message.offset + 1
                    count += 1
            self._position.flush(self._conn)
        except StoreError:
            self._position.invalidate()
            self._seek_to_position()  # what was read but not settled is read again
            raise
        finally:
            self.read += count
        if self._check_highwater():
            self._read_to_end()
        return count

    def _seek_to_position(self) -> None:
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
                # our topics must be created by us, with one.
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
        if self._position.resume(self._conn, topic_id) is False:
            self._log.info(
                "%s: %s was recreated since it was last read (backbone restart?); "
                "reading it from the start",
                self.what,
                self.topic,
            )
        self._seek_to_position()
        self._last_check = self._clock()

    def _check_topic(self) -> None:
        """Read the topic again from the start if it was recreated (a broker restart)."""
        from kafka import TopicPartition

        info = self._admin.describe([self.topic])[self.topic]
        if info is None:
            info = self._admin.ensure([self.topic])[self.topic]
        topic_id, partitions = info
        if topic_id != self._position.topic_id:
            self._log.info(
                "%s: %s was recreated (backbone restart?); reading it again", self.what, self.topic
            )
            self.restarts += 1
            if partitions != len(self._partitions):
                self._partitions = [TopicPartition(self.topic, p) for p in range(partitions)]
                self._consumer.assign(self._partitions)
            self._consumer.seek_to_beginning(*self._partitions)
            self._position.start_over(topic_id)
        self._last_check = self._clock()

    def _check_highwater(self) -> bool:
        """Read a partition again whose high watermark fell below what we read (the broker
        lost its messages); True when every partition was read to its end."""
        at_end = True
        lag = 0
        for tp in self._partitions:
            high = self._consumer.highwater(tp)
            read = self._position.next.get(tp.partition, 0)
            lag += max((high or 0) - read, 0)
            if high is None:
                at_end = False
            elif high < read:
                self._log.info(
                    "%s: %s ends at %d, before offset %d we read; reading it again from the start",
                    self.what,
                    self.topic,
                    high,
                    read,
                )
                self.restarts += 1
                self._consumer.seek_to_beginning(tp)
                self._position.next[tp.partition] = 0
                at_end = False
            elif read < high:
                at_end = False
        self.lag = lag
        return at_end

    # -- the loop ------------------------------------------------------------------------

    def turn(self) -> float:
        """One poll: 0.0 after a good one, else the backoff to sit out after a backbone
        outage (logged once, clients dropped) or a store failure (logged). Raises nothing else.
        """
        try:
            self.poll_once()
        except BackboneError as exc:
            self.outage.failed(exc)
            self.disconnect()
            return self.backoff.next()
        except StoreError as exc:
            self._log.error("%s: %s", self.what, exc)
            return self.backoff.next()
        self.backoff.reset()
        self.outage.recovered()
        return 0.0

    def run(self, stop: threading.Event) -> None:
        """Follow until ``stop`` is set; on a backbone outage log once, back off (0.2 s
        doubling to 5 s) and resume when it is back. Closes its clients (and the store
        connection, when it opened it) before returning; raises nothing.
        """
        try:
            while not stop.is_set():
                wait = self.turn()
                if wait and pause(stop, wait, self._sleep):
                    break
        finally:
            self.close()

    def disconnect(self) -> None:
        """Close the backbone clients; the next poll reconnects and resumes."""
        consumer, self._consumer = self._consumer, None
        close_quietly(consumer, "consumer")
        self._admin.close()

    def close(self) -> None:
        """Close the backbone clients, and the store connection if this follower opened it."""
        self.disconnect()
        self._store.close()
