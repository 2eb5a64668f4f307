"""The replica follower's checks and its applying, without a broker: batches handed to ``apply``."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from allmende.backbone import seal
from allmende.ca import CertificateAuthority
from allmende.config import BackboneConfig, KeyFiles, NodeConfig
from allmende.datakeys import DataKey, encrypt_changes, new_data_key, public_bytes, wrap_grant
from allmende.signing import CA_AUTHOR, CaSigner, MemberSigner
from allmende.store import connect
from allmende.trust import TrustStore
from allmende.v1 import backbone_pb2, query_pb2
from allmende_node import ReplicaFollower
from allmende_node.quarantine import Quarantine
from allmende_node.replica_follower import replica_states

CLUSTER = "suedwest"
KA, DS = "kaiserslautern", "parking-permits"
SIGNERS = {
    m: MemberSigner(m, ed25519.Ed25519PrivateKey.generate())
    for m in (KA, "pirmasens", "sankt-wendel", "zweibruecken")
}
UPSERT, DELETE = query_pb2.CHANGE_KIND_UPSERT, query_pb2.CHANGE_KIND_DELETE


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path_factory.mktemp("ca"), CLUSTER)


def statement(ca: CertificateAuthority, member: str, revoked: str = "") -> bytes:
    """The CA's signed MemberRecord of ``member`` (version 1), or its Revocation (version 2)."""
    stmt = backbone_pb2.TrustStatement()
    if revoked:
        stmt.revocation.MergeFrom(
            backbone_pb2.Revocation(cluster=CLUSTER, member=member, reason=revoked, version=2)
        )
    else:
        stmt.member.MergeFrom(
            backbone_pb2.MemberRecord(
                cluster=CLUSTER, member=member, signing_public_key=SIGNERS[member].public_key
            )
        )
        stmt.member.version = 1
    return seal(CA_AUTHOR, CLUSTER, stmt, signer=CaSigner(ca._key))


def change(seq: int, rid: str, json: str = "", dataset: str = DS) -> backbone_pb2.RecordChange:
    return backbone_pb2.RecordChange(
        owner=KA,
        dataset=dataset,
        kind=UPSERT if json else DELETE,
        record_id=rid,
        json=json,
        sequence=seq,
        dataset_version=1,
    )


def batch(
    *changes: backbone_pb2.RecordChange,
    key: DataKey | None = None,
    author: str = KA,
    owner: str = KA,
    dataset: str = DS,
    cluster: str = CLUSTER,
    signer: MemberSigner | bool | None = True,
) -> bytes:
    """A sealed RecordBatch of ``changes``; encrypted under ``key`` when given."""
    b = backbone_pb2.RecordBatch(
        owner=owner,
        dataset=dataset,
        first_sequence=changes[0].sequence,
        last_sequence=changes[-1].sequence,
        dataset_version=1,
    )
    body = backbone_pb2.RecordChanges(changes=changes)
    if key is not None:
        encrypt_changes(key, b, body)
    else:
        b.plaintext.CopyFrom(body)
    chosen = SIGNERS.get(author) if signer is True else signer or None
    return seal(author, cluster, b, signer=chosen)


class Rig:
    def __init__(self, tmp_path: Path, ca: CertificateAuthority) -> None:
        self.config = NodeConfig(
            member="pirmasens",
            cluster=CLUSTER,
            store_path=tmp_path / "store.sqlite",
            backbone=BackboneConfig(bootstrap_servers=("127.0.0.1:9",), topic_prefix="t"),
            gateway_address="127.0.0.1:7444",
            keys=KeyFiles(tmp_path / "unused.pem", tmp_path / "unused.pem", ca.cert_path),
            replicas=((KA, DS),),
        )
        self.ca = ca
        self.conn = connect(self.config.store_path)
        self.now = [1000.0]
        self.private = x25519.X25519PrivateKey.generate()
        self.grants: list[bytes] = []  # what the keys topic would hold
        for member in (KA, "pirmasens", "sankt-wendel"):
            self.trust(statement(ca, member))
        self.trust(statement(ca, "sankt-wendel", revoked="key compromised"))
        self.follower = ReplicaFollower(
            self.config,
            self.conn,
            KA,
            DS,
            clock=lambda: self.now[0],
            encryption_key=self.private,
            grace_s=30.0,
            retry_s=1.0,
        )
        reader = self.follower.reader
        reader.sync_keys = lambda: sum(reader.apply_grant(g) for g in self.grants)

    def trust(self, raw: bytes) -> None:
        TrustStore(self.conn, CLUSTER, self.ca.cert).apply(raw)

    def grant(self, key: DataKey, revoked: bool = False) -> None:
        g = wrap_grant(key, "pirmasens", public_bytes(self.private))
        if revoked:
            g = backbone_pb2.DataKeyGrant(
                owner=KA, dataset=DS, key_version=key.version, recipient="pirmasens", revoked=True
            )
        self.grants.append(seal(KA, CLUSTER, g, signer=SIGNERS[KA]))

    def records(self) -> dict[str, str]:
        return dict(
            self.conn.execute("SELECT id, json FROM replica_records WHERE dataset = ?", (DS,))
        )

    def state(self) -> tuple[int, int, str]:
        [s] = replica_states(self.conn, self.config.replicas)
        return s.last_sequence, s.key_version, s.status

    def quarantined(self) -> list[tuple[str, str]]:
        return [(m.author, m.reason) for m in reversed(Quarantine(self.conn).newest(100))]


