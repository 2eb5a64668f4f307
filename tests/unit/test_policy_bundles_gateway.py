"""The gateway's side of policy bundles: it switches only to a complete, buildable pair.

A real Gateway on a port-0 listener, on this test's event loop, over a store filled by the
real policy follower (``apply``, no broker). Without the cluster's or its own bundle the
gateway keeps what it decides with and says why; a pair that does not build is logged and
the previous policy stays.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from allmende.backbone import seal
from allmende.ca import CertificateAuthority
from allmende.config import BackboneConfig, GatewayConfig, KeyFiles, NodeConfig
from allmende.policy import BUNDLED_POLICY_DIR, parse_agreement, read_policy_sources
from allmende.policy.bundles import (
    CLUSTER_KEY,
    BundleStore,
    build_cluster_bundle,
    build_owner_bundle,
    bundle_key,
    seal_bundle,
)
from allmende.signing import CA_AUTHOR, MemberSigner
from allmende.store import connect
from allmende.trust import TrustStore
from allmende.v1 import backbone_pb2
from allmende_gateway import Gateway
from allmende_node.policy_follower import PolicyFollower

OWNER = "kaiserslautern"
# Compiled by the real loader, so the test follows the agreement format wherever it goes.
AGREEMENT_YAML = """\
agreement: ka-ps
provider: kaiserslautern
datasets: [parking-permits]
consumers: [pirmasens]
purposes: [traffic-planning]
mask: {holder: redact}
valid_from: 2026-01-01
"""
REQUEST: dict[str, Any] = {
    "subject": {"member": "pirmasens", "cluster": "suedwest", "service": "app"},
    "action": "query",
    "resource": {
        "owner": OWNER,
        "cluster": "suedwest",
        "dataset": "parking-permits",
        "classification": "internal",
        "fields": ["permit_id", "holder"],
    },
    "request": {"purpose": "traffic-planning", "fields": [], "limit": 10},
    "now": "2026-06-01T00:00:00+00:00",
}


class Town:
    def __init__(self, root: Path) -> None:
        self.ca = CertificateAuthority.init(root / "ca", "suedwest")
        issued = self.ca.issue(root / "certs", OWNER)
        assert issued.signing_key and issued.encryption_key
        self.signer = MemberSigner.from_file(OWNER, issued.signing_key)
        self.store = root / "store.sqlite"
        keys = KeyFiles(issued.signing_key, issued.encryption_key, self.ca.cert_path)
        self.node = NodeConfig(
            member=OWNER,
            cluster="suedwest",
            store_path=self.store,
            backbone=BackboneConfig(bootstrap_servers=("127.0.0.1:1",)),
            gateway_address="127.0.0.1:7443",
            keys=keys,
        )
        self.gateway = GatewayConfig(
            member=OWNER,
            cluster="suedwest",
            store_path=self.store,
            tls=issued.tls,
            listen="127.0.0.1:0",
            advertise="127.0.0.1:0",
            policy_poll_s=0.05,
        )
        conn = connect(self.store)
        entry = self.ca.registry()[OWNER]
        record = backbone_pb2.MemberRecord(
            cluster="suedwest",
            member=OWNER,
            signing_public_key=bytes.fromhex(entry["signing_public_key"]),
            encryption_public_key=bytes.fromhex(entry["encryption_public_key"]),
            certificate_serials=entry["certificate_serials"],
            version=entry["version"],
        )
        statement = backbone_pb2.TrustStatement(member=record)
        TrustStore(conn, "suedwest", self.ca.cert).apply(
            seal(CA_AUTHOR, "suedwest", statement, signer=self.ca.signer)
        )
        conn.close()
        self.sources = read_policy_sources(BUNDLED_POLICY_DIR, include_tests=False)
        self.agreements = [parse_agreement(AGREEMENT_YAML, "ka-ps.yaml")]

    def deliver(self, key: bytes, raw: bytes) -> bool:
        follower = PolicyFollower(self.node, lambda: connect(self.store))
        try:
            return follower.apply(raw, key=key)
        finally:
            follower.close()

    def cluster_bundle(self, version: int) -> bytes:
        return seal_bundle(build_cluster_bundle("suedwest", version, self.sources), self.ca.signer)

    def owner_bundle(self, version: int, agreements: list[dict[str, Any]]) -> bytes:
        bundle = build_owner_bundle("suedwest", OWNER, version, agreements)
        return seal_bundle(bundle, self.signer)


@pytest.fixture
def town(tmp_path: Path) -> Town:
    return Town(tmp_path)


def decide(gateway: Gateway) -> tuple[bool, str]:
    assert gateway.policy is not None
    decision = gateway.policy.decide(REQUEST)
    return decision.allow, decision.policy_version


def test_a_decision_needs_both_bundles(town: Town, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        gateway = Gateway(town.gateway)
        await gateway.start()
        try:
            allow, local = decide(gateway)
            assert not allow and local.startswith("sha256:") and gateway.policy_label == "local"

            # Only the owner's bundle: the local policy stays, and the gateway says why.
            assert town.deliver(bundle_key(OWNER), town.owner_bundle(1, town.agreements))
            assert not await gateway.refresh_policy()
            assert decide(gateway) == (False, local)
            assert "the cluster's is missing" in gateway.policy_note

            # With the cluster's bundle the pair takes over at the next poll.
            assert town.deliver(CLUSTER_KEY, town.cluster_bundle(1))
            for _ in range(200):  # the gateway's own poll (policy_poll_s 0.05)
                if gateway.policy_switches:
                    break
                await asyncio.sleep(0.025)
            allow, version = decide(gateway)
            assert allow and version.startswith(f"cluster-v1+{OWNER}-v1:sha256:")
            assert gateway.policy_label == f"cluster-v1+{OWNER}-v1" and not gateway.policy_note
            assert gateway._enforcer is not None and gateway._enforcer.policy is gateway.policy

            # A pair that does not build (a store written around the follower): logged, and
            # the pair in use stays.
            broken = build_owner_bundle(
                "suedwest",
                OWNER,
                2,
                town.agreements,
                {"x.rego": "package allmende.decision\nallow if {"},
            )
            raw = seal_bundle(broken, town.signer)
            env = backbone_pb2.Envelope()
            env.ParseFromString(raw)
            from allmende.policy.bundles import read_bundle

            conn = connect(town.store)
            with conn:
                BundleStore(conn).add(
                    raw,
                    "accepted",
                    "",
                    read_bundle(env, broken),
                    received_at="2026-06-01T00:00:00Z",
                )
            conn.close()
            assert not await gateway.refresh_policy()
            assert decide(gateway) == (allow, version)
            assert f"cluster-v1+{OWNER}-v2 does not build" in gateway.policy_note
        finally:
            await gateway.stop()

    with caplog.at_level(logging.WARNING, logger="allmende_gateway.server"):
        asyncio.run(scenario())
    logged = caplog.text
    assert "keeps deciding with the local policy" in logged
    assert "a decision needs both the cluster's and kaiserslautern's bundle" in logged
    assert f"keeps deciding with the cluster-v1+{OWNER}-v1 policy" in logged


def test_a_gateway_starts_with_the_pair_already_in_its_store(town: Town) -> None:
    town.deliver(CLUSTER_KEY, town.cluster_bundle(1))
    town.deliver(bundle_key(OWNER), town.owner_bundle(1, town.agreements))

    async def scenario() -> None:
        gateway = Gateway(town.gateway)
        await gateway.start()
        try:
            assert decide(gateway)[1].startswith(f"cluster-v1+{OWNER}-v1:")
        finally:
            await gateway.stop()

    asyncio.run(scenario())


def test_a_gateway_given_a_policy_does_not_follow_bundles(town: Town) -> None:
    from allmende.policy import PolicyEngine

    town.deliver(CLUSTER_KEY, town.cluster_bundle(1))
    town.deliver(bundle_key(OWNER), town.owner_bundle(1, town.agreements))

    async def scenario() -> None:
        gateway = Gateway(town.gateway, policy=PolicyEngine(town.sources))
        await gateway.start()
        try:
            assert decide(gateway)[1].startswith("sha256:") and gateway.policy_label == "local"
        finally:
            await gateway.stop()

    asyncio.run(scenario())
