"""The replica follower: keeps a verified copy of another member's dataset from its records topic.

A node lists the datasets it replicates in ``[node] replicas``; for each, a
:class:`ReplicaFollower` reads ``<prefix>.records.<owner>.<dataset>``
(:class:`~allmende_node.topic_follower.TopicFollower` reads, resumes and quarantines) and
checks every batch once, when it arrives, with
:meth:`~allmende_node.record_reader.RecordReader.verify`: our cluster, authored by the
topic's owner, who is registered and not revoked, signed with the owner's key, about the
topic's dataset. Then a batch not newer than what was applied is a replay; the rest is
decrypted with the data key the owner granted us and applied change by change, in sequence
order, together with ``replica_state`` and the follower's position in one transaction. What
fails is counted, logged and quarantined.

Some batches cannot be settled yet, and the follower stops at them and reads them again
later, so nothing after them is applied out of order: one whose owner the trust table does
not know (quarantined as ``unknown-member`` after ``grace_s``), and one whose data key has
not arrived (key grants are read again every ``retry_s``). When the owner rotated the key
away from us (we are no longer entitled) the replica's status becomes ``rotated-away``: it
keeps what it applied and applies nothing newer, without quarantining anything.

After the topic was recreated (a broker that lost its topics) the follower reads it from the
start; batches it applied before are then history, not replays, and are skipped silently
until it has read the new topic to its end.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NoReturn, Unpack

from cryptography.hazmat.primitives.asymmetric import x25519

from allmende.backbone import Topics
from allmende.config import NodeConfig
from allmende.datakeys import DataKeyError, KeyUnavailable, load_encryption_key
from allmende.errors import BackboneError, StoreError
from allmende.trust import TrustStore
from allmende.v1 import backbone_pb2, query_pb2
from allmende_node.backbone_link import pause
from allmende_node.descriptors import rfc3339
from allmende_node.outbox import StoreSource, write_transaction
from allmende_node.quarantine import Arrival
from allmende_node.record_reader import (
    BATCH_REJECTION_KINDS,
    BatchRefused,
    OpenedBatch,
    RecordReader,
)
from allmende_node.signing_keys import cluster_ca_certificate, node_key_files
from allmende_node.topic_follower import FollowerOptions, TopicFollower

__all__ = [
    "REJECTION_KINDS",
    "REPLICA_STATUSES",
    "ReplicaFollower",
    "ReplicaOptions",
    "ReplicaSet",
    "ReplicaState",
    "replica_states",
]

log = logging.getLogger(__name__)

REJECTION_KINDS = (*BATCH_REJECTION_KINDS, "replayed", "undecryptable")
"""What a refused batch is counted as; the quarantine's reason starts with the kind."""

REPLICA_STATUSES = ("following", "waiting-for-trust", "waiting-for-key", "rotated-away")
"""What ``replica_state.status`` says: applying; stopped at a batch whose owner or data key
has not arrived; stopped for good because the owner rotated the key away from us."""


class ReplicaOptions(FollowerOptions, total=False):
    """FollowerOptions, and: ``grace_s`` (30.0) how long a batch of an owner the cluster CA
    has not registered waits; ``retry_s`` (1.0) how often a waiting batch is tried again
    (reading the key grants again); ``rotated_retry_s`` (30.0) the same after the owner
    rotated the key away (a new agreement brings the keys back); ``encryption_key`` our
    X25519 key (read from ``[keys] encryption_key`` when not given)."""

    grace_s: float
    retry_s: float
    rotated_retry_s: float
    encryption_key: x25519.X25519PrivateKey | None


class _Blocked(StoreError):
    """The arrival cannot be settled yet. A StoreError, so TopicFollower.poll_once seeks back
    to it and it is read again; ``ReplicaFollower.poll_once`` catches it, it never leaves."""


@dataclass(frozen=True)
class ReplicaState:
    """One replica as the store has it; ``configured`` is False for one ``[node] replicas``
    no longer names (its rows stay until the operator removes them)."""

    owner: str
    dataset: str
    status: str
    last_sequence: int
    dataset_version: int
    key_version: int
    records: int
    updated_at: str
    configured: bool = True


