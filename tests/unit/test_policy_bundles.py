"""Policy bundles without a broker: built, sealed, verified and recorded by the policy follower.

The follower's ``apply`` runs the same checks as following the topic; every refusal must be
recorded with its reason and quarantined while the accepted pair stays the active one.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from allmende.backbone import open_envelope, seal
from allmende.ca import CertificateAuthority
from allmende.config import BackboneConfig, KeyFiles, NodeConfig
from allmende.errors import PolicyError
from allmende.policy import BUNDLED_POLICY_DIR, PolicyEngine, load_agreements, read_policy_sources
from allmende.policy.bundles import (
    CLUSTER_KEY,
    BundleRefused,
    active_policy,
    build_cluster_bundle,
    build_owner_bundle,
    bundle_key,
    seal_bundle,
    verify_bundle,
)
from allmende.signing import CA_AUTHOR, MemberSigner
from allmende.store import SCHEMA_VERSION, connect
from allmende.trust import TrustStore
from allmende.v1 import backbone_pb2
from allmende_node.policy_follower import PolicyFollower

REPO = Path(__file__).resolve().parents[2]
AGREEMENTS = REPO / "policies" / "examples" / "agreements"
OWNER = "kaiserslautern"

REQUEST: dict[str, Any] = {
    "subject": {"member": "pirmasens", "cluster": "suedwest", "service": "app"},
    "action": "query",
    "resource": {
        "owner": OWNER,
        "cluster": "suedwest",
        "dataset": "parking-permits",
        "classification": "internal",
        "fields": ["permit_id", "holder", "plate", "district"],
    },
    "request": {"purpose": "traffic-planning", "fields": [], "limit": 10},
    "now": "2026-06-01T00:00:00+00:00",
}


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
    return seal(CA_AUTHOR, ca.cluster, stmt, signer=ca.signer)


class Cluster:
    """A CA, the owner's and another member's keys, and the owner's node config and store."""

    def __init__(self, root: Path) -> None:
        self.ca = CertificateAuthority.init(root / "ca", "suedwest")
        issued = self.ca.issue(root / "certs", OWNER)
        other = self.ca.issue(root / "certs", "pirmasens")
        assert issued.signing_key and issued.encryption_key and other.signing_key
        self.owner = MemberSigner.from_file(OWNER, issued.signing_key)
        self.other = MemberSigner.from_file("pirmasens", other.signing_key)
        self.store = root / "store.sqlite"
        self.config = NodeConfig(
            member=OWNER,
            cluster="suedwest",
            store_path=self.store,
            backbone=BackboneConfig(bootstrap_servers=("127.0.0.1:1",)),
            gateway_address="127.0.0.1:7443",
            keys=KeyFiles(issued.signing_key, issued.encryption_key, self.ca.cert_path),
        )
        conn = connect(self.store)
        trust = TrustStore(conn, "suedwest", self.ca.cert)
        for member in (OWNER, "pirmasens"):
            trust.apply(member_statement(self.ca, member))
        conn.close()
        self.sources = read_policy_sources(BUNDLED_POLICY_DIR, include_tests=False)
        self.agreements = load_agreements(AGREEMENTS)

    def cluster_bundle(self, version: int, **kw: Any) -> bytes:
        sources = kw.pop("sources", self.sources)
        return seal_bundle(build_cluster_bundle("suedwest", version, sources, **kw), self.ca.signer)

    def owner_bundle(self, version: int, agreements: Any = None, **kw: Any) -> bytes:
        agreements = self.agreements if agreements is None else agreements
        bundle = build_owner_bundle("suedwest", OWNER, version, agreements, **kw)
        return seal_bundle(bundle, self.owner)

    def owner_bundle_raw(self, version: int, agreements: list[dict[str, Any]]) -> bytes:
        """An owner bundle made around build_owner_bundle's check, as a hostile tool could."""
        bundle = build_owner_bundle("suedwest", OWNER, version, [])
        bundle.agreements_json = json.dumps(agreements)
        return seal_bundle(bundle, self.owner)

    def follower(self) -> PolicyFollower:
        return PolicyFollower(self.config, lambda: connect(self.store))

    def rows(self, sql: str) -> list[sqlite3.Row]:
        conn = connect(self.store, readonly=True)
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    return Cluster(tmp_path)


