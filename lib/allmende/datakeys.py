"""Data keys of non-open datasets: AES-256-GCM record batches and X25519 key wrapping.

A record batch of an ``internal`` or ``restricted`` dataset travels as AES-256-GCM
ciphertext under the dataset's 32-byte data key; the associated data binds it to the
batch's owner, dataset, key version and sequence range (PROTOCOL.md, "Encryption"). The
owner delivers the data key to each entitled member as a DataKeyGrant: X25519 between a
fresh ephemeral key and the recipient's registered public key, HKDF-SHA256 to a wrapping key,
AES-256-GCM over the data key with the grant's coordinates as associated data (PROTOCOL.md,
"Key wrapping"). Nothing here touches the store or the network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from google.protobuf.message import DecodeError

from allmende.errors import AllmendeError, IdentityError
from allmende.v1 import backbone_pb2

__all__ = [
    "KEY_SIZE",
    "NONCE_SIZE",
    "WRAP_INFO",
    "DataKey",
    "DataKeyError",
    "DecryptionFailed",
    "KeyUnavailable",
    "decrypt_changes",
    "encrypt_changes",
    "grant_aad",
    "load_encryption_key",
    "new_data_key",
    "public_bytes",
    "records_aad",
    "unwrap_grant",
    "wrap_grant",
]

KEY_SIZE = 32
"""Bytes of a data key (AES-256)."""
NONCE_SIZE = 12
"""Bytes of every AES-GCM nonce (random per encryption)."""
WRAP_INFO = b"allmende-key-wrap-v1"
"""HKDF ``info`` of the key-wrapping key."""
_RECORDS_DOMAIN = b"allmende-records-v1"
_GRANT_DOMAIN = b"allmende-key-grant-v1"


class DataKeyError(AllmendeError):
    """A data key, a grant or an encrypted batch is unusable."""

    reason = "DATA_KEY"


class DecryptionFailed(DataKeyError):
    """Ciphertext does not open: wrong key, altered bytes, or coordinates that do not match."""


class KeyUnavailable(DataKeyError):
    """We hold no data key of this version for the dataset: not granted (yet), or rotated away."""

    retriable = True

    def __init__(self, owner: str, dataset: str, key_version: int, why: str = "") -> None:
        self.owner = owner
        self.dataset = dataset
        self.key_version = key_version
        detail = why or "no grant addressed to us has arrived (not entitled, or not yet delivered)"
        super().__init__(
            f"no data key version {key_version} of {owner}/{dataset}: {detail}",
        )


@dataclass(frozen=True)
class DataKey:
    """One version of one dataset's data key."""

    owner: str
    dataset: str
    version: int
    key: bytes = field(repr=False)


def new_data_key() -> bytes:
    """32 random bytes from the operating system's CSPRNG."""
    return AESGCM.generate_key(bit_length=256)


def _check_key(key: bytes) -> None:
    if len(key) != KEY_SIZE:
        raise DataKeyError(f"a data key has {KEY_SIZE} bytes, not {len(key)}")


def records_aad(owner: str, dataset: str, key_version: int, first: int, last: int) -> bytes:
    """``allmende-records-v1 0x00 owner 0x00 dataset 0x00 key_version 0x00 first 0x00 last``.

    Names are UTF-8, numbers decimal ASCII without leading zeros.
    """
    parts = (
        owner.encode(),
        dataset.encode(),
        *(str(n).encode() for n in (key_version, first, last)),
    )
    return b"\x00".join((_RECORDS_DOMAIN, *parts))


def encrypt_changes(
    key: DataKey, batch: backbone_pb2.RecordBatch, changes: backbone_pb2.RecordChanges
) -> None:
    """Set ``batch.encrypted`` to ``changes`` under ``key``, bound to the batch's header.

    ``batch.owner``, ``dataset``, ``first_sequence`` and ``last_sequence`` must be set first:
    they are the associated data. Raises DataKeyError when the key is not for this dataset.
    """
    _check_key(key.key)
    if (key.owner, key.dataset) != (batch.owner, batch.dataset):
        raise DataKeyError(
            f"data key of {key.owner}/{key.dataset} cannot encrypt {batch.owner}/{batch.dataset}"
        )
    nonce = os.urandom(NONCE_SIZE)
    aad = records_aad(
        batch.owner, batch.dataset, key.version, batch.first_sequence, batch.last_sequence
    )
    plaintext = changes.SerializeToString(deterministic=True)
    batch.encrypted.CopyFrom(
        backbone_pb2.EncryptedChanges(
            key_version=key.version,
            nonce=nonce,
            ciphertext=AESGCM(key.key).encrypt(nonce, plaintext, aad),
        )
    )


