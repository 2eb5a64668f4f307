"""The owner's data keys: who is entitled to each non-open dataset, key grants and rotation.

Each internal or restricted dataset of the town has a data key, kept per version in the
store's ``data_keys`` table with the members it was delivered to (``recipients``: member →
hex of the X25519 public key it was wrapped for). A member is entitled when a currently
valid sharing agreement of ours names it as a consumer of the dataset and the cluster CA
registered it and has not revoked it.

``KeyManager.run_once`` reconciles the two: a newcomer receives every key version (the
records topic is a log, and history is part of what an agreement shares); when a recipient
is no longer entitled — its agreement ended or was removed, the CA revoked it, or it holds a
new encryption key — the key is rotated: a new version for the members still entitled, and a
``revoked`` grant for each member that lost access, so later batches are unreadable to it.
Grants are signed DataKeyGrants on ``<prefix>.keys``, written through the outbox in the same
transaction as the key table.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from allmende.backbone import OutgoingMessage, Signer, Topics, seal
from allmende.config import NodeConfig
from allmende.datakeys import DataKey, new_data_key, wrap_grant
from allmende.errors import DatasetNotFound, InvalidRequest, StoreError
from allmende.policy import load_agreements
from allmende.trust import TrustStore
from allmende.v1 import backbone_pb2, catalog_pb2
from allmende_node.descriptors import parse_descriptor, rfc3339, timestamp
from allmende_node.outbox import Outbox, write_transaction
from allmende_node.signing_keys import cluster_ca_certificate, node_signer

__all__ = ["KeyChange", "KeyManager", "current_data_key", "grant_key"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeyChange:
    """What one reconciliation did to one dataset's key."""

    dataset: str
    key_version: int
    rotated: bool
    granted: tuple[str, ...]  # members that received key versions
    revoked: tuple[str, ...]  # members rotated away


@dataclass
class _Version:
    version: int
    key: bytes
    recipients: dict[str, str]  # member -> hex X25519 public key the key was wrapped for


def grant_key(owner: str, dataset: str, recipient: str) -> bytes:
    """The Kafka key of a grant on ``<prefix>.keys``: ``<owner>/<dataset>/<recipient>``."""
    return f"{owner}/{dataset}/{recipient}".encode()


def _recipients(text: str) -> dict[str, str]:
    value = json.loads(text or "{}")
    if isinstance(value, list):  # the schema's default; names without key fingerprints
        return {str(m): "" for m in value}
    return {str(m): str(k) for m, k in value.items()}


def _versions(conn: sqlite3.Connection, owner: str, dataset: str) -> list[_Version]:
    rows = conn.execute(
        "SELECT key_version, key, recipients FROM data_keys WHERE owner = ? AND dataset = ? "
        "ORDER BY key_version",
        (owner, dataset),
    ).fetchall()
    return [_Version(int(v), bytes(k), _recipients(r)) for v, k, r in rows]


def _insert(conn: sqlite3.Connection, key: DataKey, recipients: dict[str, str], now: str) -> None:
    conn.execute(
        "INSERT INTO data_keys (owner, dataset, key_version, key, recipients, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (key.owner, key.dataset, key.version, key.key, json.dumps(recipients, sort_keys=True), now),
    )


def current_data_key(
    conn: sqlite3.Connection, owner: str, dataset: str, now: datetime | None = None
) -> DataKey:
    """The newest version of our data key of ``dataset``; creates version 1 when there is none.

    Joins the caller's open transaction (the importer's), else runs in its own.
    Raises StoreError.
    """
    with write_transaction(conn, f"reading the data key of {dataset!r}"):
        versions = _versions(conn, owner, dataset)
        if versions:
            return DataKey(owner, dataset, versions[-1].version, versions[-1].key)
        key = DataKey(owner, dataset, 1, new_data_key())
        _insert(conn, key, {}, rfc3339(now or datetime.now(UTC)))
        return key


def _parse_time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


