"""Data keys: AES-256-GCM record batches and X25519 key wrapping, and what breaks them."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from allmende.datakeys import (
    KEY_SIZE,
    NONCE_SIZE,
    DataKey,
    DataKeyError,
    DecryptionFailed,
    KeyUnavailable,
    decrypt_changes,
    encrypt_changes,
    grant_aad,
    load_encryption_key,
    new_data_key,
    public_bytes,
    records_aad,
    unwrap_grant,
    wrap_grant,
)
from allmende.errors import AllmendeError, IdentityError
from allmende.signing import write_private_key
from allmende.v1 import backbone_pb2

OWNER, DATASET = "kaiserslautern", "parking-permits"
REPO = Path(__file__).resolve().parents[2]


def changes() -> backbone_pb2.RecordChanges:
    return backbone_pb2.RecordChanges(
        changes=[
            backbone_pb2.RecordChange(
                owner=OWNER,
                dataset=DATASET,
                record_id=f"KL-{i:03d}",
                json=f'{{"holder":"Holder {i}","plate":"KL-AB {i}"}}',
                sequence=10 + i,
            )
            for i in range(3)
        ]
    )


def encrypted(key: DataKey) -> backbone_pb2.RecordBatch:
    batch = backbone_pb2.RecordBatch(
        owner=OWNER, dataset=DATASET, first_sequence=10, last_sequence=12, dataset_version=4
    )
    encrypt_changes(key, batch, changes())
    return batch


def data_key(version: int = 1) -> DataKey:
    return DataKey(OWNER, DATASET, version, new_data_key())


def test_batch_round_trip_and_ciphertext_hides_the_values() -> None:
    key = data_key(3)
    batch = encrypted(key)
    assert batch.WhichOneof("body") == "encrypted"
    assert batch.encrypted.key_version == 3
    assert len(batch.encrypted.nonce) == NONCE_SIZE
    wire = batch.SerializeToString()
    assert b"Holder" not in wire and b"KL-AB" not in wire and b"KL-000" not in wire
    assert decrypt_changes(key.key, batch) == changes()
    # A fresh nonce each time: the same changes never give the same ciphertext.
    assert encrypted(key).encrypted.ciphertext != batch.encrypted.ciphertext
    assert repr(key).find(key.key.hex()) == -1  # the key stays out of logs


def test_associated_data_is_exactly_as_documented() -> None:
    # The example of PROTOCOL.md, "Encryption".
    assert (
        records_aad(OWNER, DATASET, 2, 101, 112)
        == b"allmende-records-v1\x00kaiserslautern\x00parking-permits\x002\x00101\x00112"
    )
    assert grant_aad("ka", "ds", 2, "ps") == b"allmende-key-grant-v1\x00ka\x00ds\x002\x00ps"
    assert "parking-permits\\x002\\x00101" in (REPO / "PROTOCOL.md").read_text("utf-8")


def test_a_batch_encrypted_by_the_protocol_text_decrypts() -> None:
    """An independent encryption, step by step as PROTOCOL.md describes it."""
    key, nonce = new_data_key(), bytes(range(12))
    aad = b"\x00".join(
        [b"allmende-records-v1", OWNER.encode(), DATASET.encode(), b"5", b"10", b"12"]
    )
    batch = backbone_pb2.RecordBatch(
        owner=OWNER, dataset=DATASET, first_sequence=10, last_sequence=12
    )
    batch.encrypted.key_version = 5
    batch.encrypted.nonce = nonce
    batch.encrypted.ciphertext = AESGCM(key).encrypt(nonce, changes().SerializeToString(), aad)
    assert decrypt_changes(key, batch) == changes()


def test_a_grant_wrapped_by_the_protocol_text_unwraps() -> None:
    """An independent key wrapping, step by step as PROTOCOL.md describes it."""
    recipient = x25519.X25519PrivateKey.generate()
    pk_r = public_bytes(recipient)
    esk = x25519.X25519PrivateKey.generate()
    epk = public_bytes(esk)
    shared = esk.exchange(x25519.X25519PublicKey.from_public_bytes(pk_r))
    wrapping = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=epk + pk_r, info=b"allmende-key-wrap-v1"
    ).derive(shared)
    data, nonce = new_data_key(), b"\x07" * 12
    aad = b"allmende-key-grant-v1\x00" + b"\x00".join(
        [OWNER.encode(), DATASET.encode(), b"3", b"pirmasens"]
    )
    grant = backbone_pb2.DataKeyGrant(
        owner=OWNER,
        dataset=DATASET,
        key_version=3,
        recipient="pirmasens",
        ephemeral_public_key=epk,
        nonce=nonce,
        wrapped_key=AESGCM(wrapping).encrypt(nonce, data, aad),
    )
    assert len(grant.wrapped_key) == 48
    assert unwrap_grant(grant, recipient) == DataKey(OWNER, DATASET, 3, data)


def test_wrong_key_or_altered_batch_does_not_decrypt() -> None:
    key = data_key()
    batch = encrypted(key)
    with pytest.raises(DecryptionFailed, match="wrong key or altered"):
        decrypt_changes(new_data_key(), batch)
    for field, value in (
        ("owner", "pirmasens"),
        ("dataset", "other"),
        ("first_sequence", 9),
        ("last_sequence", 13),
    ):
        altered = backbone_pb2.RecordBatch()
        altered.CopyFrom(batch)
        setattr(altered, field, value)
        with pytest.raises(DecryptionFailed):
            decrypt_changes(key.key, altered)
    for field in ("key_version", "nonce", "ciphertext"):
        altered = backbone_pb2.RecordBatch()
        altered.CopyFrom(batch)
        enc = altered.encrypted
        if field == "key_version":
            enc.key_version = 2
        else:
            blob = bytearray(getattr(enc, field))
            blob[0] ^= 1
            setattr(enc, field, bytes(blob))
        with pytest.raises(DecryptionFailed):
            decrypt_changes(key.key, altered)
    short = backbone_pb2.RecordBatch()
    short.CopyFrom(batch)
    short.encrypted.nonce = b"\x00" * 8
    with pytest.raises(DecryptionFailed, match="nonce"):
        decrypt_changes(key.key, short)


def test_bad_keys_and_plaintext_batches_are_refused() -> None:
    plain = backbone_pb2.RecordBatch(owner=OWNER, dataset=DATASET, plaintext=changes())
    with pytest.raises(DataKeyError, match="not encrypted"):
        decrypt_changes(new_data_key(), plain)
    with pytest.raises(DataKeyError, match="32 bytes"):
        decrypt_changes(b"short", encrypted(data_key()))
    with pytest.raises(DataKeyError, match="cannot encrypt"):
        encrypt_changes(
            DataKey(OWNER, "other", 1, new_data_key()),
            backbone_pb2.RecordBatch(owner=OWNER, dataset=DATASET),
            changes(),
        )
    assert len(new_data_key()) == KEY_SIZE
    assert new_data_key() != new_data_key()


def test_grant_round_trip_for_the_recipient_only() -> None:
    key = data_key(2)
    pirmasens, other = x25519.X25519PrivateKey.generate(), x25519.X25519PrivateKey.generate()
    grant = wrap_grant(key, "pirmasens", public_bytes(pirmasens))
    assert (grant.owner, grant.dataset, grant.key_version, grant.recipient) == (
        OWNER,
        DATASET,
        2,
        "pirmasens",
    )
    assert key.key not in grant.SerializeToString()
    assert unwrap_grant(grant, pirmasens) == key
    with pytest.raises(DecryptionFailed, match="another key or altered"):
        unwrap_grant(grant, other)
    # Each grant has its own ephemeral key: two grants of one key share nothing.
    again = wrap_grant(key, "pirmasens", public_bytes(pirmasens))
    assert again.ephemeral_public_key != grant.ephemeral_public_key
    assert again.wrapped_key != grant.wrapped_key


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("owner", "pirmasens"),
        ("dataset", "other"),
        ("key_version", 3),
        ("recipient", "sankt-wendel"),
        ("ephemeral_public_key", None),
        ("nonce", None),
        ("wrapped_key", None),
    ],
)
def test_an_altered_grant_does_not_unwrap(field: str, value: object) -> None:
    private = x25519.X25519PrivateKey.generate()
    grant = wrap_grant(data_key(2), "pirmasens", public_bytes(private))
    if value is None:
        blob = bytearray(getattr(grant, field))
        blob[-1] ^= 1
        value = bytes(blob)
    setattr(grant, field, value)
    with pytest.raises(DecryptionFailed):
        unwrap_grant(grant, private)


def test_revoked_grants_and_unusable_public_keys() -> None:
    private = x25519.X25519PrivateKey.generate()
    revoked = backbone_pb2.DataKeyGrant(
        owner=OWNER, dataset=DATASET, key_version=2, recipient="pirmasens", revoked=True
    )
    with pytest.raises(DataKeyError, match="revocation"):
        unwrap_grant(revoked, private)
    with pytest.raises(DataKeyError, match="unusable"):
        wrap_grant(data_key(), "pirmasens", b"\x01" * 31)
    with pytest.raises(DataKeyError, match="unusable"):
        wrap_grant(data_key(), "pirmasens", b"\x00" * 32)  # a low-order point


def test_key_unavailable_names_owner_dataset_and_version() -> None:
    err = KeyUnavailable(OWNER, DATASET, 3)
    assert isinstance(err, AllmendeError) and err.retriable
    assert (err.owner, err.dataset, err.key_version) == (OWNER, DATASET, 3)
    assert "version 3 of kaiserslautern/parking-permits" in str(err)


def test_load_encryption_key(tmp_path: Path) -> None:
    private = x25519.X25519PrivateKey.generate()
    write_private_key(tmp_path / "enc.pem", private)
    assert public_bytes(load_encryption_key(tmp_path / "enc.pem")) == public_bytes(private)
    write_private_key(tmp_path / "sign.pem", ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(IdentityError, match="not an X25519"):
        load_encryption_key(tmp_path / "sign.pem")
    with pytest.raises(IdentityError, match="cannot read"):
        load_encryption_key(tmp_path / "missing.pem")
