"""The node process: imports the town's datasets, then publishes, follows and rescans in threads.

Three to seven daemon threads share one stop event; each that reads the store opens its own
SQLite connection:

* ``trust`` applies the cluster CA's statements (member keys, revocations) from the trust
  topic. It starts first: the catalog follower verifies every entry with its author's
  registered key, and the gateway cuts off revoked members, both from the trust table;
* ``publisher`` moves the outbox to the backbone and re-announces the town's datasets;
* ``follower`` keeps the federated catalog from the backbone. It begins once the trust
  follower has read the trust topic to its end (or after ``trust_wait_s``, so a trust topic
  that cannot be read does not stop the catalog), so the keys it verifies with are there;
* ``rescanner`` first keeps the data keys in step (KeyManager: grants for newly entitled
  members, rotation when one lost access), then re-imports a dataset when its file's
  modification time or size changes. A malformed changed file is logged with the file and
  line, and the store keeps the last good version; the file is tried again when it changes.
* ``policy`` checks the signed policy bundles on ``<prefix>.policy`` (the cluster's and this
  member's own) and records them, accepted or refused, for the gateway, which switches to
  the newest accepted pair. Like the catalog follower it begins once trust was read, since
  an owner's bundle verifies with the key the CA registered for it.
* ``decisions`` (with ``[keys]`` and an audit log) signs the gateway's audit entries onto
  ``<prefix>.decisions`` as DecisionRecords (DecisionPublisher; it needs no trust).
* ``replicas`` (only with ``[node] replicas``) keeps a verified copy of each listed dataset
  of another member (ReplicaSet: one follower per records topic, driven in turn). Like the
  catalog follower it begins once the trust topic was read to its end.

``import_now`` imports on the caller's thread, through a connection of its own, serialised
with the rescanner by a lock.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from allmende.config import DatasetSource, NodeConfig
from allmende.errors import DatasetNotFound, IdentityError, ImportFileError, StoreError
from allmende.metrics import MetricsServer, NodeMetrics
from allmende.policy import AgreementError
from allmende.store import connect
from allmende_node.decision_publisher import DecisionPublisher
from allmende_node.follower import CatalogFollower
from allmende_node.importer import ImportResult, import_file
from allmende_node.keys import KeyManager
from allmende_node.outbox import Outbox
from allmende_node.policy_follower import PolicyFollower
from allmende_node.publisher import Publisher
from allmende_node.replica_follower import ReplicaSet
from allmende_node.topic_follower import TopicFollower
from allmende_node.trust_follower import TrustFollower

__all__ = ["Node"]

log = logging.getLogger(__name__)

FileStamp = tuple[int, int] | None  # (mtime in ns, size); None when the file is missing


def _stamp(path: Path) -> FileStamp:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


class Node:
    """One town's node. ``start`` imports and starts the threads; ``stop`` ends them.

    ``sleep`` and ``clock`` are handed to every loop (see Publisher); ``stop_timeout_s`` is
    how long ``stop`` waits for the threads together.
    """

    def __init__(
        self,
        config: NodeConfig,
        *,
        sleep: Callable[[float], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
        stop_timeout_s: float = 2.0,
        trust_wait_s: float = 10.0,
    ) -> None:
        self.config = config
        self.stop_timeout_s = stop_timeout_s
        self.trust_wait_s = trust_wait_s
        self.publisher: Publisher | None = None
        self.decision_publisher: DecisionPublisher | None = None
        self.metrics = NodeMetrics(config.member)
        self._metrics_server: MetricsServer | None = None
        self.follower: CatalogFollower | None = None
        self.trust_follower: TrustFollower | None = None
        self.policy_follower: PolicyFollower | None = None
        self.replicas: ReplicaSet | None = None
        self.rescan_failures: dict[str, ImportFileError] = {}
        self._sleep = sleep
        self._clock = clock
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conn: sqlite3.Connection | None = None
        self._import_lock = threading.Lock()
        self._stamps: dict[str, FileStamp] = {}

    def _open(self) -> sqlite3.Connection:
        return connect(self.config.store_path)

    def _source(self, dataset_id: str) -> DatasetSource:
        for source in self.config.datasets:
            if source.id == dataset_id:
                return source
        raise DatasetNotFound(self.config.member, dataset_id)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> Node:
        """Import every configured dataset, then start the threads.

        Every dataset is tried; raises the first ImportFileError (after logging each) when a
        file is malformed, StoreError when the store cannot be opened or written. Nothing
        is started then, and the datasets imported so far stay imported. Raises
        IdentityError, before importing, when the cluster CA certificate cannot be read.
        """
        if self._threads:
            return self
        self.trust_follower = None
        self.policy_follower = None
        if self.config.keys is not None:
            self.trust_follower = TrustFollower(
                self.config, self._open, sleep=self._sleep, clock=self._clock
            )
            self.policy_follower = PolicyFollower(
                self.config, self._open, sleep=self._sleep, clock=self._clock
            )
        else:
            log.warning(
                "node %s has no [keys]: it follows neither trust nor policy bundles",
                self.config.member,
            )
        self.replicas = None
        if self.config.replicas and self.config.keys is not None:
            self.replicas = ReplicaSet(
                self.config, self._open, sleep=self._sleep, clock=self._clock
            )
        elif self.config.replicas:
            log.warning("node %s has no [keys]: it keeps no replicas", self.config.member)
        failures: list[ImportFileError] = []
        try:
            for source in self.config.datasets:
                try:
                    self.import_now(source.id)
                except ImportFileError as exc:
                    log.error("node %s: %s not imported: %s", self.config.member, source.id, exc)
                    failures.append(exc)
            if failures:
                raise failures[0]
        except BaseException:
            self._close_conn()
            raise
        self._stop.clear()
        self.publisher = Publisher(
            self.config,
            self._open,
            sleep=self._sleep,
            clock=self._clock,
            on_backbone_reset=self._republish_grants,
        )
        self.decision_publisher = None
        if self.config.audit_log is not None and self.config.keys is not None:
            self.decision_publisher = DecisionPublisher(
                self.config, sleep=self._sleep, clock=self._clock
            )
        self.follower = CatalogFollower(
            self.config, self._open, sleep=self._sleep, clock=self._clock
        )
        threads: list[tuple[str, Callable[[threading.Event], None]]] = []
        if self.trust_follower is not None:
            threads.append(("trust", self.trust_follower.run))
        threads += [
            ("publisher", self.publisher.run),
            ("follower", self._after_trust("the catalog", self.follower.run, self.follower.close)),
            ("rescanner", self._rescan),
        ]
        if self.decision_publisher is not None:
            threads.append(("decisions", self.decision_publisher.run))
        if self.policy_follower is not None:
            policy = self.policy_follower
            threads.append(
                ("policy", self._after_trust("policy bundles", policy.run, policy.close))
            )
        if self.replicas is not None:
            replicas = self._after_trust("the replicas", self.replicas.run, self.replicas.close)
            threads.append(("replicas", replicas))
        self._watch_metrics()
        for name, target in threads:
            thread = threading.Thread(
                target=target,
                args=(self._stop,),
                name=f"allmende-{name}-{self.config.member}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        log.info(
            "node %s started: %d dataset(s), backbone %s",
            self.config.member,
            len(self.config.datasets),
            ",".join(self.config.backbone.bootstrap_servers),
        )
        return self

    def stop(self) -> None:
        """Stop the threads, waiting ``stop_timeout_s`` for all of them; safe to call twice.

        A thread still busy after the deadline (a network call that has not timed out yet)
        is logged and left to finish on its own; it is a daemon and closes its own clients.
        """
        self._stop.set()
        deadline = time.monotonic() + self.stop_timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        late = [t.name for t in self._threads if t.is_alive()]
        if late:
            log.warning("node %s: threads still running after stop: %s", self.config.member, late)
        self._threads = []
        if self._metrics_server is not None:
            self._metrics_server.stop()
            self._metrics_server = None
        self._close_conn()

    @property
    def metrics_url(self) -> str:
        """http://host:port/metrics, or "" when the node serves no metrics."""
        return self._metrics_server.url if self._metrics_server is not None else ""

    def _watch_metrics(self) -> None:
        """Point the metrics at this run's publishers and followers; serve them if asked."""
        m = self.metrics = NodeMetrics(self.config.member)
        publisher, decisions = self.publisher, self.decision_publisher
        if publisher is not None:
            m.watch_published("outbox", lambda: publisher.sent)
        if decisions is not None:
            m.watch_published("decision", lambda: decisions.published)
        followers: list[TopicFollower | None] = [
            self.trust_follower,
            self.follower,
            self.policy_follower,
        ]
        followers += self.replicas.followers if self.replicas is not None else []
        for follower in followers:
            if follower is not None:
                m.watch_follower(follower.topic, follower)
        store_path = self.config.store_path

        def outbox_pending() -> int:
            conn = connect(store_path)  # the scrape's own connection, on the HTTP thread
            try:
                return Outbox(conn).count()
            finally:
                conn.close()

        m.watch_outbox(outbox_pending)
        if self.config.metrics_listen and self._metrics_server is None:
            self._metrics_server = MetricsServer(m.registry, self.config.metrics_listen)

    def _close_conn(self) -> None:
        with self._import_lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def _after_trust(
        self, what: str, run: Callable[[threading.Event], None], close: Callable[[], None]
    ) -> Callable[[threading.Event], None]:
        """A thread's target: wait for trust (bounded by ``trust_wait_s``), then ``run``;
        ``close`` when stopped before."""

        def target(stop: threading.Event) -> None:
            if self._trust_read(stop, what):
                run(stop)
            else:
                close()

        return target

    def _trust_read(self, stop: threading.Event, what: str) -> bool:
        """Wait until the trust follower read the trust topic to its end, at most
        ``trust_wait_s``; False when stopped meanwhile."""
        trust = self.trust_follower
        if trust is None:
            return True
        deadline = time.monotonic() + self.trust_wait_s
        while not trust.caught_up.wait(0.05):
            if stop.is_set():
                return False
            if time.monotonic() > deadline:
                log.warning(
                    "node %s: the trust topic was not read to its end within %.0f s; "
                    "following %s anyway",
                    self.config.member,
                    self.trust_wait_s,
                    what,
                )
                break
        return True

    # -- importing -----------------------------------------------------------------------

    def import_now(self, dataset_id: str) -> ImportResult:
        """Import the configured dataset ``dataset_id`` from its file now.

        Raises DatasetNotFound when no dataset of that id is configured, ImportFileError when
        its file is unreadable or malformed (the store keeps the last good version), and
        StoreError when the store cannot be written.
        """
        source = self._source(dataset_id)
        with self._import_lock:
            if self._conn is None:
                self._conn = self._open()
            return self._import(self._conn, source)

    def _import(self, conn: sqlite3.Connection, source: DatasetSource) -> ImportResult:
        # The stamp is taken before reading, so a change during the read is seen next scan.
        self._stamps[source.id] = _stamp(source.file)
        result = import_file(conn, self.config, source)
        self.rescan_failures.pop(source.id, None)
        if result.upserts or result.deletes:
            log.info(
                "node %s: imported %s version %d (%d upserted, %d deleted, %d unchanged)",
                self.config.member,
                source.id,
                result.version,
                result.upserts,
                result.deletes,
                result.unchanged,
            )
        return result

    def _rescan(self, stop: threading.Event) -> None:
        """The rescanner thread: keep data keys in step, then re-import changed files.

        Runs at once and then every ``rescan_interval_s``. The key check comes first, so an
        import after a member lost access already uses the rotated key.
        """
        conn: sqlite3.Connection | None = None
        keys: KeyManager | None = None
        try:
            while True:
                try:
                    if conn is None:
                        conn = self._open()
                    if keys is None and self.config.keys is not None:
                        keys = KeyManager(self.config, conn)
                    if keys is not None:
                        self._check_keys(keys)
                    self.rescan_once(conn)
                except StoreError as exc:
                    log.error("node %s: rescanning failed: %s", self.config.member, exc)
                if self._pause(stop, self.config.rescan_interval_s):
                    break
        finally:
            if conn is not None:
                conn.close()

    def _check_keys(self, keys: KeyManager) -> None:
        """Grant, revoke and rotate data keys as agreements and trust changed; never raises.

        A broken agreement file or unreadable trust changes nothing (logged): a typo must
        not cut every member off, nor hand a key to anyone new.
        """
        with self._import_lock:
            try:
                keys.run_once()
            except (AgreementError, IdentityError, StoreError) as exc:
                log.error("node %s: data keys left as they are: %s", self.config.member, exc)

    def _republish_grants(self, conn: sqlite3.Connection) -> None:
        if self.config.keys is None:
            return
        try:
            count = KeyManager(self.config, conn).republish()
        except (AgreementError, IdentityError, StoreError) as exc:
            log.error("node %s: data key grants not re-queued: %s", self.config.member, exc)
        else:
            log.info("node %s: re-queued %d data key grant(s)", self.config.member, count)

    def rescan_once(self, conn: sqlite3.Connection) -> list[ImportResult]:
        """Re-import every dataset whose file changed since it was last read; never raises
        ImportFileError (it is logged and kept in ``rescan_failures``). Raises StoreError.
        """
        results = []
        for source in self.config.datasets:
            stamp = _stamp(source.file)
            if stamp == self._stamps.get(source.id):
                continue
            with self._import_lock:
                if stamp is None:
                    self._stamps[source.id] = None
                    log.error(
                        "node %s: %s is gone; the store keeps the last version of %s",
                        self.config.member,
                        source.file,
                        source.id,
                    )
                    continue
                try:
                    results.append(self._import(conn, source))
                except ImportFileError as exc:
                    self.rescan_failures[source.id] = exc
                    log.error(
                        "node %s: %s not re-imported, the store keeps the last good version: %s",
                        self.config.member,
                        source.id,
                        exc,
                    )
        return results

    def _pause(self, stop: threading.Event, seconds: float) -> bool:
        if self._sleep is not None:
            self._sleep(seconds)
            return stop.is_set()
        return stop.wait(seconds)
