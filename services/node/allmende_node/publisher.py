"""The publisher: moves the outbox to the backbone and re-announces the town's datasets.

Messages leave the outbox only after the broker acknowledged them, so an outage delays them
and never drops one (a batch cut off mid-way may arrive twice; every consumer applies
messages idempotently). The embedded broker keeps topics in memory and forgets them when it
restarts, so the publisher re-announces every own dataset's CatalogEntry at start, when the
backbone is back after an outage, when the catalog topic was recreated behind its back, and
every ``announce_interval_s``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable

from allmende.backbone import BackboneProducer, Topics
from allmende.config import NodeConfig
from allmende.errors import BackboneError, StoreError
from allmende_node.backbone_link import Backoff, OutageLog, TopicAdmin, open_producer
from allmende_node.descriptors import catalog_message, parse_descriptor
from allmende_node.outbox import Outbox, StoreHandle, StoreSource
from allmende_node.signing_keys import node_signer

__all__ = ["Publisher"]

log = logging.getLogger(__name__)


class Publisher:
    """Publishes one store's outbox. Use from one thread; ``run`` is that thread's loop.

    ``sleep`` (seconds → None) replaces waiting on the stop event, for tests; ``clock``
    (monotonic seconds) times the periodic catalog check and the announcements. Raises
    ConfigError when the node has no ``[keys]`` and IdentityError when its signing key
    cannot be read: a node cannot publish unsigned.
    """

    def __init__(
        self,
        config: NodeConfig,
        store: StoreSource,
        *,
        sleep: Callable[[float], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
        batch_size: int = 500,
        send_timeout_s: float = 5.0,
        check_interval_s: float = 1.0,
        backoff: Backoff | None = None,
        on_backbone_reset: Callable[[sqlite3.Connection], object] | None = None,
    ) -> None:
        self.config = config
        # Called with the publisher's connection when it first sees the catalog topic and
        # whenever the backbone forgot its topics: other announcements (data key grants)
        # are queued again there.
        self.on_backbone_reset = on_backbone_reset
        self.batch_size = batch_size
        self.send_timeout_s = send_timeout_s
        self.check_interval_s = check_interval_s
        self.backoff = backoff or Backoff(0.2, 5.0)
        self.sent = 0
        self.announced = 0
        self._sleep = sleep
        self._clock = clock
        self._store = StoreHandle(store)
        self._admin = TopicAdmin(config.backbone)
        self._producer: BackboneProducer | None = None
        self._catalog_topic = Topics(config.backbone.topic_prefix).catalog
        self._catalog_id: str | None = None
        self._last_check: float | None = None
        self._last_announce: float | None = None
        self._announce_due = True
        self.outage = OutageLog(log, f"publisher of {config.member}", clock)
        node_signer(config)  # now: a node without [keys] fails at start, not when it announces

    @property
    def outbox(self) -> Outbox:
        """The outbox of this publisher's store connection (opening it may raise StoreError)."""
        return Outbox(self._store.conn)

    def drain_once(self) -> int:
        """Send up to ``batch_size`` waiting messages; returns how many the broker acknowledged.

        Creates their topics where missing, sends them in order and deletes them from the
        outbox only once the broker acknowledged every one. Raises BackboneError (the messages
        stay in the outbox) or StoreError.
        """
        outbox = self.outbox
        rows = outbox.pending(self.batch_size)
        if not rows:
            return 0
        self._admin.ensure({r.topic for r in rows})
        if self._producer is None:
            self._producer = open_producer(self.config.backbone, self.send_timeout_s)
        self._producer.send_all([r.message() for r in rows])
        outbox.acknowledge(r.seq for r in rows)
        self.sent += len(rows)
        return len(rows)

    def announce(self) -> int:
        """Queue a CatalogEntry for every own dataset not already waiting in the outbox.

        Returns how many were queued. Raises StoreError.
        """
        outbox = self.outbox
        try:
            blobs = [r[0] for r in outbox.conn.execute("SELECT descriptor FROM datasets")]
        except sqlite3.Error as exc:
            raise StoreError(f"reading the own datasets failed: {exc}") from exc
        waiting = outbox.pending_keys(self._catalog_topic)
        signer = node_signer(self.config)  # read again if the key file was re-issued
        messages = [catalog_message(self.config, parse_descriptor(b), signer=signer) for b in blobs]
        fresh = [m for m in messages if m.key not in waiting]
        outbox.enqueue(fresh)
        self.announced += len(fresh)
        self._announce_due = False
        self._last_announce = self._clock()
        return len(fresh)

    def check_backbone(self) -> None:
        """Make sure the catalog topic exists and notice when the broker forgot its topics.

        A changed catalog topic id means the broker lost its topics (an in-memory broker
        restarted): the stale producer is dropped and the datasets are re-announced.
        Raises BackboneError.
        """
        topic_id, _ = self._admin.ensure([self._catalog_topic])[self._catalog_topic]
        if self._catalog_id is not None and topic_id != self._catalog_id:
            if not self.outage.down:  # after an outage, the recovery message says enough
                log.info(
                    "publisher of %s: the backbone forgot its topics (catalog topic recreated); "
                    "re-announcing every own dataset",
                    self.config.member,
                )
            self._close_producer()
            self._announce_due = True
        if topic_id != self._catalog_id and self.on_backbone_reset is not None:
            self.on_backbone_reset(self.outbox.conn)
        self._catalog_id = topic_id
        self._last_check = self._clock()

    def step(self) -> int:
        """One round: check the backbone when due, announce when due, send one batch.

        Returns how many messages were sent. Raises BackboneError or StoreError.
        """
        now = self._clock()
        if (
            self._last_check is None
            or self.outage.down
            or now - self._last_check >= self.check_interval_s
        ):
            self.check_backbone()
        if self._announce_due or (
            self._last_announce is not None
            and now - self._last_announce >= self.config.announce_interval_s
        ):
            self.announce()
        return self.drain_once()

    def run(self, stop: threading.Event) -> None:
        """Publish until ``stop`` is set: every ``publish_interval_s``, at once while a full
        batch went out, and with backoff (0.2 s doubling to 5 s) while the backbone is down.

        Logs an outage once when it starts and once when it ends. Closes its clients (and
        the store connection, when it opened it) before returning; raises nothing.
        """
        try:
            while not stop.is_set():
                try:
                    sent = self.step()
                except BackboneError as exc:
                    self.outage.failed(exc, self._waiting())
                    self._disconnect()
                    if self._pause(stop, self.backoff.next()):
                        break
                    continue
                except StoreError as exc:
                    log.error("publisher of %s: %s", self.config.member, exc)
                    if self._pause(stop, self.backoff.next()):
                        break
                    continue
                self.backoff.reset()
                if self.outage.recovered():
                    self._announce_due = True
                    continue
                if sent < self.batch_size and self._pause(stop, self.config.publish_interval_s):
                    break
        finally:
            self.close()

    def _waiting(self) -> str:
        try:
            return f"{self.outbox.count()} message(s) wait in the outbox"
        except StoreError:
            return ""

    def _pause(self, stop: threading.Event, seconds: float) -> bool:
        """Wait ``seconds`` or until stopped; True when stopped."""
        if self._sleep is not None:
            self._sleep(seconds)
            return stop.is_set()
        return stop.wait(seconds)

    def _close_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.close()

    def _disconnect(self) -> None:
        self._close_producer()
        self._admin.close()

    def close(self) -> None:
        """Close the backbone clients, and the store connection if this publisher opened it."""
        self._disconnect()
        self._store.close()