class KeyManager:
    """Keeps one town's data keys in step with its agreements and the cluster's trust state.

    ``signer`` signs the grants and ``trust`` answers who is registered; both are built from
    ``config.keys`` when not given (ConfigError without ``[keys]``, IdentityError when a key
    file is unreadable). ``clock`` (→ aware datetime) decides which agreements are
    valid. Use from one thread, with that thread's store connection.
    """

    def __init__(
        self,
        config: NodeConfig,
        conn: sqlite3.Connection,
        *,
        signer: Signer | None = None,
        trust: TrustStore | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self.conn = conn
        self.clock = clock
        self.topic = Topics(config.backbone.topic_prefix).keys
        self.signer = signer if signer is not None else node_signer(config)
        self.trust = trust or TrustStore(conn, config.cluster, cluster_ca_certificate(config))
        self._agreements_stamp: tuple[Any, ...] | None = None
        self._agreements: list[dict[str, Any]] = []

    # -- who is entitled -----------------------------------------------------------------

    def agreements(self) -> list[dict[str, Any]]:
        """Our sharing agreements, re-read only when a file changed. Raises AgreementError."""
        path = self.config.agreements_dir
        if path is None:
            return []
        stamp = _stamp(path)
        if stamp != self._agreements_stamp:
            self._agreements = load_agreements(path)
            self._agreements_stamp = stamp
        return self._agreements

    def entitled(self, dataset: str) -> dict[str, bytes]:
        """Every member entitled to ``dataset`` now → its X25519 public key.

        Raises AgreementError (the agreements are unreadable: nothing is decided on them)
        and StoreError.
        """
        return self._entitled(dataset, self.agreements(), self._members())

    def _members(self) -> dict[str, bytes]:
        try:
            return {
                m.member: m.encryption_public_key
                for m in self.trust.members()
                if len(m.encryption_public_key) == 32
            }
        except sqlite3.Error as exc:
            raise StoreError(f"reading the trust state failed: {exc}") from exc

    def _entitled(
        self, dataset: str, agreements: list[dict[str, Any]], members: dict[str, bytes]
    ) -> dict[str, bytes]:
        now = self.clock()
        consumers: set[str] = set()
        for a in agreements:
            if a.get("provider") != self.config.member or dataset not in a.get("datasets", ()):
                continue
            # Only an agreement that replicates the whole dataset hands out the key: the
            # batches carry every field of every record, which a masked or filtered grant
            # must not see; such consumers read through the owner's gateway.
            if not a.get("replicate"):
                continue
            start, end = _parse_time(a.get("valid_from")), _parse_time(a.get("valid_until"))
            if (start is None or start <= now) and (end is None or now < end):
                consumers.update(a.get("members", a.get("consumers", ())))
        consumers.discard(self.config.member)
        return {m: members[m] for m in sorted(consumers) if m in members}

    def datasets(self) -> list[str]:
        """Our own datasets in the store that are not open (they have data keys)."""
        try:
            rows = self.conn.execute("SELECT id, descriptor FROM datasets ORDER BY id").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"reading the own datasets failed: {exc}") from exc
        return [
            ds
            for ds, blob in rows
            if parse_descriptor(blob).classification != catalog_pb2.CLASSIFICATION_OPEN
        ]

    # -- reconciling ---------------------------------------------------------------------

    def current_key(self, dataset: str) -> DataKey:
        """The newest data key of our ``dataset`` (version 1 is created when missing)."""
        return current_data_key(self.conn, self.config.member, dataset, self.clock())

    def run_once(self) -> list[KeyChange]:
        """Grant keys to newcomers and rotate away from members that lost access.

        Reads the agreements (only when a file changed), the trust table and the key table;
        writes only when something changed. Returns what changed, per dataset. Raises
        AgreementError (nothing is changed on unreadable agreements), StoreError.
        """
        agreements, members = self.agreements(), self._members()
        changes = []
        for dataset in self.datasets():
            change = self._reconcile(dataset, self._entitled(dataset, agreements, members))
            if change is not None:
                changes.append(change)
        return changes

    def rotate(self, dataset: str) -> KeyChange:
        """Rotate ``dataset``'s key now: a new version for the members entitled now.

        Raises DatasetNotFound (not ours), InvalidRequest (an open dataset has no key),
        AgreementError, StoreError.
        """
        try:
            row = self.conn.execute(
                "SELECT descriptor FROM datasets WHERE id = ?", (dataset,)
            ).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"reading dataset {dataset!r} failed: {exc}") from exc
        if row is None:
            raise DatasetNotFound(self.config.member, dataset)
        if parse_descriptor(row[0]).classification == catalog_pb2.CLASSIFICATION_OPEN:
            raise InvalidRequest(
                f"{self.config.member}/{dataset} is open: its records travel in plaintext "
                "and it has no data key",
                field="dataset",
            )
        change = self._reconcile(dataset, self.entitled(dataset), force=True)
        assert change is not None
        return change

    def _reconcile(
        self, dataset: str, entitled: dict[str, bytes], force: bool = False
    ) -> KeyChange | None:
        want = {m: k.hex() for m, k in entitled.items()}
        try:
            versions = _versions(self.conn, self.config.member, dataset)
        except sqlite3.Error as exc:
            raise StoreError(f"reading the data keys of {dataset!r} failed: {exc}") from exc
        if versions and not force and versions[-1].recipients == want:
            return None  # the common case: nothing changed, nothing written
        now = self.clock()
        with write_transaction(self.conn, f"updating the data key of {dataset!r}"):
            current_data_key(self.conn, self.config.member, dataset, now)
            versions = _versions(self.conn, self.config.member, dataset)
            have = versions[-1].recipients
            lost = sorted(m for m in have if want.get(m) != have[m])  # gone or re-keyed
            if not force and not lost and have == want:
                return None
            gone = tuple(m for m in lost if m not in want)
            messages: list[OutgoingMessage] = []
            if force or lost:
                key = DataKey(self.config.member, dataset, versions[-1].version + 1, new_data_key())
                _insert(self.conn, key, {}, rfc3339(now))
                versions.append(_Version(key.version, key.key, {}))
                messages += [self._revoked_grant(key.version, dataset, m, now) for m in gone]
            granted: set[str] = set()
            for v in versions:
                fresh = {m: k for m, k in want.items() if v.recipients.get(m) != k}
                if not fresh:
                    continue
                key = DataKey(self.config.member, dataset, v.version, v.key)
                messages += [self._grant(key, m, bytes.fromhex(k), now) for m, k in fresh.items()]
                granted.update(fresh)
                v.recipients.update(fresh)
                self.conn.execute(
                    "UPDATE data_keys SET recipients = ? "
                    "WHERE owner = ? AND dataset = ? AND key_version = ?",
                    (json.dumps(v.recipients, sort_keys=True), key.owner, dataset, v.version),
                )
            Outbox(self.conn).enqueue(messages, now)
        change = KeyChange(
            dataset, versions[-1].version, bool(force or lost), tuple(sorted(granted)), gone
        )
        log.info(
            "%s/%s: data key version %d%s; granted to %s; rotated away from %s",
            self.config.member,
            dataset,
            change.key_version,
            " (new)" if change.rotated else "",
            ", ".join(change.granted) or "nobody new",
            ", ".join(change.revoked) or "nobody",
        )
        return change

    def republish(self) -> int:
        """Queue again every grant the members entitled now hold (after a backbone lost its
        topics); returns how many. Raises AgreementError, StoreError.
        """
        agreements, members, count = self.agreements(), self._members(), 0
        now = self.clock()
        with write_transaction(self.conn, "republishing data key grants"):
            for dataset in self.datasets():
                want = {m: k.hex() for m, k in self._entitled(dataset, agreements, members).items()}
                messages = [
                    self._grant(
                        DataKey(self.config.member, dataset, v.version, v.key),
                        m,
                        bytes.fromhex(k),
                        now,
                    )
                    for v in _versions(self.conn, self.config.member, dataset)
                    for m, k in v.recipients.items()
                    if want.get(m) == k
                ]
                count += Outbox(self.conn).enqueue(messages, now)
        return count

    def _seal(
        self, grant: backbone_pb2.DataKeyGrant, recipient: str, now: datetime
    ) -> OutgoingMessage:
        value = seal(
            self.config.member,
            self.config.cluster,
            grant,
            created_at=timestamp(now),
            signer=self.signer,
        )
        return OutgoingMessage(self.topic, grant_key(grant.owner, grant.dataset, recipient), value)

    def _grant(self, key: DataKey, recipient: str, public: bytes, now: datetime) -> OutgoingMessage:
        return self._seal(wrap_grant(key, recipient, public), recipient, now)

    def _revoked_grant(
        self, version: int, dataset: str, recipient: str, now: datetime
    ) -> OutgoingMessage:
        grant = backbone_pb2.DataKeyGrant(
            owner=self.config.member,
            dataset=dataset,
            key_version=version,
            recipient=recipient,
            revoked=True,
        )
        return self._seal(grant, recipient, now)


def _stamp(path: Path) -> tuple[Any, ...]:
    """What changes when an agreement file is added, removed or edited (by content: an edit
    within the file system's timestamp granularity keeps size and mtime)."""
    try:
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
        else:
            files = [path]
        return tuple((p.name, hashlib.sha256(p.read_bytes()).digest()) for p in files)
    except OSError:
        return ("unreadable",)
