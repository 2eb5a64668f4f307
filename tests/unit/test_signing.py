"""Envelope signatures: canonical input, member Ed25519, CA ECDSA, and what breaks them."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from allmende.backbone import open_envelope, seal
from allmende.ca import CertificateAuthority
from allmende.errors import IdentityError
from allmende.signing import (
    CA_AUTHOR,
    CaSigner,
    MemberSigner,
    SignatureInvalid,
    signing_input,
    verify_ca,
    verify_member,
)
from allmende.v1 import backbone_pb2, catalog_pb2


def entry() -> backbone_pb2.CatalogEntry:
    return backbone_pb2.CatalogEntry(
        dataset=catalog_pb2.DatasetDescriptor(owner="pirmasens", id="x")
    )


def test_member_signature_verifies_and_detects_tampering() -> None:
    signer = MemberSigner("pirmasens", ed25519.Ed25519PrivateKey.generate())
    raw = seal("pirmasens", "suedwest", entry(), signer=signer)
    env, _ = open_envelope(raw, backbone_pb2.CatalogEntry)
    verify_member(env, signer.public_key)
    for field, value in (("author", "kaiserslautern"), ("cluster", "other"), ("payload", b"x")):
        forged = backbone_pb2.Envelope()
        forged.CopyFrom(env)
        setattr(forged, field, value)
        with pytest.raises(SignatureInvalid):
            verify_member(forged, signer.public_key)
    other = MemberSigner("pirmasens", ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(SignatureInvalid):
        verify_member(env, other.public_key)
    unsigned, _ = open_envelope(seal("pirmasens", "suedwest", entry()), backbone_pb2.CatalogEntry)
    with pytest.raises(SignatureInvalid, match="not signed"):
        verify_member(unsigned, signer.public_key)
    with pytest.raises(IdentityError):
        seal("kaiserslautern", "suedwest", entry(), signer=signer)


def test_signing_input_is_length_prefixed_and_stable() -> None:
    env = backbone_pb2.Envelope(author="ab", cluster="c", payload_type="t", payload=b"p")
    env.created_at.seconds = 1
    shifted = backbone_pb2.Envelope(author="a", cluster="bc", payload_type="t", payload=b"p")
    shifted.created_at.seconds = 1
    assert signing_input(env) != signing_input(shifted)
    assert signing_input(env).startswith(b"allmende-envelope-v1\x00\x00\x00\x00\x02ab")


def test_ca_signature_verifies_with_the_ca_certificate(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", "suedwest")
    rogue = CertificateAuthority.init(tmp_path / "rogue", "suedwest")
    stmt = backbone_pb2.TrustStatement(
        member=backbone_pb2.MemberRecord(cluster="suedwest", member="x")
    )
    raw = seal(CA_AUTHOR, "suedwest", stmt, signer=CaSigner(ca._key))
    env, _ = open_envelope(raw, backbone_pb2.TrustStatement)
    verify_ca(env, ca.cert)
    with pytest.raises(SignatureInvalid):
        verify_ca(env, rogue.cert)


def test_issue_writes_member_keys_and_registry(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", "suedwest")
    issued = ca.issue(tmp_path / "certs", "pirmasens")
    assert issued.signing_key is not None and issued.encryption_key is not None
    signer = MemberSigner.from_file("pirmasens", issued.signing_key)
    entry_ = ca.registry()["pirmasens"]
    assert entry_["signing_public_key"] == signer.public_key.hex()
    assert issued.serial in entry_["certificate_serials"]
    svc = ca.issue(tmp_path / "certs", "pirmasens", "dash")
    assert svc.signing_key is None
    assert svc.serial in ca.registry()["pirmasens"]["certificate_serials"]
