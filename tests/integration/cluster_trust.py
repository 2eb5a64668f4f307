"""Puts the cluster CA's statements into towns' trust tables directly, as a trust follower would."""

from __future__ import annotations

from pathlib import Path

from allmende.backbone import seal
from allmende.ca import CertificateAuthority
from allmende.signing import CA_AUTHOR, CaSigner
from allmende.store import connect
from allmende.trust import TrustStore
from allmende.v1 import backbone_pb2


def member_statement(ca: CertificateAuthority, member: str) -> bytes:
    """The CA-signed MemberRecord of ``member`` as the CA's registry has it now."""
    entry = ca.registry()[member]
    record = backbone_pb2.MemberRecord(
        cluster=ca.cluster,
        member=member,
        signing_public_key=bytes.fromhex(entry["signing_public_key"]),
        encryption_public_key=bytes.fromhex(entry["encryption_public_key"]),
        certificate_serials=entry["certificate_serials"],
        version=entry["version"],
    )
    stmt = backbone_pb2.TrustStatement(member=record)
    return seal(CA_AUTHOR, ca.cluster, stmt, signer=CaSigner(ca._key))


def revocation_statement(ca: CertificateAuthority, member: str, reason: str) -> bytes:
    """A CA-signed Revocation of ``member``, one version above its registry entry."""
    revocation = backbone_pb2.Revocation(
        cluster=ca.cluster,
        member=member,
        reason=reason,
        version=ca.registry()[member]["version"] + 1,
    )
    stmt = backbone_pb2.TrustStatement(revocation=revocation)
    return seal(CA_AUTHOR, ca.cluster, stmt, signer=CaSigner(ca._key))


def apply_statements(store: Path, ca: CertificateAuthority, statements: list[bytes]) -> None:
    """Apply ``statements`` to the trust table of the store at ``store``."""
    conn = connect(store)
    try:
        trust = TrustStore(conn, ca.cluster, ca.cert)
        for raw in statements:
            trust.apply(raw)
    finally:
        conn.close()
