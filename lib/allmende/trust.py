"""The cluster's trust state: the CA's verified statements about members, kept in the store.

A node follows ``<prefix>.trust`` and applies each CA-signed TrustStatement here; the gateway
and the node's own followers read the result from the same store table. Per member only the
statement with the highest version counts: a MemberRecord registers (or re-admits) the member
with its public keys, a Revocation cuts it off.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import dataclass

from cryptography import x509

from allmende.backbone import open_envelope
from allmende.errors import IdentityError, StoreError
from allmende.signing import verify_ca
from allmende.v1 import backbone_pb2

__all__ = ["MemberKeys", "TrustStore", "UnknownMember"]


class UnknownMember(IdentityError):
    """The CA has made no statement about this member (or revoked it)."""


@dataclass(frozen=True)
class MemberKeys:
    """A member as the CA registered it; ``revoked`` holds the reason when cut off."""

    cluster: str
    member: str
    version: int
    signing_public_key: bytes
    encryption_public_key: bytes
    certificate_serials: tuple[str, ...]
    revoked: str = ""


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class TrustStore:
    """Applies and answers trust statements over one SQLite connection of the town's store."""

    def __init__(
        self, conn: sqlite3.Connection, cluster: str, ca_certificate: x509.Certificate
    ) -> None:
        self.conn = conn
        self.cluster = cluster
        self.ca_certificate = ca_certificate

    def apply(self, raw: bytes) -> bool:
        """Verify and apply one trust message; True if it changed the state.

        Raises SignatureInvalid (not signed by our CA), BackboneError (not a TrustStatement),
        IdentityError (for another cluster, or an older version than already applied — a
        replay), StoreError. An equal version is accepted silently (re-publication).
        """
        env, stmt = open_envelope(raw, backbone_pb2.TrustStatement)
        verify_ca(env, self.ca_certificate)
        kind = stmt.WhichOneof("statement")
        body = stmt.member if kind == "member" else stmt.revocation
        if kind is None:
            raise IdentityError("trust statement says nothing")
        if body.cluster != self.cluster or env.cluster != self.cluster:
            raise IdentityError(
                f"trust statement for cluster {body.cluster!r}, we are {self.cluster!r}"
            )
        try:
            row = self.conn.execute(
                "SELECT version FROM trust WHERE member = ?", (body.member,)
            ).fetchone()
            if row is not None and body.version < row[0]:
                raise IdentityError(
                    f"replayed trust statement: version {body.version} of {body.member} is older "
                    f"than the applied version {row[0]}"
                )
            if row is not None and body.version == row[0]:
                return False
            with self.conn:
                self.conn.execute(
                    "INSERT INTO trust (member, cluster, version, revoked, reason, statement, applied_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (member) DO UPDATE SET"
                    " cluster = excluded.cluster, version = excluded.version,"
                    " revoked = excluded.revoked, reason = excluded.reason,"
                    " statement = excluded.statement, applied_at = excluded.applied_at",
                    (
                        body.member,
                        body.cluster,
                        body.version,
                        int(kind == "revocation"),
                        stmt.revocation.reason if kind == "revocation" else "",
                        raw,
                        _now(),
                    ),
                )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot record trust statement: {exc}") from exc
        return True

    def member(self, name: str) -> MemberKeys:
        """The member's registered keys; raises UnknownMember if the CA never registered it.

        A revoked member is returned with ``revoked`` set and the keys of its last record.
        """
        try:
            row = self.conn.execute(
                "SELECT statement, revoked, reason FROM trust WHERE member = ?", (name,)
            ).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read trust state: {exc}") from exc
        if row is None:
            raise UnknownMember(f"the cluster CA has not registered member {name!r}")
        _, stmt = open_envelope(row[0], backbone_pb2.TrustStatement)
        if stmt.WhichOneof("statement") == "member":
            rec = stmt.member
            return MemberKeys(
                rec.cluster,
                rec.member,
                rec.version,
                rec.signing_public_key,
                rec.encryption_public_key,
                tuple(rec.certificate_serials),
            )
        rev = stmt.revocation
        return MemberKeys(
            rev.cluster, rev.member, rev.version, b"", b"", (), revoked=rev.reason or "revoked"
        )

    def signing_key(self, name: str) -> bytes:
        """The Ed25519 key that verifies ``name``'s messages; UnknownMember if none or revoked."""
        keys = self.member(name)
        if keys.revoked:
            raise UnknownMember(f"member {name!r} is revoked: {keys.revoked}")
        return keys.signing_public_key

    def revoked(self) -> dict[str, str]:
        """Every revoked member with the reason."""
        try:
            return dict(self.conn.execute("SELECT member, reason FROM trust WHERE revoked = 1"))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read trust state: {exc}") from exc

    def members(self) -> list[MemberKeys]:
        """Every member the CA registered and did not revoke."""
        names = [
            r[0]
            for r in self.conn.execute("SELECT member FROM trust WHERE revoked = 0 ORDER BY member")
        ]
        return [self.member(n) for n in names]