def replica_states(
    conn: sqlite3.Connection, replicas: Iterable[tuple[str, str]]
) -> list[ReplicaState]:
    """The configured ``replicas`` (in order), then any other the store holds. Raises
    StoreError."""
    try:
        rows = conn.execute(
            "SELECT owner, dataset, status, last_sequence, dataset_version, key_version, "
            "updated_at FROM replica_state"
        ).fetchall()
        counts = conn.execute(
            "SELECT owner, dataset, COUNT(*) FROM replica_records GROUP BY owner, dataset"
        ).fetchall()
    except sqlite3.Error as exc:
        raise StoreError(f"reading the replicas failed: {exc}") from exc
    state = {(r[0], r[1]): r for r in rows}
    held = {(o, d): int(n) for o, d, n in counts}
    wanted = list(dict.fromkeys(replicas))
    out = []
    for owner, dataset in wanted + sorted(set(state) - set(wanted)):
        row = state.get((owner, dataset)) or (owner, dataset, "no batch yet", 0, 0, 0, "")
        out.append(
            ReplicaState(
                owner,
                dataset,
                status=str(row[2]),
                last_sequence=int(row[3]),
                dataset_version=int(row[4]),
                key_version=int(row[5]),
                records=held.get((owner, dataset), 0),
                updated_at=str(row[6]),
                configured=(owner, dataset) in wanted,
            )
        )
    return out