def decrypt_changes(key: bytes, batch: backbone_pb2.RecordBatch) -> backbone_pb2.RecordChanges:
    """The changes of an encrypted ``batch``, opened with the 32-byte data ``key``.

    Raises DecryptionFailed when the key is wrong or the batch (ciphertext, nonce, header)
    was altered; DataKeyError when the batch is not encrypted.
    """
    _check_key(key)
    if batch.WhichOneof("body") != "encrypted":
        raise DataKeyError(f"batch of {batch.owner}/{batch.dataset} is not encrypted")
    enc = batch.encrypted
    aad = records_aad(
        batch.owner, batch.dataset, enc.key_version, batch.first_sequence, batch.last_sequence
    )
    where = f"batch {batch.first_sequence}-{batch.last_sequence} of {batch.owner}/{batch.dataset}"
    if len(enc.nonce) != NONCE_SIZE:
        raise DecryptionFailed(f"{where}: nonce of {len(enc.nonce)} bytes, not {NONCE_SIZE}")
    try:
        plaintext = AESGCM(key).decrypt(enc.nonce, enc.ciphertext, aad)
    except InvalidTag as exc:
        raise DecryptionFailed(
            f"{where} does not decrypt with data key version {enc.key_version}: "
            "wrong key or altered message"
        ) from exc
    changes = backbone_pb2.RecordChanges()
    try:
        changes.ParseFromString(plaintext)
    except DecodeError as exc:
        raise DecryptionFailed(f"{where}: decrypted body is not RecordChanges") from exc
    return changes


# -- key wrapping ---------------------------------------------------------------------------


def public_bytes(key: x25519.X25519PrivateKey) -> bytes:
    """The raw 32-byte X25519 public key of ``key``."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_encryption_key(path: Path) -> x25519.X25519PrivateKey:
    """Load a member's X25519 private key (PKCS#8 PEM); raises IdentityError naming the file."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), None)
    except (OSError, ValueError) as exc:
        raise IdentityError(f"cannot read encryption key {path}: {exc}") from exc
    if not isinstance(key, x25519.X25519PrivateKey):
        raise IdentityError(f"{path} is not an X25519 private key")
    return key


def grant_aad(owner: str, dataset: str, key_version: int, recipient: str) -> bytes:
    """``allmende-key-grant-v1 0x00 owner 0x00 dataset 0x00 key_version 0x00 recipient``."""
    parts = (owner.encode(), dataset.encode(), str(key_version).encode(), recipient.encode())
    return b"\x00".join((_GRANT_DOMAIN, *parts))


def _wrapping_key(shared: bytes, ephemeral_public: bytes, recipient_public: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_SIZE,
        salt=ephemeral_public + recipient_public,
        info=WRAP_INFO,
    ).derive(shared)


def wrap_grant(key: DataKey, recipient: str, recipient_public: bytes) -> backbone_pb2.DataKeyGrant:
    """A DataKeyGrant delivering ``key`` to ``recipient`` (its raw X25519 public key).

    Raises DataKeyError when the public key is not 32 bytes or is a low-order point.
    """
    _check_key(key.key)
    try:
        peer = x25519.X25519PublicKey.from_public_bytes(recipient_public)
    except ValueError as exc:
        raise DataKeyError(f"encryption public key of {recipient!r} is unusable: {exc}") from exc
    ephemeral = x25519.X25519PrivateKey.generate()
    eph_public = public_bytes(ephemeral)
    try:
        shared = ephemeral.exchange(peer)
    except ValueError as exc:  # an all-zero shared secret: a low-order point
        raise DataKeyError(f"encryption public key of {recipient!r} is unusable: {exc}") from exc
    nonce = os.urandom(NONCE_SIZE)
    wrapped = AESGCM(_wrapping_key(shared, eph_public, recipient_public)).encrypt(
        nonce, key.key, grant_aad(key.owner, key.dataset, key.version, recipient)
    )
    return backbone_pb2.DataKeyGrant(
        owner=key.owner,
        dataset=key.dataset,
        key_version=key.version,
        recipient=recipient,
        ephemeral_public_key=eph_public,
        nonce=nonce,
        wrapped_key=wrapped,
    )


def unwrap_grant(grant: backbone_pb2.DataKeyGrant, private: x25519.X25519PrivateKey) -> DataKey:
    """The data key a grant delivers, unwrapped with the recipient's X25519 private key.

    Raises DataKeyError for a revoked grant (it carries no key) and DecryptionFailed when
    the grant was wrapped for another key or any of its fields was altered.
    """
    where = (
        f"grant of {grant.owner}/{grant.dataset} version {grant.key_version} for {grant.recipient}"
    )
    if grant.revoked:
        raise DataKeyError(f"{where} is a revocation and carries no key")
    try:
        eph = x25519.X25519PublicKey.from_public_bytes(grant.ephemeral_public_key)
        shared = private.exchange(eph)
    except ValueError as exc:
        raise DecryptionFailed(f"{where}: unusable ephemeral public key: {exc}") from exc
    if len(grant.nonce) != NONCE_SIZE:
        raise DecryptionFailed(f"{where}: nonce of {len(grant.nonce)} bytes, not {NONCE_SIZE}")
    wrapping = _wrapping_key(shared, grant.ephemeral_public_key, public_bytes(private))
    try:
        key = AESGCM(wrapping).decrypt(
            grant.nonce,
            grant.wrapped_key,
            grant_aad(grant.owner, grant.dataset, grant.key_version, grant.recipient),
        )
    except InvalidTag as exc:
        raise DecryptionFailed(
            f"{where} does not open with our encryption key: wrapped for another key or altered"
        ) from exc
    if len(key) != KEY_SIZE:
        raise DecryptionFailed(f"{where} carries a key of {len(key)} bytes")
    return DataKey(grant.owner, grant.dataset, grant.key_version, key)
