"""The catalog follower's checks, without a broker: signatures, authors, replays, held messages."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from allmende.backbone import open_envelope, seal
from allmende.ca import CertificateAuthority
from allmende.config import BackboneConfig, KeyFiles, NodeConfig
from allmende.errors import ConfigError
from allmende.signing import CA_AUTHOR, CaSigner, MemberSigner, signing_input, verify_member
from allmende.store import connect
from allmende.trust import TrustStore
from allmende.v1 import backbone_pb2, catalog_pb2
from allmende_node import CatalogFollower
from allmende_node.follower_position import FollowerPosition
from allmende_node.quarantine import Quarantine

CLUSTER = "suedwest"
SIGNERS = {
    m: MemberSigner(m, ed25519.Ed25519PrivateKey.generate())
    for m in ("kaiserslautern", "pirmasens", "sankt-wendel")
}
UNSIGNED = MemberSigner("nobody", ed25519.Ed25519PrivateKey.generate())  # a marker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path_factory.mktemp("ca"), CLUSTER)


def trust(ca: CertificateAuthority, member: str, version: int = 1, revoked: str = "") -> bytes:
    """A CA-signed statement registering ``member`` with its key, or revoking it."""
    if revoked:
        stmt = backbone_pb2.TrustStatement(
            revocation=backbone_pb2.Revocation(
                cluster=CLUSTER, member=member, reason=revoked, version=version
            )
        )
    else:
        stmt = backbone_pb2.TrustStatement(
            member=backbone_pb2.MemberRecord(
                cluster=CLUSTER,
                member=member,
                signing_public_key=SIGNERS[member].public_key,
                version=version,
            )
        )
    return seal(CA_AUTHOR, CLUSTER, stmt, signer=CaSigner(ca._key))


def node_config(tmp_path: Path, ca: CertificateAuthority) -> NodeConfig:
    return NodeConfig(
        member="pirmasens",
        cluster=CLUSTER,
        store_path=tmp_path / "store.sqlite",
        backbone=BackboneConfig(bootstrap_servers=("127.0.0.1:9",), topic_prefix="t"),
        gateway_address="127.0.0.1:7444",
        keys=KeyFiles(tmp_path / "unused.pem", tmp_path / "unused.pem", ca.cert_path),
    )


class Rig:
    def __init__(self, tmp_path: Path, ca: CertificateAuthority, max_held: int = 1000) -> None:
        self.ca = ca
        self.config = node_config(tmp_path, ca)
        self.conn = connect(self.config.store_path)
        self.clock = Clock()
        self.max_held = max_held
        self.follower = self.new_follower()
        for member in ("kaiserslautern", "pirmasens"):
            self.trust(trust(ca, member))

    def new_follower(self) -> CatalogFollower:
        return CatalogFollower(self.config, self.conn, clock=self.clock, max_held=self.max_held)

    def trust(self, raw: bytes) -> None:
        TrustStore(self.conn, CLUSTER, self.ca.cert).apply(raw)

    def quarantined(self) -> list[tuple[str, str]]:
        return [(m.author, m.reason) for m in Quarantine(self.conn).newest(100)]

    def pending(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM follower_pending").fetchone()[0])


@pytest.fixture
def rig(tmp_path: Path, ca: CertificateAuthority) -> Iterator[Rig]:
    r = Rig(tmp_path, ca)
    yield r
    r.follower.close()
    r.conn.close()


def entry(
    version: int,
    *,
    author: str = "kaiserslautern",
    owner: str = "kaiserslautern",
    dataset: str = "parking-sites",
    cluster: str = CLUSTER,
    withdrawn: bool = False,
    title: str = "Parkhäuser",
    signer: MemberSigner | None = None,
) -> bytes:
    desc = catalog_pb2.DatasetDescriptor(
        owner=owner, id=dataset, title=title, version=version, cluster=cluster
    )
    signer = signer or SIGNERS.get(author)
    return seal(
        author,
        cluster,
        backbone_pb2.CatalogEntry(dataset=desc, withdrawn=withdrawn),
        signer=None if signer is UNSIGNED else signer,
    )


def rows(conn: sqlite3.Connection) -> list[tuple[str, str, int, str]]:
    out = []
    for owner, dataset, version, blob in conn.execute(
        "SELECT owner, dataset, version, descriptor FROM catalog ORDER BY owner, dataset"
    ):
        out.append((owner, dataset, version, catalog_pb2.DatasetDescriptor.FromString(blob).title))
    return out


def altered(raw: bytes) -> bytes:
    """``raw`` with one byte of the payload's title changed; the protobuf still decodes."""
    i = raw.index("Parkhäuser".encode())
    return raw[:i] + b"Q" + raw[i + 1 :]


