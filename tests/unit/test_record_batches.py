"""Record batches: up to 500 changes, one signature, plaintext only for open datasets."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from google.protobuf.timestamp_pb2 import Timestamp

from allmende.backbone import Topics, open_envelope
from allmende.datakeys import DataKey, DataKeyError, decrypt_changes, new_data_key
from allmende.errors import IdentityError
from allmende.signing import MemberSigner, SignatureInvalid, verify_member
from allmende.v1 import backbone_pb2, catalog_pb2, query_pb2
from allmende_node.record_batches import BATCH_SIZE, batch_messages, build_batches

OWNER = "kaiserslautern"


def descriptor(classification: catalog_pb2.Classification) -> catalog_pb2.DatasetDescriptor:
    return catalog_pb2.DatasetDescriptor(
        owner=OWNER, id="parking-permits", version=7, classification=classification
    )


def changes(n: int, start: int = 100) -> list[backbone_pb2.RecordChange]:
    return [
        backbone_pb2.RecordChange(
            owner=OWNER,
            dataset="parking-permits",
            kind=query_pb2.CHANGE_KIND_UPSERT,
            record_id=f"KL-{i:04d}",
            json=f'{{"holder":"Holder {i}"}}',
            sequence=start + i,
            dataset_version=7,
        )
        for i in range(n)
    ]


def messages(classification: catalog_pb2.Classification, n: int, key: DataKey | None = None):
    signer = MemberSigner(OWNER, ed25519.Ed25519PrivateKey.generate())
    created = Timestamp(seconds=1_795_000_000)
    out = batch_messages(
        OWNER,
        "suedwest",
        Topics("t"),
        descriptor(classification),
        changes(n),
        signer=signer,
        data_key=key,
        created_at=created,
    )
    return signer, out


def test_an_open_import_goes_out_in_signed_plaintext_batches_of_500() -> None:
    signer, out = messages(catalog_pb2.CLASSIFICATION_OPEN, 2 * BATCH_SIZE + 1)
    assert BATCH_SIZE == 500
    assert [(m.topic, m.key) for m in out] == [
        ("t.records.kaiserslautern.parking-permits", b"parking-permits")
    ] * 3
    batches = []
    for m in out:
        env, batch = open_envelope(m.value, backbone_pb2.RecordBatch)
        verify_member(env, signer.public_key)  # one signature covers the whole batch
        assert (env.author, env.cluster) == (OWNER, "suedwest")
        batches.append(batch)
    assert [len(b.plaintext.changes) for b in batches] == [500, 500, 1]
    assert [(b.first_sequence, b.last_sequence) for b in batches] == [
        (100, 599),
        (600, 1099),
        (1100, 1100),
    ]
    assert {b.dataset_version for b in batches} == {7}
    assert [c for b in batches for c in b.plaintext.changes] == changes(1001)


def test_a_restricted_import_is_encrypted_under_the_current_key() -> None:
    key = DataKey(OWNER, "parking-permits", 4, new_data_key())
    signer, out = messages(catalog_pb2.CLASSIFICATION_RESTRICTED, 3, key)
    [message] = out
    assert b"Holder" not in message.value and b"KL-0001" not in message.value
    env, batch = open_envelope(message.value, backbone_pb2.RecordBatch)
    verify_member(env, signer.public_key)
    assert batch.WhichOneof("body") == "encrypted"
    assert batch.encrypted.key_version == 4
    assert (batch.first_sequence, batch.last_sequence) == (100, 102)
    assert list(decrypt_changes(key.key, batch).changes) == changes(3)


def test_the_signature_covers_the_ciphertext() -> None:
    key = DataKey(OWNER, "parking-permits", 1, new_data_key())
    signer, [message] = messages(catalog_pb2.CLASSIFICATION_INTERNAL, 2, key)
    env, batch = open_envelope(message.value, backbone_pb2.RecordBatch)
    blob = bytearray(batch.encrypted.ciphertext)
    blob[0] ^= 1
    batch.encrypted.ciphertext = bytes(blob)
    env.payload = batch.SerializeToString()
    with pytest.raises(SignatureInvalid):
        verify_member(env, signer.public_key)


def test_non_open_datasets_need_a_data_key_of_their_own() -> None:
    with pytest.raises(DataKeyError, match="need a data key"):
        build_batches(OWNER, descriptor(catalog_pb2.CLASSIFICATION_INTERNAL), changes(1), None)
    other = DataKey(OWNER, "other", 1, new_data_key())
    with pytest.raises(DataKeyError, match="cannot encrypt"):
        build_batches(OWNER, descriptor(catalog_pb2.CLASSIFICATION_INTERNAL), changes(1), other)


def test_no_changes_no_batches_and_order_is_checked() -> None:
    assert build_batches(OWNER, descriptor(catalog_pb2.CLASSIFICATION_OPEN), [], None) == []
    shuffled = list(reversed(changes(2)))
    with pytest.raises(ValueError, match="sequence order"):
        build_batches(OWNER, descriptor(catalog_pb2.CLASSIFICATION_OPEN), shuffled, None)


def test_a_signer_of_another_member_is_refused() -> None:
    with pytest.raises(IdentityError):
        batch_messages(
            OWNER,
            "suedwest",
            Topics("t"),
            descriptor(catalog_pb2.CLASSIFICATION_OPEN),
            changes(1),
            signer=MemberSigner("pirmasens", ed25519.Ed25519PrivateKey.generate()),
            data_key=None,
            created_at=Timestamp(seconds=1),
        )