class ReplicaFollower(TopicFollower):
    """Follows one owner's records topic of one dataset into ``replica_records``.

    Use from one thread: ``run`` is its loop, or :class:`ReplicaSet` drives several in turn.
    ``rejected`` counts quarantined batches by kind (REJECTION_KINDS), ``applied`` the
    changes applied, ``waiting`` what the follower waits for (None, ``trust``, ``key`` or
    ``rotated-away``). Options: :class:`ReplicaOptions`. Raises ConfigError when the node has
    no ``[keys]`` and IdentityError when the CA certificate or encryption key is unreadable.
    """

    def __init__(
        self,
        config: NodeConfig,
        store: StoreSource,
        owner: str,
        dataset: str,
        *,
        grace_s: float = 30.0,
        retry_s: float = 1.0,
        rotated_retry_s: float = 30.0,
        encryption_key: x25519.X25519PrivateKey | None = None,
        **options: Unpack[FollowerOptions],
    ) -> None:
        self._ca = cluster_ca_certificate(config)
        self._private = encryption_key or load_encryption_key(node_key_files(config).encryption_key)
        self.role = f"{owner}/{dataset} replica follower"
        super().__init__(
            config, store, Topics(config.backbone.topic_prefix).records(owner, dataset), **options
        )
        self.owner = owner
        self.dataset = dataset
        self.grace_s = grace_s
        self.retry_s = retry_s
        self.rotated_retry_s = rotated_retry_s
        self.waiting: str | None = None
        self._reader: RecordReader | None = None
        self._retry_at: float | None = None  # while blocked: when to read the batch again
        self._unknown_since: float | None = None  # since when the owner is not registered
        self._incarnation: str | None = None  # the topic id the follower last read
        self._settled: dict[int, int] = {}  # partition -> offset after the last settled one
        self._history = False  # reading a recreated topic: old batches are not replays

    @property
    def reader(self) -> RecordReader:
        """Checks and opens batches over this follower's connection (may raise StoreError)."""
        if self._reader is None:
            conn = self._conn
            self._reader = RecordReader(
                self.config,
                conn,
                trust=TrustStore(conn, self.config.cluster, self._ca),
                encryption_key=self._private,
                timeout_s=5.0,
            )
        return self._reader

    # -- checking and applying -----------------------------------------------------------

    def _accept(self, arrival: Arrival) -> bool:
        """Verify one batch and apply, skip, quarantine or wait for it; True when the
        replica changed. Raises StoreError (``_Blocked`` when it must be read again later).
        """
        self._retry_at = self.waiting = None
        try:
            env, batch = self.reader.verify(arrival.value or b"", self.owner, self.dataset)
        except BatchRefused as refused:
            if refused.kind == "unknown-member":
                refused = self._wait_for_trust(refused)
            return self._refuse(arrival, refused)
        self._unknown_since = None
        applied, status = self._state()
        if batch.last_sequence <= applied:
            if self._history:
                self._settle(arrival)  # history of the topic before it was recreated
                return False
            where = f"batch {batch.first_sequence}-{batch.last_sequence}"
            return self._refuse(
                arrival,
                BatchRefused(
                    "replayed",
                    env.author,
                    f"{where} of {self.owner}/{self.dataset} is not newer than applied "
                    f"sequence {applied}",
                ),
            )
        try:
            opened = self._open(env, batch)
        except DataKeyError as exc:  # DecryptionFailed; KeyUnavailable made it wait
            return self._refuse(arrival, BatchRefused("undecryptable", env.author, str(exc)))
        except BatchRefused as refused:
            return self._refuse(arrival, refused)
        return self._apply_batch(arrival, opened, applied, status)

    def _refuse(self, arrival: Arrival, refused: BatchRefused) -> bool:
        self._quarantine(arrival, refused.kind, refused.author, str(refused))
        return False

    def _open(self, env: backbone_pb2.Envelope, batch: backbone_pb2.RecordBatch) -> OpenedBatch:
        """The batch's changes; reads the key grants again when its key is missing."""
        try:
            return self.reader.open_verified(env, batch)
        except KeyUnavailable:
            self._sync_keys()
        try:
            return self.reader.open_verified(env, batch)
        except KeyUnavailable as missing:
            self._wait_for_key(missing)

    def _apply_batch(
        self, arrival: Arrival, opened: OpenedBatch, applied: int, before: str
    ) -> bool:
        """Apply the changes newer than ``applied``, the state and the position at once;
        ``before`` is the replica's status until now."""
        fresh = [c for c in opened.changes if c.sequence > applied]
        last = {c.record_id: c for c in fresh}  # in sequence order: a record's last change wins
        conn, key = self._conn, (self.owner, self.dataset)
        where = f"batch {opened.first_sequence}-{opened.last_sequence} of {key[0]}/{key[1]}"
        with write_transaction(conn, f"applying {where}"):
            conn.executemany(
                "INSERT INTO replica_records (owner, dataset, id, json) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (owner, dataset, id) DO UPDATE SET json = excluded.json",
                [(*key, rid, c.json) for rid, c in last.items() if c.kind == _UPSERT],
            )
            conn.executemany(
                "DELETE FROM replica_records WHERE owner = ? AND dataset = ? AND id = ?",
                [(*key, rid) for rid, c in last.items() if c.kind != _UPSERT],
            )
            conn.execute(
                "INSERT INTO replica_state (owner, dataset, last_sequence, dataset_version, "
                "key_version, status, updated_at) VALUES (?, ?, ?, ?, ?, 'following', ?) "
                "ON CONFLICT (owner, dataset) DO UPDATE SET "
                "last_sequence = excluded.last_sequence, dataset_version = "
                "MAX(replica_state.dataset_version, excluded.dataset_version), "
                "key_version = excluded.key_version, status = 'following', "
                "updated_at = excluded.updated_at",
                (*key, opened.last_sequence, opened.dataset_version, opened.key_version, _now()),
            )
            self._bookkeep(conn, arrival)
        self.applied += len(fresh)
        if before not in ("following", ""):
            log.info("%s: following again (was %s)", self.what, before)
        log.info(
            "%s applied %s (%d change(s), dataset version %d)",
            self.what,
            where,
            len(fresh),
            opened.dataset_version,
        )
        return True

    def _settle(self, arrival: Arrival) -> None:
        with write_transaction(self._conn, f"skipping {arrival.where}"):
            self._bookkeep(self._conn, arrival)

    def _bookkeep(self, conn: sqlite3.Connection, arrival: Arrival) -> None:
        super()._bookkeep(conn, arrival)
        if arrival.partition >= 0:
            self._settled[arrival.partition] = arrival.offset + 1

    def _state(self) -> tuple[int, str]:
        """The applied sequence and the status ("" when nothing was applied). StoreError."""
        try:
            row = self._conn.execute(
                "SELECT last_sequence, status FROM replica_state WHERE owner = ? AND dataset = ?",
                (self.owner, self.dataset),
            ).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"reading the replica state failed: {exc}") from exc
        return (0, "") if row is None else (int(row[0]), str(row[1]))

    def _set_status(self, status: str) -> bool:
        """Record ``status`` in ``replica_state``; True when it changed. Raises StoreError."""
        if self._state()[1] == status:
            return False
        with write_transaction(self._conn, f"recording the status of {self.topic}"):
            self._conn.execute(
                "INSERT INTO replica_state (owner, dataset, status, updated_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (owner, dataset) DO UPDATE SET "
                "status = excluded.status, updated_at = excluded.updated_at",
                (self.owner, self.dataset, status, _now()),
            )
        return True

    # -- waiting for trust and keys -------------------------------------------------------

    def _block(self, waiting: str, status: str, delay_s: float) -> NoReturn:
        """Stop at this arrival: it is read again after ``delay_s``."""
        self._set_status(status)
        self.waiting = waiting
        self._retry_at = self._clock() + delay_s
        raise _Blocked(f"{self.what} waits ({status})")

    def _wait_for_trust(self, refused: BatchRefused) -> BatchRefused:
        """Wait while the owner may still be registered; after ``grace_s`` returns the
        refusal to quarantine with."""
        now = self._clock()
        if self._unknown_since is None:
            self._unknown_since = now
            log.info(
                "%s: %s is not registered by the cluster CA (yet); waiting up to %.0f s",
                self.what,
                refused.author,
                self.grace_s,
            )
        if now - self._unknown_since < self.grace_s:
            self._block("trust", "waiting-for-trust", min(self.retry_s, self.grace_s))
        return BatchRefused(
            "unknown-member",
            refused.author,
            f"the cluster CA made no statement about {refused.author} within {self.grace_s:.0f} s",
        )

    def _sync_keys(self) -> None:
        try:
            if self.reader.sync_keys():
                log.info("%s: received data key(s) of %s", self.what, self.owner)
        except BackboneError as exc:
            log.debug("%s: key grants not read now: %s", self.what, exc)

    def _wait_for_key(self, missing: KeyUnavailable) -> NoReturn:
        cut = self.reader.rotated_away.get((self.owner, self.dataset))
        if cut is not None and missing.key_version >= cut:
            if self._set_status("rotated-away"):
                log.warning(
                    "%s: %s rotated the data key away from %s at version %d (no longer "
                    "entitled); the replica keeps sequence %d and applies nothing newer",
                    self.what,
                    self.owner,
                    self.config.member,
                    cut,
                    self._state()[0],
                )
            self._block("rotated-away", "rotated-away", self.rotated_retry_s)
        if self._set_status("waiting-for-key"):
            log.info("%s: waiting for a grant: %s", self.what, missing)
        self._block("key", "waiting-for-key", self.retry_s)

    # -- reading -------------------------------------------------------------------------

    def poll_once(self, timeout_ms: int | None = None) -> int:
        """As TopicFollower.poll_once; while the follower waits at a batch (``waiting``) it
        reads only every ``retry_s`` (``rotated_retry_s``) and otherwise waits up to
        ``timeout_ms`` and returns 0. Raises BackboneError and StoreError.
        """
        if self._retry_at is not None:
            left = self._retry_at - self._clock()
            if left > 0:
                wait_ms = self.poll_timeout_ms if timeout_ms is None else timeout_ms
                (self._sleep or time.sleep)(min(left, wait_ms / 1000))
                return 0
        try:
            return super().poll_once(timeout_ms)
        except _Blocked:
            return 0

    def apply(
        self, raw: bytes | None, *, partition: int = -1, offset: int = -1, key: bytes | None = None
    ) -> bool:
        """As TopicFollower.apply; a batch that must wait (``waiting``) returns False and is
        not kept: the caller hands it over again. Raises StoreError."""
        try:
            return super().apply(raw, partition=partition, offset=offset, key=key)
        except _Blocked:
            return False

    def _before_read(self) -> None:
        """Notice that the follower reads the topic again from the start (recreated, or a
        partition that lost messages): until the end, old batches are history."""
        pos = self._position
        rewound = any(pos.next.get(p, 0) < n for p, n in self._settled.items())
        if pos.topic_id != self._incarnation or rewound:
            resumed = self._incarnation is None and bool(pos.next)
            self._incarnation, self._settled = pos.topic_id, {}
            self._history = not resumed

    def _read_to_end(self) -> None:
        self._history = False

    def close(self) -> None:
        """Close the backbone clients, and the store connection if this follower opened it."""
        self._reader = None
        super().close()