def test_highest_version_wins_equal_is_a_no_op_older_is_a_replay(rig: Rig) -> None:
    f, conn = rig.follower, rig.conn
    assert f.apply(entry(2, title="v2"))
    assert not f.apply(entry(2, title="v2 again"))  # a re-announcement: not quarantined
    assert f.apply(entry(3, title="v3"))
    assert not f.apply(entry(1, title="v1"))
    assert rows(conn) == [("kaiserslautern", "parking-sites", 3, "v3")]
    assert f.applied == 2 and f.rejected == {"replayed": 1}
    assert rig.quarantined() == [
        (
            "kaiserslautern",
            "replayed: version 1 of kaiserslautern/parking-sites is older than applied version 3",
        )
    ]


def test_withdrawn_entry_removes_the_row_and_an_older_withdrawal_is_a_replay(rig: Rig) -> None:
    f, conn = rig.follower, rig.conn
    f.apply(entry(3))
    assert not f.apply(entry(2, withdrawn=True))
    assert len(rows(conn)) == 1 and f.rejected == {"replayed": 1}
    assert f.apply(entry(4, withdrawn=True))
    assert rows(conn) == []
    assert not f.apply(entry(4, withdrawn=True))  # repeated: nothing to withdraw, no rejection
    assert f.rejected == {"replayed": 1}