def label(cluster: Cluster) -> str | None:
    active = active_policy(cluster.store)
    return None if active is None else active.label


def test_a_pair_of_bundles_becomes_the_active_policy(cluster: Cluster) -> None:
    follower = cluster.follower()
    try:
        assert follower.apply(cluster.cluster_bundle(1), key=CLUSTER_KEY)
        assert active_policy(cluster.store) is None  # a decision needs both bundles
        assert follower.apply(cluster.owner_bundle(1), key=bundle_key(OWNER))
    finally:
        follower.close()
    active = active_policy(cluster.store)
    assert active is not None and active.label == f"cluster-v1+{OWNER}-v1"
    assert active.agreements == cluster.agreements and active.agreements
    engine = PolicyEngine(active.sources, active.agreements, active.settings)
    decision = engine.decide(REQUEST)
    assert decision.allow and dict(decision.mask) == {"holder": "redact", "plate": "redact"}
    statuses = [
        (r["kind"], r["version"], r["status"]) for r in cluster.rows("SELECT * FROM policy_bundles")
    ]
    assert statuses == [("cluster", 1, "accepted"), ("owner", 1, "accepted")]


def test_settings_travel_in_the_cluster_bundle(cluster: Cluster) -> None:
    follower = cluster.follower()
    try:
        follower.apply(cluster.cluster_bundle(1, settings={"default_max_rows": 7}), key=CLUSTER_KEY)
        follower.apply(cluster.owner_bundle(1, agreements=[]), key=bundle_key(OWNER))
    finally:
        follower.close()
    active = active_policy(cluster.store)
    assert active is not None and active.settings == {"default_max_rows": 7}
    owner_query = dict(REQUEST, subject={"member": OWNER, "cluster": "suedwest", "service": "a"})
    engine = PolicyEngine(active.sources, active.agreements, active.settings)
    assert engine.decide(owner_query).max_rows == 7


def _tampered(raw: bytes) -> bytes:
    env, _ = open_envelope(raw, backbone_pb2.PolicyBundle)
    bundle = backbone_pb2.PolicyBundle()
    bundle.ParseFromString(env.payload)
    bundle.agreements_json = bundle.agreements_json.replace("redact", "keep")
    env.payload = bundle.SerializeToString()
    return env.SerializeToString()


def _refusals(c: Cluster) -> list[tuple[str, bytes, bytes]]:
    """(kind, message, topic key) of every way a bundle must be refused."""
    foreign = dict(c.agreements[0], provider="pirmasens", agreement="ps-grab")
    broken = {"owners.rego": "package allmende.decision\n\nthis is not rego {"}
    bad_settings = build_cluster_bundle("suedwest", 5, c.sources)
    bad_settings.settings_json = '{"default_max_rows": 0}'
    wrong_member = build_owner_bundle("suedwest", OWNER, 5, c.agreements)
    other_cluster = build_owner_bundle("nordost", OWNER, 5, c.agreements)
    return [
        ("bad-signature", _tampered(c.owner_bundle(5)), bundle_key(OWNER)),
        (
            "wrong-signer",
            seal("pirmasens", "suedwest", wrong_member, signer=c.other),
            bundle_key(OWNER),
        ),
        (
            "wrong-signer",
            seal(OWNER, "suedwest", build_cluster_bundle("suedwest", 5, c.sources), signer=c.owner),
            CLUSTER_KEY,
        ),
        ("bad-signature", _forged_by_other(c), bundle_key(OWNER)),
        ("foreign-agreement", c.owner_bundle_raw(5, [*c.agreements, foreign]), bundle_key(OWNER)),
        ("replayed", c.owner_bundle(1), bundle_key(OWNER)),
        ("replayed", c.owner_bundle(2, comment="other content, same version"), bundle_key(OWNER)),
        ("does-not-compile", c.owner_bundle(5, sources=broken), bundle_key(OWNER)),
        ("does-not-compile", c.cluster_bundle(5, sources=broken), CLUSTER_KEY),
        ("invalid", seal_bundle(bad_settings, c.ca.signer), CLUSTER_KEY),
        ("foreign-cluster", seal_bundle(other_cluster, c.owner), bundle_key(OWNER)),
        ("wrong-key", c.owner_bundle(5), CLUSTER_KEY),
        ("unsigned", seal(OWNER, "suedwest", wrong_member), bundle_key(OWNER)),
        ("undecodable", b"\x00garbage", bundle_key(OWNER)),
    ]