@pytest.fixture
def rig(tmp_path: Path, ca: CertificateAuthority) -> Iterator[Rig]:
    r = Rig(tmp_path, ca)
    yield r
    r.follower.close()
    r.conn.close()


def test_upserts_and_deletes_are_applied_in_order_with_the_state(rig: Rig) -> None:
    f = rig.follower
    assert rig.state() == (0, 0, "no batch yet")
    assert f.apply(batch(change(1, "a", '{"v":1}'), change(2, "b", '{"v":2}')))
    assert f.apply(batch(change(5, "a", '{"v":3}'), change(7, "b")))
    assert rig.records() == {"a": '{"v":3}'}
    assert rig.state() == (7, 0, "following")
    assert f.applied == 4 and f.rejected == {}


def test_changes_of_one_record_in_one_batch_apply_in_sequence_order(rig: Rig) -> None:
    f = rig.follower
    f.apply(batch(change(1, "a", '{"v":1}'), change(2, "b", '{"v":2}')))
    assert f.apply(batch(change(3, "a"), change(4, "a", '{"v":"back"}'), change(5, "b")))
    assert rig.records() == {"a": '{"v":"back"}'}


def test_a_partly_applied_batch_applies_only_its_new_changes(rig: Rig) -> None:
    f = rig.follower
    f.apply(batch(change(1, "a", '{"v":1}'), change(2, "b", '{"v":2}')))
    assert f.apply(batch(change(2, "b", '{"v":"not again"}'), change(3, "c", '{"v":3}')))
    assert rig.records() == {"a": '{"v":1}', "b": '{"v":2}', "c": '{"v":3}'}
    assert rig.state()[0] == 3 and f.applied == 3


def test_a_batch_not_newer_than_applied_is_a_replay(rig: Rig) -> None:
    f = rig.follower
    old = batch(change(1, "a", '{"v":1}'))
    f.apply(old)
    f.apply(batch(change(4, "a")))
    assert not f.apply(old)
    assert rig.records() == {} and f.rejected == {"replayed": 1}
    assert rig.quarantined() == [
        (KA, f"replayed: batch 1-1 of {KA}/{DS} is not newer than applied sequence 4")
    ]


def altered(raw: bytes) -> bytes:
    i = raw.index(b"echt")
    return raw[:i] + b"fake" + raw[i + 4 :]


@pytest.mark.parametrize(
    ("raw", "kind", "author", "reason"),
    [
        (batch(change(9, "x", '"echt"'), signer=None), "unsigned", KA, "is not signed"),
        (
            batch(
                change(9, "x", '"echt"'),
                signer=MemberSigner(KA, ed25519.Ed25519PrivateKey.generate()),
            ),
            "bad-signature",
            KA,
            "does not verify with kaiserslautern's registered key",
        ),
        (altered(batch(change(9, "x", '"echt"'))), "bad-signature", KA, "forged, or altered"),
        (
            batch(change(9, "x", '"echt"'), author="pirmasens"),
            "author-not-owner",
            "pirmasens",
            "is authored by 'pirmasens', not by its owner",
        ),
        (
            batch(change(9, "x", '"echt"'), author="sankt-wendel"),
            "revoked-member",
            "sankt-wendel",
            "signed by revoked member sankt-wendel (key compromised)",
        ),
        (batch(change(9, "x", '"echt"'), cluster="nordost"), "foreign-cluster", KA, "nordost"),
        (
            batch(change(9, "x", '"echt"', dataset="parking-sites"), dataset="parking-sites"),
            "wrong-topic",
            KA,
            "arrived on the topic of kaiserslautern/parking-permits",
        ),
        (
            batch(change(9, "x", '"echt"', dataset="parking-sites")),
            "invalid-batch",
            KA,
            "holds change 9 of kaiserslautern/parking-sites",
        ),
        (b"\xff\x00 not protobuf", "undecodable", "", ""),
    ],
)
def test_refused_batches_are_quarantined_with_their_reason(
    rig: Rig, raw: bytes, kind: str, author: str, reason: str
) -> None:
    f = rig.follower
    assert not f.apply(raw, partition=0, offset=17)
    assert f.rejected == {kind: 1} and rig.records() == {}
    [(got_author, got_reason)] = rig.quarantined()
    assert got_author == author and got_reason.startswith(f"{kind}: ")
    assert reason in got_reason
    assert f.apply(batch(change(10, "y", '{"ok":true}')))  # honest traffic goes on


