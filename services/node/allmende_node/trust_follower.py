"""The trust follower: applies the cluster CA's signed statements from ``<prefix>.trust``.

It follows the trust topic (:class:`~allmende_node.topic_follower.TopicFollower` reads it,
resumes and quarantines) and hands each message to ``TrustStore.apply``, which verifies the
CA's signature and keeps, per member, the statement with the highest version: a
MemberRecord (the member's keys) or a Revocation. The node's other followers and the gateway
read the result from the store's ``trust`` table; the gateway cuts off revoked members from
it.

A statement that is not applied — undecodable, unsigned or not signed by our CA, about
another cluster, or older than what was applied (a replay) — is counted by kind, logged (one
line per kind at most every 10 s), and kept in the ``quarantine`` table with the reason
``<kind>: <detail>``; following goes on with the next message. Re-applying a statement is
harmless (an equal version changes nothing), so a topic read again from the start after a
broker restart changes nothing that was applied.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from typing import Unpack

from cryptography import x509

from allmende.backbone import Topics, open_envelope
from allmende.config import NodeConfig
from allmende.errors import BackboneError, IdentityError, StoreError
from allmende.signing import SignatureInvalid
from allmende.trust import TrustStore
from allmende.v1 import backbone_pb2
from allmende_node.outbox import StoreSource
from allmende_node.quarantine import Arrival
from allmende_node.signing_keys import verifying_ca_certificate
from allmende_node.topic_follower import FollowerOptions, TopicFollower

__all__ = ["REJECTION_KINDS", "TrustFollower"]

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


class TrustFollower(TopicFollower):
    """Follows the trust topic into one store. Use from one thread; ``run`` is its loop.

    ``rejected`` counts refused statements by kind (REJECTION_KINDS), ``applied`` the
    statements that changed the trust table and ``read`` every message read. ``caught_up``
    is set once the follower has read to the end of the topic as it was when it connected
    (the node starts following the catalog after that, or after a deadline).
    """

    role = "trust follower"

    def __init__(
        self,
        config: NodeConfig,
        store: StoreSource,
        *,
        ca_certificate: x509.Certificate | None = None,
        **options: Unpack[FollowerOptions],
    ) -> None:
        """Raises IdentityError when no CA certificate is given and ``config.keys`` names
        none or an unreadable one."""
        if ca_certificate is None:
            ca_certificate = verifying_ca_certificate(config, "trust statements")
        super().__init__(config, store, Topics(config.backbone.topic_prefix).trust, **options)
        self.ca_certificate = ca_certificate
        self.caught_up = threading.Event()
        self._trust: TrustStore | None = None

    @property
    def trust(self) -> TrustStore:
        """The TrustStore over this follower's connection; opening it may raise StoreError."""
        if self._trust is None:
            self._trust = TrustStore(self._conn, self.config.cluster, self.ca_certificate)
        return self._trust

    # -- applying ------------------------------------------------------------------------

    def _accept(self, arrival: Arrival) -> bool:
        """Verify and apply one trust message; True when the trust table changed.

        A refused message is counted, logged and quarantined, never raised. Raises
        StoreError when the store cannot be read or written.
        """
        raw = arrival.value or b""
        try:
            env, stmt = open_envelope(raw, backbone_pb2.TrustStatement)
        except BackboneError as exc:
            return self._reject(arrival, "", "undecodable", str(exc))
        if not env.signature:
            return self._reject(arrival, env.author, "unsigned", "trust statement is not signed")
        try:
            changed = self.trust.apply(raw)
        except SignatureInvalid as exc:
            return self._reject(arrival, env.author, "bad-signature", str(exc))
        except IdentityError as exc:
            kind = self._classify(env, stmt)
            return self._reject(arrival, env.author, kind, str(exc).removeprefix(f"{kind} "))
        except BackboneError as exc:  # open_envelope above accepted it; kept for safety
            return self._reject(arrival, env.author, "undecodable", str(exc))
        self.applied += changed
        if changed:
            body = stmt.member if stmt.WhichOneof("statement") == "member" else stmt.revocation
            log.info(
                "%s applied %s of %s (version %d)",
                self.what,
                stmt.WhichOneof("statement"),
                body.member,
                body.version,
            )
        return changed

    def _classify(self, env: backbone_pb2.Envelope, stmt: backbone_pb2.TrustStatement) -> str:
        """Why TrustStore refused a statement whose CA signature verified. Raises StoreError."""
        kind = stmt.WhichOneof("statement")
        if kind is None:
            return "invalid"
        body = stmt.member if kind == "member" else stmt.revocation
        if env.cluster != self.config.cluster or body.cluster != self.config.cluster:
            return "foreign-cluster"
        try:
            row = self._conn.execute(
                "SELECT version FROM trust WHERE member = ?", (body.member,)
            ).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read trust state: {exc}") from exc
        return "replayed" if row is not None and body.version < row[0] else "invalid"

    def _reject(self, arrival: Arrival, author: str, kind: str, detail: str) -> bool:
        self._quarantine(arrival, kind, author, f"{kind}: {detail}")
        return False

    def _read_to_end(self) -> None:
        self.caught_up.set()

    def close(self) -> None:
        """Close the backbone clients, and the store connection if this follower opened it."""
        self._trust = None
        super().close()