def _forged_by_other(c: Cluster) -> bytes:
    """Names the owner as author but is signed with another member's key."""
    bundle = build_owner_bundle("suedwest", OWNER, 5, c.agreements)
    env = backbone_pb2.Envelope()
    env.ParseFromString(seal(OWNER, "suedwest", bundle))
    env.signature = c.other._key.sign(b"whatever")
    return env.SerializeToString()


def test_every_tampered_bundle_is_refused_and_the_good_pair_stays(cluster: Cluster) -> None:
    follower = cluster.follower()
    try:
        follower.apply(cluster.cluster_bundle(1), key=CLUSTER_KEY)
        follower.apply(cluster.owner_bundle(1), key=bundle_key(OWNER))
        follower.apply(cluster.owner_bundle(2), key=bundle_key(OWNER))
        assert label(cluster) == f"cluster-v1+{OWNER}-v2"
        cases = _refusals(cluster)
        for kind, raw, key in cases:
            assert not follower.apply(raw, key=key), kind
            assert label(cluster) == f"cluster-v1+{OWNER}-v2", kind
        assert sum(follower.rejected.values()) == len(cases)
    finally:
        follower.close()
    refused = cluster.rows("SELECT reason FROM policy_bundles WHERE status = 'refused' ORDER BY id")
    assert [r["reason"].split(":")[0] for r in refused] == [k for k, _, _ in cases]
    quarantined = cluster.rows("SELECT reason FROM quarantine ORDER BY id")
    assert [r["reason"] for r in quarantined] == [r["reason"] for r in refused]
    reasons = "\n".join(r["reason"] for r in refused)
    assert "agreement 'ps-grab' names provider 'pirmasens'" in reasons
    assert "is not newer than the accepted version 2" in reasons
    assert "does not compile" in reasons and "owners.rego" in reasons
    assert "only '@ca' may sign it" in reasons


def test_a_redelivered_bundle_changes_nothing(cluster: Cluster) -> None:
    raw = cluster.cluster_bundle(1)
    follower = cluster.follower()
    try:
        assert follower.apply(raw, key=CLUSTER_KEY)
        assert not follower.apply(raw, key=CLUSTER_KEY)  # a topic read again after a restart
        assert not follower.rejected
    finally:
        follower.close()
    assert len(cluster.rows("SELECT * FROM policy_bundles")) == 1


def test_other_owners_bundles_are_ignored(cluster: Cluster) -> None:
    bundle = build_owner_bundle(
        "suedwest", "pirmasens", 1, [dict(cluster.agreements[0], provider="pirmasens")]
    )
    follower = cluster.follower()
    try:
        assert not follower.apply(seal_bundle(bundle, cluster.other), key=bundle_key("pirmasens"))
        assert follower.ignored == 1 and not follower.rejected
    finally:
        follower.close()
    assert cluster.rows("SELECT * FROM policy_bundles") == []


