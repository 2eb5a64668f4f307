"""The catalog follower: keeps the store's federated ``catalog`` table from the backbone.

It follows the catalog topic (:class:`~allmende_node.topic_follower.TopicFollower` reads it,
resumes and quarantines) and checks every message once, on arrival, before applying it: a
decodable envelope of our cluster, signed by its author with the key the cluster CA
registered for it (``trust`` table), the author not revoked, the author the dataset's owner,
and no replay (a version older than the applied one). Whatever fails is counted, logged and
quarantined (:mod:`allmende_node.quarantine`). A message whose author the trust table does
not know yet is held until trust arrives (it travels on another topic) and quarantined only
after ``grace_s``. The highest version wins; an equal version (a re-announcement) changes
nothing; a withdrawn entry removes the row. Entries about our own datasets are verified but
not applied: the importer writes that row.
"""

from __future__ import annotations

import enum
import logging
import sqlite3
from datetime import UTC, datetime
from typing import Unpack

from allmende.backbone import Topics, open_envelope
from allmende.config import NodeConfig
from allmende.errors import BackboneError, StoreError
from allmende.identity import NAME_PATTERN
from allmende.signing import SignatureInvalid, verify_member
from allmende.trust import TrustStore, UnknownMember
from allmende.v1 import backbone_pb2
from allmende_node.descriptors import rfc3339
from allmende_node.outbox import StoreSource, write_transaction
from allmende_node.quarantine import Arrival, PendingMessages
from allmende_node.signing_keys import cluster_ca_certificate
from allmende_node.topic_follower import FollowerOptions, TopicFollower

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


class CatalogFollower(TopicFollower):
    """Follows the catalog topic into one store. Use from one thread; ``run`` is its loop.

    ``rejected`` counts quarantined messages by kind (``undecodable``, ``foreign-cluster``,
    ``unsigned``, ``bad-signature``, ``revoked-member``, ``unknown-member``,
    ``author-not-owner``, ``invalid-descriptor``, ``replayed``); ``applied`` counts catalog
    rows changed, ``read`` every message read and ``held`` the messages waiting for their
    author's trust. ``clock`` (monotonic seconds) times the topic checks, the grace period
    and the log's rate limit. Raises ConfigError when the node has no ``[keys]`` and
    IdentityError when the cluster CA certificate cannot be read.
    """

    role = "catalog follower"

    def __init__(
        self,
        config: NodeConfig,
        store: StoreSource,
        *,
        grace_s: float = 30.0,
        max_held: int = 1000,
        **options: Unpack[FollowerOptions],
    ) -> None:
        ca = cluster_ca_certificate(config)
        super().__init__(config, store, Topics(config.backbone.topic_prefix).catalog, **options)
        self.grace_s = grace_s
        self.max_held = max_held
        self._ca = ca
        self._held: list[tuple[Arrival, str, float]] | None = None  # (message, author, since)
        self._trust_seen: tuple[int, int] | None = None

    @property
    def held(self) -> int:
        return len(self._held or [])

    # -- checking and applying -----------------------------------------------------------

    def _accept(self, arrival: Arrival) -> bool:
        return self.process(arrival) is Outcome.APPLIED

    def process(self, arrival: Arrival) -> Outcome:
        """Check ``arrival`` once and apply, ignore, hold or quarantine it. Raises StoreError."""
        held = self._held_messages()
        try:
            env, entry = self._verified(arrival, waiting=arrival.pending_id is None)
        except _Refused as refusal:
            self._quarantine(arrival, refusal.kind, refusal.author, refusal.reason)
            return Outcome.QUARANTINED
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
            self._quarantine(
                arrival,
                "replayed",
                author,
                f"replayed: version {desc.version} of {desc.owner}/{desc.id} is older than "
                f"applied version {applied}",
            )
            return Outcome.QUARANTINED
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

    def _bookkeep(self, conn: sqlite3.Connection, arrival: Arrival) -> None:
        """Inside the transaction that settled ``arrival``: release it if it was held,
        else record that the follower is past it."""
        if arrival.pending_id is not None:
            PendingMessages(conn).release(arrival)
        else:
            super()._bookkeep(conn, arrival)

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
                "%s: holding messages of %s until the cluster CA's statement about it "
                "arrives (at most %.0f s)",
                self.what,
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

    def _before_read(self) -> None:
        self.retry_held()