_UPSERT = query_pb2.CHANGE_KIND_UPSERT


def _now() -> str:
    return rfc3339(datetime.now(UTC))


class ReplicaSet:
    """The followers of every replica a node keeps (``[node] replicas``), for one thread.

    Each follower polls at most ``poll_timeout_ms / n`` per turn (20 ms at least), so one
    round takes about as long as one follower's poll; a follower that failed sits out its
    own backoff while the others go on. Options: :class:`ReplicaOptions`, for every follower.
    Raises what ReplicaFollower raises.
    """

    def __init__(
        self, config: NodeConfig, store: StoreSource, **options: Unpack[ReplicaOptions]
    ) -> None:
        share = options.get("poll_timeout_ms", 200) // max(len(config.replicas), 1)
        opts: ReplicaOptions = {**options, "poll_timeout_ms": max(20, share)}
        self.followers = [
            ReplicaFollower(config, store, owner, dataset, **opts)
            for owner, dataset in config.replicas
        ]
        self._sleep: Callable[[float], object] | None = options.get("sleep")
        self._clock: Callable[[], float] = options.get("clock", time.monotonic)

    def follower(self, owner: str, dataset: str) -> ReplicaFollower:
        """The follower of ``owner``'s ``dataset``; raises KeyError when it is not replicated."""
        for f in self.followers:
            if (f.owner, f.dataset) == (owner, dataset):
                return f
        raise KeyError(f"{owner}/{dataset} is not replicated")

    def run(self, stop: threading.Event) -> None:
        """Follow every replica until ``stop`` is set; closes every follower before
        returning. Raises nothing."""
        due = [0.0] * len(self.followers)
        try:
            while self.followers and not stop.is_set():
                for i, follower in enumerate(self.followers):
                    if due[i] <= self._clock() and not stop.is_set():
                        due[i] = self._clock() + follower.turn()
                wait = min(due) - self._clock()
                if wait > 0 and pause(stop, wait, self._sleep):
                    break
        finally:
            self.close()

    def close(self) -> None:
        """Close every follower's backbone clients and store connection."""
        for follower in self.followers:
            follower.close()
