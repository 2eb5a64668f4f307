"""Signatures on backbone envelopes: the canonical signing input, member and CA keys.

Members sign with Ed25519; the cluster CA signs trust statements with its ECDSA P-256 key
(verifiable with the CA certificate every member already holds). The signed bytes are the
canonical signing input below, never the protobuf encoding, so any implementation that can
hash and length-prefix can verify.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519

from allmende.errors import IdentityError
from allmende.v1 import backbone_pb2

__all__ = [
    "CA_AUTHOR",
    "CaSigner",
    "MemberSigner",
    "SignatureInvalid",
    "load_ed25519_private",
    "signing_input",
    "verify_ca",
    "verify_member",
    "write_private_key",
]

CA_AUTHOR = "@ca"
_DOMAIN = b"allmende-envelope-v1\x00"


class SignatureInvalid(IdentityError):
    """An envelope's signature is missing or does not verify with the author's key."""


def _field(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def signing_input(env: backbone_pb2.Envelope) -> bytes:
    """The bytes a signature covers (PROTOCOL.md, "Signatures").

    ``"allmende-envelope-v1" 0x00`` then, each as a 4-byte big-endian length and the UTF-8
    bytes: author, cluster, payload_type; then created_at as 8-byte big-endian seconds and
    4-byte big-endian nanos; then the 32-byte SHA-256 of the payload bytes as carried.
    """
    return b"".join(
        (
            _DOMAIN,
            _field(env.author.encode()),
            _field(env.cluster.encode()),
            _field(env.payload_type.encode()),
            struct.pack(">qi", env.created_at.seconds, env.created_at.nanos),
            hashlib.sha256(env.payload).digest(),
        )
    )


def write_private_key(path: Path, key: ed25519.Ed25519PrivateKey | x25519.X25519PrivateKey) -> None:
    """Write a private key as unencrypted PKCS#8 PEM readable by its owner only."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    path.chmod(0o600)


def load_ed25519_private(path: Path) -> ed25519.Ed25519PrivateKey:
    """Load a member's Ed25519 signing key; raises IdentityError naming the file."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), None)
    except (OSError, ValueError) as exc:
        raise IdentityError(f"cannot read signing key {path}: {exc}") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise IdentityError(f"{path} is not an Ed25519 private key")
    return key


class MemberSigner:
    """Signs envelopes as one member."""

    def __init__(self, member: str, key: ed25519.Ed25519PrivateKey) -> None:
        self.member = member
        self._key = key

    @classmethod
    def from_file(cls, member: str, path: Path) -> MemberSigner:
        return cls(member, load_ed25519_private(path))

    @property
    def public_key(self) -> bytes:
        return self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def sign(self, env: backbone_pb2.Envelope) -> None:
        """Set ``env.signature``; raises IdentityError if the envelope names another author."""
        if env.author != self.member:
            raise IdentityError(f"{self.member} cannot sign an envelope authored by {env.author!r}")
        env.signature = self._key.sign(signing_input(env))


class CaSigner:
    """Signs trust statements as the cluster CA (author ``@ca``) with the CA's EC key."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._key = key

    def sign(self, env: backbone_pb2.Envelope) -> None:
        if env.author != CA_AUTHOR:
            raise IdentityError(f"the CA signs only envelopes authored by {CA_AUTHOR}")
        env.signature = self._key.sign(signing_input(env), ec.ECDSA(hashes.SHA256()))


def verify_member(env: backbone_pb2.Envelope, public_key: bytes) -> None:
    """Raise SignatureInvalid unless ``env`` is signed by the Ed25519 ``public_key``."""
    if not env.signature:
        raise SignatureInvalid(f"message from {env.author!r} is not signed")
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(public_key).verify(
            env.signature, signing_input(env)
        )
    except (InvalidSignature, ValueError) as exc:
        raise SignatureInvalid(
            f"signature of message from {env.author!r} does not verify with its registered key"
        ) from exc


def verify_ca(env: backbone_pb2.Envelope, ca_certificate: x509.Certificate) -> None:
    """Raise SignatureInvalid unless ``env`` is authored and signed by the CA of the cert."""
    if env.author != CA_AUTHOR:
        raise SignatureInvalid(f"trust statements must come from {CA_AUTHOR}, not {env.author!r}")
    if not env.signature:
        raise SignatureInvalid("trust statement is not signed")
    public = ca_certificate.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise SignatureInvalid("the CA certificate does not hold an EC key")
    try:
        public.verify(env.signature, signing_input(env), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise SignatureInvalid("trust statement's signature does not verify with the CA") from exc
