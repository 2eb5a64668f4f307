"""Reading another member's records from the backbone: key grants, signatures, decryption.

What an entitled member runs: ``sync_keys`` reads ``<prefix>.keys`` for DataKeyGrants
addressed to this member, verifies each against its author's registered signing key,
unwraps it with the member's X25519 private key and stores the data key in ``data_keys``.
``verify`` checks one RecordBatch (own cluster, author = owner, registered and not revoked,
signed with the owner's key from the trust table, the topic's dataset) and raises
:class:`BatchRefused` naming the check that failed; ``open_verified`` returns its changes,
decrypting non-open ones with the stored key. ``open_batch`` does both. The replica follower
(:mod:`allmende_node.replica_follower`) uses the same two steps on every batch it applies.

Both read a topic from its beginning to the end it had when asked: grants and batches are
applied idempotently, so reading again is harmless, and a broker that lost its topics only
makes the answer shorter.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric import x25519

from allmende.backbone import Topics, open_envelope
from allmende.config import NodeConfig
from allmende.datakeys import (
    DataKey,
    KeyUnavailable,
    decrypt_changes,
    load_encryption_key,
    unwrap_grant,
)
from allmende.errors import AllmendeError, BackboneError, IdentityError, StoreError
from allmende.signing import SignatureInvalid, verify_member
from allmende.trust import TrustStore, UnknownMember
from allmende.v1 import backbone_pb2, query_pb2
from allmende_node.backbone_link import TopicAdmin, probe
from allmende_node.descriptors import rfc3339
from allmende_node.outbox import write_transaction
from allmende_node.signing_keys import cluster_ca_certificate, node_key_files

__all__ = ["BATCH_REJECTION_KINDS", "BatchRefused", "OpenedBatch", "RecordReader"]

log = logging.getLogger(__name__)

BATCH_REJECTION_KINDS = (
    "undecodable",
    "foreign-cluster",
    "revoked-member",
    "author-not-owner",
    "unknown-member",
    "unsigned",
    "bad-signature",
    "wrong-topic",
    "invalid-batch",
)
"""The checks ``verify`` and ``open_verified`` make, in the order they make them."""

_UPSERT, _DELETE = query_pb2.CHANGE_KIND_UPSERT, query_pb2.CHANGE_KIND_DELETE


class BatchRefused(AllmendeError):
    """A record batch (or key grant) failed a check of PROTOCOL.md section 6; not applied.

    ``kind`` names the check (BATCH_REJECTION_KINDS), ``author`` is the envelope's author
    ("" when undecodable), ``detail`` says what was wrong; the message is ``kind: detail``.
    """

    reason = "BATCH_REFUSED"

    def __init__(self, kind: str, author: str, detail: str) -> None:
        self.kind = kind
        self.author = author
        self.detail = detail
        super().__init__(f"{kind}: {detail}")


# What open_batch and apply_grant raised for each kind before BatchRefused existed.
_RAISED_AS: dict[str, type[AllmendeError]] = {
    "undecodable": BackboneError,
    "wrong-topic": BackboneError,
    "invalid-batch": BackboneError,
    "foreign-cluster": IdentityError,
    "unknown-member": UnknownMember,
    "revoked-member": UnknownMember,
    "author-not-owner": SignatureInvalid,
    "unsigned": SignatureInvalid,
    "bad-signature": SignatureInvalid,
}


def _as_before(refused: BatchRefused) -> AllmendeError:
    return _RAISED_AS[refused.kind](refused.detail)


@dataclass(frozen=True)
class OpenedBatch:
    """A verified batch: its author, header and changes (``key_version`` 0 when plaintext)."""

    author: str
    owner: str
    dataset: str
    first_sequence: int
    last_sequence: int
    dataset_version: int
    key_version: int
    changes: tuple[backbone_pb2.RecordChange, ...]


class RecordReader:
    """Reads records of other members into one store's key table. Use from one thread.

    ``trust`` and ``encryption_key`` are built from ``config.keys`` when not given
    (ConfigError without ``[keys]``, IdentityError when a key file is unreadable).
    ``rejected`` counts refused grants by reason; ``rotated_away`` maps ``(owner, dataset)``
    to the key version from which the owner no longer grants us the key.
    """

    def __init__(
        self,
        config: NodeConfig,
        conn: sqlite3.Connection,
        *,
        trust: TrustStore | None = None,
        encryption_key: x25519.X25519PrivateKey | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.config = config
        self.conn = conn
        self.timeout_s = timeout_s
        self.topics = Topics(config.backbone.topic_prefix)
        self.trust = trust or TrustStore(conn, config.cluster, cluster_ca_certificate(config))
        self._private = encryption_key or load_encryption_key(node_key_files(config).encryption_key)
        self.rejected: Counter[str] = Counter()
        self.rotated_away: dict[tuple[str, str], int] = {}

    # -- grants --------------------------------------------------------------------------

    def sync_keys(self) -> int:
        """Apply every grant for us on ``<prefix>.keys``; returns how many keys were new.

        A grant that does not verify or unwrap is logged, counted in ``rejected`` and
        skipped. Raises BackboneError (backbone unreachable) and StoreError.
        """
        stored = 0
        for raw in self._read(self.topics.keys):
            try:
                stored += self.apply_grant(raw)
            except StoreError:
                raise
            except AllmendeError as exc:
                self.rejected[type(exc).__name__] += 1
                log.warning("%s: refused a key grant: %s", self.config.member, exc)
        return stored

    def apply_grant(self, raw: bytes) -> bool:
        """Verify, unwrap and store one grant; True when it gave us a key we did not hold.

        Grants for other members are ignored; a ``revoked`` grant is noted in
        ``rotated_away``. Raises BackboneError (not a grant), SignatureInvalid/IdentityError
        (not signed by its owner, another cluster), DecryptionFailed (not wrapped for our
        key, or altered), StoreError.
        """
        env, grant = open_envelope(raw, backbone_pb2.DataKeyGrant)
        if grant.recipient != self.config.member or grant.owner == self.config.member:
            return False
        try:
            self._check_author(env, grant.owner, f"grant of {grant.owner}/{grant.dataset}")
        except BatchRefused as refused:
            raise _as_before(refused) from refused
        if grant.revoked:
            where = (grant.owner, grant.dataset)
            self.rotated_away[where] = max(self.rotated_away.get(where, 0), grant.key_version)
            return False
        return self._store(unwrap_grant(grant, self._private))

    def _store(self, key: DataKey) -> bool:
        with write_transaction(self.conn, f"storing data key of {key.owner}/{key.dataset}"):
            row = self.conn.execute(
                "SELECT key FROM data_keys WHERE owner = ? AND dataset = ? AND key_version = ?",
                (key.owner, key.dataset, key.version),
            ).fetchone()
            if row is not None and bytes(row[0]) == key.key:
                return False
            self.conn.execute(
                "INSERT INTO data_keys (owner, dataset, key_version, key, created_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (owner, dataset, key_version) "
                "DO UPDATE SET key = excluded.key",
                (key.owner, key.dataset, key.version, key.key, rfc3339(datetime.now(UTC))),
            )
        return True

    def key(self, owner: str, dataset: str, version: int) -> bytes:
        """The stored data key; raises KeyUnavailable naming why we lack it, StoreError."""
        try:
            row = self.conn.execute(
                "SELECT key FROM data_keys WHERE owner = ? AND dataset = ? AND key_version = ?",
                (owner, dataset, version),
            ).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"reading the data keys failed: {exc}") from exc
        if row is not None:
            return bytes(row[0])
        cut = self.rotated_away.get((owner, dataset))
        why = ""
        if cut is not None and version >= cut:
            why = (
                f"{owner} rotated the key away from {self.config.member} at version {cut} "
                "(no longer entitled)"
            )
        raise KeyUnavailable(owner, dataset, version, why)

    # -- batches -------------------------------------------------------------------------

    def open_batch(self, raw: bytes, owner: str = "", dataset: str = "") -> OpenedBatch:
        """Verify one RecordBatch message and return its changes, decrypted when needed.

        ``owner``/``dataset`` (the topic's) are checked when given. Raises BackboneError (not
        a batch, or inconsistent), SignatureInvalid/IdentityError (not signed by its owner,
        owner unknown or revoked), KeyUnavailable (no key of its version), DecryptionFailed.
        """
        try:
            return self.open_verified(*self.verify(raw, owner, dataset))
        except BatchRefused as refused:
            raise _as_before(refused) from refused

    def verify(
        self, raw: bytes, owner: str = "", dataset: str = ""
    ) -> tuple[backbone_pb2.Envelope, backbone_pb2.RecordBatch]:
        """Check one RecordBatch message before anything of it is used; returns it decoded.

        ``owner``/``dataset`` are the topic's (the batch's own header when not given). The
        checks, in order: an Envelope carrying a RecordBatch, of our cluster, authored by
        the owner, who is registered and not revoked, signed with the owner's key, about the
        topic's dataset. Raises BatchRefused naming the first that failed, StoreError.
        """
        try:
            env, batch = open_envelope(raw, backbone_pb2.RecordBatch)
        except BackboneError as exc:
            raise BatchRefused("undecodable", "", str(exc)) from exc
        owner = owner or batch.owner
        dataset = dataset or batch.dataset
        where = f"batch {batch.first_sequence}-{batch.last_sequence} of {owner}/{dataset}"
        self._check_author(env, owner, where)
        if (batch.owner, batch.dataset) != (owner, dataset):
            raise BatchRefused(
                "wrong-topic",
                env.author,
                f"batch of {batch.owner}/{batch.dataset} arrived on the topic of {owner}/{dataset}",
            )
        return env, batch

    def _check_author(self, env: backbone_pb2.Envelope, owner: str, where: str) -> None:
        """Our cluster, authored by ``owner``, registered, not revoked, signed with its key."""
        author = env.author
        if env.cluster != self.config.cluster:
            raise BatchRefused(
                "foreign-cluster",
                author,
                f"{where} comes from cluster {env.cluster!r}; this node is in "
                f"{self.config.cluster!r}",
            )
        try:
            keys = self.trust.member(author)
        except UnknownMember:
            keys = None
        if keys is not None and keys.revoked:
            raise BatchRefused(
                "revoked-member", author, f"signed by revoked member {author} ({keys.revoked})"
            )
        if author != owner:
            raise BatchRefused(
                "author-not-owner", author, f"{where} is authored by {author!r}, not by its owner"
            )
        if keys is None:
            raise BatchRefused(
                "unknown-member", author, f"the cluster CA has not registered member {author!r}"
            )
        try:
            verify_member(env, keys.signing_public_key)
        except SignatureInvalid as exc:
            kind = "bad-signature" if env.signature else "unsigned"
            why = {
                "unsigned": f"{where} names {author} as author and is not signed",
                "bad-signature": f"{where} does not verify with {author}'s registered key "
                "(forged, or altered after signing)",
            }
            raise BatchRefused(kind, author, why[kind]) from exc

    def open_verified(
        self, env: backbone_pb2.Envelope, batch: backbone_pb2.RecordBatch
    ) -> OpenedBatch:
        """The changes of a batch ``verify`` accepted, decrypted with the stored key if sealed.

        Raises KeyUnavailable (no key of its version: not granted yet, or rotated away from
        us), DecryptionFailed (wrong key or altered), BatchRefused ``invalid-batch`` (no
        body; a change of another dataset, outside the batch's range, out of order, or of
        no kind), StoreError.
        """
        where = (
            f"batch {batch.first_sequence}-{batch.last_sequence} of {batch.owner}/{batch.dataset}"
        )
        body = batch.WhichOneof("body")
        if body == "plaintext":
            changes, version = batch.plaintext, 0
        elif body == "encrypted":
            version = batch.encrypted.key_version
            changes = decrypt_changes(self.key(batch.owner, batch.dataset, version), batch)
        else:
            raise BatchRefused("invalid-batch", env.author, f"{where} has no body")
        previous = batch.first_sequence - 1
        for c in changes.changes:
            if (
                (c.owner, c.dataset) != (batch.owner, batch.dataset)
                or not (previous < c.sequence <= batch.last_sequence)
                or c.kind not in (_UPSERT, _DELETE)
                or (c.kind == _UPSERT and not c.json)
            ):
                raise BatchRefused(
                    "invalid-batch",
                    env.author,
                    f"{where} holds change {c.sequence} of {c.owner}/{c.dataset} "
                    f"(kind {c.kind}) after {previous}",
                )
            previous = c.sequence
        return OpenedBatch(
            env.author,
            batch.owner,
            batch.dataset,
            batch.first_sequence,
            batch.last_sequence,
            batch.dataset_version,
            version,
            tuple(changes.changes),
        )

    def fetch(self, owner: str, dataset: str) -> list[bytes]:
        """Every message value now on ``owner``'s records topic of ``dataset``, in order.

        Raises BackboneError.
        """
        return self._read(self.topics.records(owner, dataset))

    def read(self, owner: str, dataset: str) -> list[OpenedBatch]:
        """Every batch now on the topic, verified and opened; raises what open_batch raises."""
        return [self.open_batch(raw, owner, dataset) for raw in self.fetch(owner, dataset)]

    # -- the backbone --------------------------------------------------------------------

    def _read(self, topic: str) -> list[bytes]:
        """Values of ``topic`` from the beginning to its end now; [] when it does not exist."""
        from kafka import KafkaConsumer, TopicPartition
        from kafka.errors import KafkaError

        admin = TopicAdmin(self.config.backbone)
        try:
            # Asked through a consumer, tansu would create a missing topic (4 partitions).
            info = admin.describe([topic])[topic]
        finally:
            admin.close()
        if info is None:
            return []
        probe(self.config.backbone)
        ms = int(self.timeout_s * 1000)
        values: list[tuple[int, int, bytes]] = []
        try:
            consumer: Any = KafkaConsumer(
                **self.config.backbone.kafka_options(),
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                bootstrap_timeout_ms=ms,
                request_timeout_ms=max(ms, 1000),
            )
        except (KafkaError, OSError) as exc:
            raise BackboneError(f"cannot reach the backbone to read {topic}: {exc}") from exc
        try:
            parts = [TopicPartition(topic, p) for p in range(max(info[1], 1))]
            consumer.assign(parts)
            consumer.seek_to_beginning(*parts)
            end = consumer.end_offsets(parts)
            deadline = time.monotonic() + self.timeout_s
            while any(consumer.position(tp) < end[tp] for tp in parts):
                if time.monotonic() > deadline:
                    raise BackboneError(f"reading {topic} did not finish in {self.timeout_s} s")
                for tp, messages in consumer.poll(timeout_ms=200).items():
                    values += [(tp.partition, m.offset, m.value) for m in messages]
        except KafkaError as exc:
            raise BackboneError(f"reading {topic} failed: {exc}") from exc
        finally:
            consumer.close()
        return [v for _, _, v in sorted(values, key=lambda t: t[:2])]