def test_an_owner_bundle_before_the_cluster_bundle_is_checked_with_the_bundled_policies(
    cluster: Cluster,
) -> None:
    follower = cluster.follower()
    try:
        assert follower.apply(cluster.owner_bundle(1), key=bundle_key(OWNER))
        assert active_policy(cluster.store) is None  # still no pair
        assert follower.apply(cluster.cluster_bundle(1), key=CLUSTER_KEY)
    finally:
        follower.close()
    assert label(cluster) == f"cluster-v1+{OWNER}-v1"


def test_a_rollback_is_a_new_version_with_old_content(cluster: Cluster) -> None:
    follower = cluster.follower()
    try:
        follower.apply(cluster.cluster_bundle(1), key=CLUSTER_KEY)
        follower.apply(cluster.owner_bundle(1), key=bundle_key(OWNER))
        follower.apply(cluster.owner_bundle(2, agreements=[]), key=bundle_key(OWNER))
        active = active_policy(cluster.store)
        assert active is not None and active.agreements == []
        rollback = cluster.owner_bundle(3, rollback_of=1, comment="rollback to version 1")
        assert follower.apply(rollback, key=bundle_key(OWNER))
    finally:
        follower.close()
    active = active_policy(cluster.store)
    assert active is not None and active.label == f"cluster-v1+{OWNER}-v3"
    assert active.agreements == cluster.agreements
    row = cluster.rows("SELECT rollback_of, comment FROM policy_bundles ORDER BY id DESC")[0]
    assert (row["rollback_of"], row["comment"]) == (1, "rollback to version 1")


def test_building_refuses_foreign_agreements_and_bad_input(cluster: Cluster) -> None:
    foreign = dict(cluster.agreements[0], provider="pirmasens")
    with pytest.raises(PolicyError, match="can only publish agreements for its own datasets"):
        build_owner_bundle("suedwest", OWNER, 1, [foreign])
    with pytest.raises(PolicyError, match="version starts at 1"):
        build_cluster_bundle("suedwest", 0, cluster.sources)
    with pytest.raises(PolicyError, match="unknown setting 'max'"):
        build_cluster_bundle("suedwest", 1, cluster.sources, {"max": 1})
    with pytest.raises(PolicyError, match="needs Rego"):
        build_cluster_bundle("suedwest", 1, {})


def test_verify_names_what_is_wrong(cluster: Cluster) -> None:
    conn = connect(cluster.store)
    try:
        trust = TrustStore(conn, "suedwest", cluster.ca.cert)
        content = verify_bundle(
            cluster.cluster_bundle(3),
            cluster="suedwest",
            ca_certificate=cluster.ca.cert,
            trust=trust,
        )
        assert (content.kind, content.signer, content.version) == ("cluster", CA_AUTHOR, 3)
        ca_owner = build_owner_bundle("suedwest", CA_AUTHOR, 1, [])
        with pytest.raises(BundleRefused, match="'@ca' is not a member name"):
            verify_bundle(
                seal_bundle(ca_owner, cluster.ca.signer),
                cluster="suedwest",
                ca_certificate=cluster.ca.cert,
                trust=trust,
            )
        rogue = CertificateAuthority.init(cluster.store.parent / "rogue", "suedwest")
        forged = seal_bundle(build_cluster_bundle("suedwest", 9, cluster.sources), rogue.signer)
        with pytest.raises(BundleRefused, match="does not verify with @ca's key") as err:
            verify_bundle(forged, cluster="suedwest", ca_certificate=cluster.ca.cert, trust=trust)
        assert err.value.kind == "bad-signature"
    finally:
        conn.close()


def test_a_version_2_store_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    connect(path).close()
    raw = sqlite3.connect(path)
    raw.execute("DROP TABLE policy_bundles")
    raw.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    raw.commit()
    raw.close()
    with pytest.raises(Exception, match="schema version 2"):
        connect(path, readonly=True)
    connect(path).close()  # the node opens it for writing: upgraded
    conn = connect(path, readonly=True)
    try:
        assert conn.execute("SELECT COUNT(*) FROM policy_bundles").fetchone()[0] == 0
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert version[0] == str(SCHEMA_VERSION) == "3"
    finally:
        conn.close()