def test_an_encrypted_batch_waits_for_its_key_then_applies(rig: Rig) -> None:
    f, key = rig.follower, DataKey(KA, DS, 1, new_data_key())
    sealed = batch(change(1, "a", '{"holder":"Erika"}'), key=key)
    assert not f.apply(sealed)  # no grant yet: waits, is not quarantined
    assert f.waiting == "key" and rig.state() == (0, 0, "waiting-for-key")
    rig.grant(key)
    assert f.apply(sealed)
    assert rig.records() == {"a": '{"holder":"Erika"}'}
    assert rig.state() == (1, 1, "following") and f.waiting is None
    assert f.rejected == {}


def test_a_batch_that_does_not_decrypt_is_quarantined(rig: Rig) -> None:
    f = rig.follower
    rig.grant(DataKey(KA, DS, 1, new_data_key()))
    assert not f.apply(batch(change(1, "a", '{"v":1}'), key=DataKey(KA, DS, 1, new_data_key())))
    assert f.rejected == {"undecryptable": 1}
    assert rig.quarantined()[0][1].startswith("undecryptable: batch 1-1")


def test_rotated_away_stops_the_replica_without_quarantine(rig: Rig) -> None:
    f, v1, v2 = rig.follower, DataKey(KA, DS, 1, new_data_key()), DataKey(KA, DS, 2, new_data_key())
    rig.grant(v1)
    assert f.apply(batch(change(1, "a", '{"v":1}'), key=v1))
    rig.grant(v2, revoked=True)
    assert not f.apply(batch(change(2, "a", '{"v":2}'), key=v2))
    assert f.waiting == "rotated-away" and rig.state() == (1, 1, "rotated-away")
    assert rig.records() == {"a": '{"v":1}'} and f.rejected == {}


def test_an_unknown_owner_waits_for_trust_then_is_quarantined(
    rig: Rig, ca: CertificateAuthority
) -> None:
    f = rig.follower
    rig.conn.execute("DELETE FROM trust WHERE member = ?", (KA,))
    rig.conn.commit()
    raw = batch(change(1, "a", '{"v":1}'))
    assert not f.apply(raw)
    assert f.waiting == "trust" and rig.state()[2] == "waiting-for-trust"
    rig.trust(statement(ca, KA))
    assert f.apply(raw)  # trust arrived within the grace period

    other = ReplicaFollower(
        rig.config,
        rig.conn,
        "zweibruecken",
        DS,
        clock=lambda: rig.now[0],
        encryption_key=rig.private,
    )
    try:
        raw = batch(change(1, "z", '{"v":1}'), author="zweibruecken", owner="zweibruecken")
        assert not other.apply(raw) and other.rejected == {}
        rig.now[0] += 31
        assert not other.apply(raw)
        assert other.rejected == {"unknown-member": 1}
    finally:
        other.close()
    assert rig.quarantined()[-1][1] == (
        "unknown-member: the cluster CA made no statement about zweibruecken within 30 s"
    )


def test_replica_states_list_configured_replicas_first(rig: Rig) -> None:
    rig.follower.apply(batch(change(3, "a", '{"v":1}')))
    rig.conn.execute(
        "INSERT INTO replica_state (owner, dataset, status, updated_at) VALUES (?, ?, ?, ?)",
        ("homburg", "trees", "following", "2026-01-01T00:00:00Z"),
    )
    rig.conn.commit()
    states = replica_states(rig.conn, [(KA, DS), ("pirmasens", "bus-stops")])
    assert [(s.owner, s.dataset, s.status, s.records, s.configured) for s in states] == [
        (KA, DS, "following", 1, True),
        ("pirmasens", "bus-stops", "no batch yet", 0, True),
        ("homburg", "trees", "following", 0, False),
    ]


def test_a_store_without_replica_tables_is_a_store_error(tmp_path: Path) -> None:
    from allmende.errors import StoreError

    conn = sqlite3.connect(tmp_path / "empty.sqlite")
    try:
        with pytest.raises(StoreError, match="reading the replicas failed"):
            replica_states(conn, [])
    finally:
        conn.close()