@pytest.mark.parametrize(
    ("raw", "kind", "author", "reason"),
    [
        (
            entry(1, author="pirmasens"),
            "author-not-owner",
            "pirmasens",
            "wrong author: pirmasens announced dataset kaiserslautern/parking-sites",
        ),
        (entry(1, cluster="nordost"), "foreign-cluster", "kaiserslautern", "foreign cluster"),
        (b"\xff\x00 not protobuf", "undecodable", "", "undecodable"),
        (None, "undecodable", "", "undecodable"),
        (
            seal("kaiserslautern", CLUSTER, catalog_pb2.DatasetDescriptor(owner="x")),
            "undecodable",
            "",
            "expected allmende.v1.CatalogEntry",
        ),
        (
            entry(1, dataset="Parking Sites"),
            "invalid-descriptor",
            "kaiserslautern",
            "is not a name",
        ),
        (entry(1, signer=UNSIGNED), "unsigned", "kaiserslautern", "unsigned"),
        (
            entry(1, signer=MemberSigner("kaiserslautern", ed25519.Ed25519PrivateKey.generate())),
            "bad-signature",
            "kaiserslautern",
            "bad signature",
        ),
        (altered(entry(1)), "bad-signature", "kaiserslautern", "bad signature"),
    ],
)
def test_refused_messages_are_quarantined_counted_and_logged(
    rig: Rig,
    raw: bytes | None,
    kind: str,
    author: str,
    reason: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    f = rig.follower
    assert not f.apply(raw, partition=0, offset=7, key=b"kaiserslautern/parking-sites")
    assert f.rejected == {kind: 1}
    assert rows(rig.conn) == []
    [(got_author, got_reason)] = rig.quarantined()
    assert got_author == author and reason in got_reason
    [kept] = Quarantine(rig.conn).newest()
    assert (kept.topic, kept.partition, kept.offset) == ("t.catalog", 0, 7)
    assert kept.key == b"kaiserslautern/parking-sites" and kept.value == raw
    assert kind in caplog.text and "t.catalog@0:7" in caplog.text


def test_descriptor_cluster_must_match_the_envelope(rig: Rig) -> None:
    desc = catalog_pb2.DatasetDescriptor(
        owner="kaiserslautern", id="parking-sites", version=1, cluster="nordost"
    )
    raw = seal(
        "kaiserslautern",
        CLUSTER,
        backbone_pb2.CatalogEntry(dataset=desc),
        signer=SIGNERS["kaiserslautern"],
    )
    assert not rig.follower.apply(raw)
    assert rig.follower.rejected == {"foreign-cluster": 1}
    assert rows(rig.conn) == []


def test_a_revoked_member_is_refused(rig: Rig) -> None:
    rig.trust(trust(rig.ca, "sankt-wendel"))
    own = entry(1, author="sankt-wendel", owner="sankt-wendel")
    assert rig.follower.apply(own)
    rig.trust(trust(rig.ca, "sankt-wendel", version=2, revoked="key compromised"))
    assert not rig.follower.apply(entry(2, author="sankt-wendel", owner="sankt-wendel"))
    assert rig.quarantined() == [
        ("sankt-wendel", "signed by revoked member sankt-wendel (key compromised)")
    ]
    assert rig.follower.rejected == {"revoked-member": 1}


def test_entries_about_our_own_datasets_are_verified_but_left_to_the_importer(rig: Rig) -> None:
    conn = rig.conn
    conn.execute(
        "INSERT INTO catalog VALUES ('pirmasens', 'parking-sites', 5, ?, 'now')",
        (catalog_pb2.DatasetDescriptor(title="ours").SerializeToString(),),
    )
    conn.commit()
    f = rig.follower
    assert not f.apply(entry(2, author="pirmasens", owner="pirmasens", title="old echo"))
    assert not f.apply(entry(9, author="pirmasens", owner="pirmasens", withdrawn=True))
    assert rows(conn) == [("pirmasens", "parking-sites", 5, "ours")]
    assert not f.rejected
    stranger = MemberSigner("pirmasens", ed25519.Ed25519PrivateKey.generate())
    forged = entry(9, author="pirmasens", owner="pirmasens", signer=stranger)
    assert not f.apply(forged)
    assert f.rejected == {"bad-signature": 1}


def test_an_unknown_author_is_held_until_trust_arrives(rig: Rig) -> None:
    f = rig.follower
    assert not f.apply(entry(1, author="sankt-wendel", owner="sankt-wendel", dataset="a"))
    assert f.held == 1 and rig.pending() == 1 and not f.rejected
    assert f.retry_held() == 0  # nothing changed
    rig.trust(trust(rig.ca, "sankt-wendel"))
    # Its next message waits behind the held one, so versions stay in order.
    assert not f.apply(entry(2, author="sankt-wendel", owner="sankt-wendel", dataset="a"))
    assert f.held == 2
    assert f.retry_held() == 2
    assert rows(rig.conn) == [("sankt-wendel", "a", 2, "Parkhäuser")]
    assert f.held == 0 and rig.pending() == 0 and not f.rejected


def test_an_unknown_author_is_quarantined_after_the_grace_period(rig: Rig) -> None:
    f = rig.follower
    f.apply(entry(1, author="sankt-wendel", owner="sankt-wendel"))
    rig.clock.now += 29
    assert f.retry_held() == 0
    rig.clock.now += 2
    assert f.retry_held() == 1
    [(author, reason)] = rig.quarantined()
    assert author == "sankt-wendel" and reason.startswith("unknown member sankt-wendel")
    assert f.rejected == {"unknown-member": 1} and rig.pending() == 0


def test_held_messages_survive_a_restart_and_are_bounded(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    r = Rig(tmp_path, ca, max_held=2)
    try:
        for ds in ("a", "b", "c"):
            r.follower.apply(entry(1, author="sankt-wendel", owner="sankt-wendel", dataset=ds))
        assert r.follower.held == 2 and r.follower.rejected == {"unknown-member": 1}
        assert "more than 2 messages waited" in r.quarantined()[0][1]
        r.follower.close()
        r.follower = r.new_follower()
        r.trust(trust(ca, "sankt-wendel"))
        assert r.follower.retry_held() == 2
        assert [row[1] for row in rows(r.conn)] == ["b", "c"]
    finally:
        r.follower.close()
        r.conn.close()


def test_rejections_are_logged_once_per_kind_and_interval(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    for _ in range(5):
        rig.follower.apply(entry(1, signer=UNSIGNED))
    rig.follower.apply(entry(1, author="pirmasens"))
    assert len(caplog.records) == 2  # one unsigned, one author-not-owner
    rig.clock.now += 11
    rig.follower.apply(entry(1, signer=UNSIGNED))
    assert len(caplog.records) == 3 and "4 more of this kind" in caplog.records[-1].getMessage()
    assert rig.follower.rejected == {"unsigned": 6, "author-not-owner": 1}
    assert len(rig.quarantined()) == 7


def test_position_resumes_on_the_same_topic_and_starts_over_on_a_new_one(rig: Rig) -> None:
    conn = rig.conn
    pos = FollowerPosition("t.catalog")
    assert pos.resume(conn, "id-1") is None and pos.next == {}
    pos.next[0] = 5
    pos.flush(conn)
    again = FollowerPosition("t.catalog")
    assert again.resume(conn, "id-1") is True and again.next == {0: 5}
    assert again.resume(conn, "id-2") is False and again.next == {}
    again.next[0] = 2
    again.flush(conn)
    assert again.stored(conn) == {0: ("id-2", 2)}


def test_a_follower_needs_keys(tmp_path: Path, ca: CertificateAuthority) -> None:
    config = node_config(tmp_path, ca)
    bare = NodeConfig(
        config.member, config.cluster, config.store_path, config.backbone, config.gateway_address
    )
    with pytest.raises(ConfigError, match=r"\[keys\] is required"):
        CatalogFollower(bare, lambda: connect(bare.store_path))
    env, _ = open_envelope(entry(1), backbone_pb2.CatalogEntry)
    assert env.signature  # the test's own entries are signed


def test_protocol_md_test_vector_is_what_the_code_signs() -> None:
    """PROTOCOL.md's signature test vector, so another implementation can check itself."""
    env = backbone_pb2.Envelope(
        author="kaiserslautern",
        cluster="suedwest",
        payload_type="allmende.v1.CatalogEntry",
        payload=b"p",
    )
    env.created_at.seconds, env.created_at.nanos = 1795392000, 5
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    signer = MemberSigner("kaiserslautern", ed25519.Ed25519PrivateKey.from_private_bytes(seed))
    signer.sign(env)
    protocol = "".join((Path(__file__).parents[2] / "PROTOCOL.md").read_text("utf-8").split())
    assert signing_input(env).hex() in protocol
    assert signer.public_key.hex() in protocol
    assert env.signature.hex() in protocol


def test_the_node_signs_with_its_key_loaded_once_and_again_after_a_reissue(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    from allmende_node.descriptors import catalog_message
    from allmende_node.signing_keys import node_signer

    issued = ca.issue(tmp_path / "certs", "pirmasens")
    assert issued.signing_key is not None and issued.encryption_key is not None
    config = NodeConfig(
        "pirmasens",
        CLUSTER,
        tmp_path / "store.sqlite",
        BackboneConfig(bootstrap_servers=("127.0.0.1:9",), topic_prefix="t"),
        "127.0.0.1:7444",
        keys=KeyFiles(issued.signing_key, issued.encryption_key, ca.cert_path),
    )
    first = node_signer(config)
    assert node_signer(config) is first
    desc = catalog_pb2.DatasetDescriptor(owner="pirmasens", id="x", version=1, cluster=CLUSTER)
    env, _ = open_envelope(catalog_message(config, desc).value, backbone_pb2.CatalogEntry)
    verify_member(env, first.public_key)  # signed by default, with the node's key
    ca.issue(tmp_path / "certs", "pirmasens")  # a new key in the same file
    assert node_signer(config).public_key != first.public_key
    bare = NodeConfig(
        config.member, config.cluster, config.store_path, config.backbone, config.gateway_address
    )
    with pytest.raises(ConfigError, match=r"\[keys\] is required"):
        catalog_message(bare, desc)
