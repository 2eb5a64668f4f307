"""Signed policy bundles through a real broker, node and gateway: published with the CLI, switched
to within seconds, tampered ones refused while the last good pair keeps serving, rolled back.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from allmende.backbone import Topics, open_envelope, seal
from allmende.broker import EmbeddedBroker
from allmende.ca import CertificateAuthority
from allmende.client import GatewayClient
from allmende.config import BackboneConfig
from allmende.errors import PolicyDenied
from allmende.identity import gateway_server_name
from allmende.policy import BUNDLED_POLICY_DIR, load_agreements, read_policy_sources
from allmende.policy.bundles import (
    CLUSTER_KEY,
    build_cluster_bundle,
    build_owner_bundle,
    bundle_key,
    seal_bundle,
)
from allmende.signing import MemberSigner
from allmende.store import connect
from allmende.v1 import backbone_pb2
from allmende_cli.main import main
from allmende_gateway import Gateway, GatewayThread
from allmende_node import Node
from allmende_node.policy_follower import PolicyFollower

from .cluster_trust import apply_statements, member_statement
from .opa_double import OpaDouble
from .towns import Town, make_town, publish_trust, wait_for_trust

pytestmark = pytest.mark.integration

OWNER = "kaiserslautern"
PERMITS = (OWNER, "parking-permits", "traffic-planning")
# An owner's own Rego module, carried in its bundle next to its agreements.
EXTRA = 'package allmende.kaiserslautern\n\nnote := "kaiserslautern\'s rules"\n'
AGREEMENT = """\
agreement: ka-ps-permits
provider: kaiserslautern
datasets: [parking-permits]
consumers: [pirmasens]
purposes: [traffic-planning]
mask: {{{mask}}}
valid_from: 2026-01-01
"""


def wait_until(condition: Callable[[], Any], what: str, timeout_s: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:.0f} s: {what}")
        time.sleep(0.02)


def agreements_dir(root: Path, name: str, mask: str) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "ka-ps.yaml").write_text(AGREEMENT.format(mask=mask), encoding="utf-8")
    return folder


def bundle_rows(town: Town) -> list[tuple[str, int, str, str]]:
    conn = connect(town.config.node.store_path, readonly=True)
    try:
        rows = conn.execute(
            "SELECT kind, version, status, reason FROM policy_bundles ORDER BY id"
        ).fetchall()
    finally:
        conn.close()
    return [(r[0], int(r[1]), r[2], r[3]) for r in rows]


def stored_envelope(town: Town, kind: str, version: int) -> bytes:
    """The bundle message as the node received it (for a replay)."""
    conn = connect(town.config.node.store_path, readonly=True)
    try:
        row = conn.execute(
            "SELECT envelope FROM policy_bundles WHERE kind = ? AND version = ?", (kind, version)
        ).fetchone()
    finally:
        conn.close()
    return bytes(row[0])


def decided_by(client: GatewayClient) -> tuple[str, dict[str, Any] | None]:
    """The policy version that decided a query of the permits, and its first record
    (None when denied)."""
    try:
        page = client.query(*PERMITS, page_size=1)
    except PolicyDenied as denied:
        return denied.policy_version, None
    return page.decision.policy_version, json.loads(page.records[0].json)


class Federation:
    def __init__(self, root: Path, broker: EmbeddedBroker, backbone: BackboneConfig) -> None:
        self.root = root
        self.ca = CertificateAuthority.init(root / "ca", "suedwest")
        bootstrap, prefix = broker.bootstrap, backbone.topic_prefix
        self.kl = make_town(
            root,
            self.ca,
            self.ca.cert_path,
            OWNER,
            datasets=True,
            bootstrap=bootstrap,
            topic_prefix=prefix,
        )
        self.ps = make_town(
            root, self.ca, self.ca.cert_path, "pirmasens", bootstrap=bootstrap, topic_prefix=prefix
        )
        self.backbone = backbone
        self.broker = broker
        self.cli_cluster = [
            "--cluster",
            "--ca-dir",
            str(self.ca.directory),
            "--bootstrap",
            broker.bootstrap,
            "--topic-prefix",
            backbone.topic_prefix,
        ]
        self.cli_owner = ["--config", str(self.kl.dir / "town.toml")]
        assert self.kl.config.node.keys is not None
        self.owner_signer = MemberSigner.from_file(OWNER, self.kl.config.node.keys.signing_key)
        ps_keys = self.ps.config.node.keys
        assert ps_keys is not None
        self.ps_signer = MemberSigner.from_file("pirmasens", ps_keys.signing_key)
        self.planner_tls = self.ps.service_tls(self.ca, "planner")  # before trust is published

    def client(self) -> GatewayClient:
        """A Pirmasens service calling Kaiserslautern's gateway."""
        return GatewayClient(
            self.kl.config.gateway.listen,
            self.planner_tls,
            server_name=gateway_server_name("suedwest", OWNER),
        )

    def send_raw(self, key: bytes, value: bytes) -> None:
        """A hostile (or broken) producer writes straight to the policy topic."""
        producer = KafkaProducer(bootstrap_servers=self.broker.bootstrap)
        try:
            producer.send(Topics(self.backbone.topic_prefix).policy, key=key, value=value)
            producer.flush(5)
        finally:
            producer.close()


@pytest.fixture
def fed(tmp_path: Path, broker: EmbeddedBroker, backbone: BackboneConfig) -> Iterator[Federation]:
    fed = Federation(tmp_path, broker, backbone)
    publish_trust(fed.ca, backbone)
    yield fed


def switch_time(
    town: Town, client: GatewayClient, version: int, started: float
) -> tuple[float, float]:
    """Seconds from ``started`` until the node accepted the owner's bundle ``version`` and
    until the gateway decided with it."""
    prefix = f"cluster-v1+{OWNER}-v{version}:sha256:"
    accepted = 0.0
    deadline = started + 10
    while time.monotonic() < deadline:
        if not accepted and ("owner", version, "accepted", "") in bundle_rows(town):
            accepted = time.monotonic() - started
        if decided_by(client)[0].startswith(prefix):
            return accepted or time.monotonic() - started, time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"the gateway did not decide with {prefix} within 10 s")


def test_bundles_switch_refuse_and_roll_back(
    fed: Federation, capsys: pytest.CaptureFixture[str], record_property: Any
) -> None:
    node = Node(fed.kl.config.node).start()
    gateway = GatewayThread(fed.kl.config.gateway).start()
    client = fed.client()
    try:
        wait_for_trust(fed.kl, fed.ca)
        version, record = decided_by(client)
        assert record is None and version.startswith("sha256:")  # the local policy: no grant

        # The cluster's baseline alone: the node accepts it, the gateway keeps its local
        # policy and says why.
        assert main(["policy", "publish", *fed.cli_cluster, "--comment", "baseline"]) == 0
        wait_until(lambda: bundle_rows(fed.kl) == [("cluster", 1, "accepted", "")], "cluster v1")
        inner = gateway.gateway
        wait_until(lambda: "a decision needs both" in inner.policy_note, "the gateway's note")
        assert "kaiserslautern's bundle is missing" in inner.policy_note
        assert decided_by(client)[0] == version and inner.policy_label == "local"

        # The owner's first bundle: the pair takes effect at the running gateway.
        v1 = agreements_dir(fed.root, "v1", "holder: redact, plate: redact")
        started = time.monotonic()
        assert main(["policy", "publish", *fed.cli_owner, "--agreements", str(v1)]) == 0
        first = switch_time(fed.kl, client, 1, started)
        published = capsys.readouterr().out
        assert f"published {OWNER}'s policy bundle version 1" in published
        assert "compiled with the cluster's bundle v1 on the topic" in published
        _, record = decided_by(client)
        assert record is not None and record["holder"] is None and record["plate"] is None
        assert record["district"] is not None

        v2 = agreements_dir(fed.root, "v2", "holder: redact, plate: redact, district: redact")
        started = time.monotonic()
        assert main(["policy", "publish", *fed.cli_owner, "--agreements", str(v2)]) == 0
        second = switch_time(fed.kl, client, 2, started)
        good_version, record = decided_by(client)
        assert record is not None and record["district"] is None

        # Tampered bundles on the topic: each refused, v2 keeps serving.
        v1_bytes = stored_envelope(fed.kl, "owner", 1)
        good = build_owner_bundle("suedwest", OWNER, 3, [])
        altered = backbone_pb2.Envelope()
        altered.ParseFromString(seal_bundle(good, fed.owner_signer))
        altered.payload = altered.payload.replace(b"suedwest", b"suedwesT")
        foreign = build_owner_bundle("suedwest", OWNER, 3, [])
        foreign.agreements_json = json.dumps([{"agreement": "grab", "provider": "pirmasens"}])
        broken = build_owner_bundle(
            "suedwest", OWNER, 3, [], {"extra.rego": "package allmende.decision\nallow if {"}
        )
        hostile = [
            altered.SerializeToString(),  # altered bytes
            seal("pirmasens", "suedwest", good, signer=fed.ps_signer),  # wrong signer
            seal_bundle(foreign, fed.owner_signer),  # an agreement for another provider
            v1_bytes,  # an older version, replayed
            seal_bundle(broken, fed.owner_signer),  # Rego that does not compile
        ]
        for raw in hostile:
            fed.send_raw(bundle_key(OWNER), raw)
        rows = wait_until(
            lambda: (r := bundle_rows(fed.kl)) and len(r) == 3 + len(hostile) and r,
            "every hostile bundle checked",
        )
        refused = [(kind, reason.split(":")[0]) for kind, _, status, reason in rows[3:]]
        assert refused == [
            ("owner", "bad-signature"),
            ("owner", "wrong-signer"),
            ("owner", "foreign-agreement"),
            ("owner", "replayed"),
            ("owner", "does-not-compile"),
        ]
        time.sleep(fed.kl.config.gateway.policy_poll_s * 1.5)  # a poll of the gateway passes
        assert decided_by(client)[0] == good_version
        capsys.readouterr()
        assert main(["policy", "versions", "--config", str(fed.kl.dir / "town.toml")]) == 0
        listing = capsys.readouterr().out
        assert f"decides with cluster-v1+{OWNER}-v2" in listing
        assert listing.count("refused") == 5 and "foreign-agreement" in listing

        # Rollback to version 1: a new version with v1's content. It is version 4: the
        # refused v3 bundles above were signed with the owner's key too (a broken tool), and
        # the next version is above every version on the topic that the signer signed.
        started = time.monotonic()
        assert main(["policy", "rollback", *fed.cli_owner, "--to", "1"]) == 0
        assert "version 4: the content of version 1 again" in capsys.readouterr().out
        rollback = switch_time(fed.kl, client, 4, started)
        _, record = decided_by(client)
        assert record is not None and record["holder"] is None and record["district"] is not None
        assert bundle_rows(fed.kl)[-1][:3] == ("owner", 4, "accepted")

        # The topic as the operator and the town see it.
        capsys.readouterr()
        assert main(["policy", "versions", *fed.cli_owner, "--topic"]) == 0
        assert "(not verified here; a node checks)" in capsys.readouterr().out
        cli = ["--bootstrap", fed.broker.bootstrap, "--topic-prefix", fed.backbone.topic_prefix]
        assert main(["policy", "versions", *cli, "--json"]) == 0
        on_topic = json.loads(capsys.readouterr().out)["bundles"]
        ours = [b for b in on_topic if b["key"] == f"owner/{OWNER}" and b["signer"] == OWNER]
        assert [b["version"] for b in ours][:2] == [1, 2] and ours[-1]["rollback_of"] == 1
        assert on_topic[0]["key"] == CLUSTER_KEY.decode() and on_topic[0]["comment"] == "baseline"
    finally:
        client.close()
        gateway.stop()
        node.stop()
    figures = {"first": first, "second": second, "rollback": rollback}
    for name, (accepted, switched) in figures.items():
        record_property(f"bundle_{name}_accepted_s", round(accepted, 2))
        record_property(f"bundle_{name}_switched_s", round(switched, 2))
        assert switched < 5.0, f"{name}: the gateway switched after {switched:.2f} s"
    print(
        "bundle switch-over (s from the start of the CLI command: node accepted, gateway "
        "decides with it):",
        {k: (round(a, 2), round(b, 2)) for k, (a, b) in figures.items()},
    )


def test_publish_refuses_what_would_not_work(
    fed: Federation, capsys: pytest.CaptureFixture[str]
) -> None:
    foreign = fed.root / "foreign"
    foreign.mkdir()
    (foreign / "a.yaml").write_text(
        AGREEMENT.format(mask="holder: redact").replace(
            "provider: kaiserslautern", "provider: pirmasens"
        ),
        encoding="utf-8",
    )
    assert main(["policy", "publish", *fed.cli_owner, "--agreements", str(foreign)]) == 2
    assert "can only publish agreements for its own datasets" in capsys.readouterr().err
    broken = fed.root / "rego"
    broken.mkdir()
    (broken / "extra.rego").write_text("package allmende.decision\nallow if {", encoding="utf-8")
    empty = fed.root / "none"
    empty.mkdir()
    cli = [*fed.cli_owner, "--agreements", str(empty), "--policy-dir", str(broken)]
    assert main(["policy", "publish", *cli]) == 2
    assert "not published: the bundle does not compile" in capsys.readouterr().err
    assert main(["policy", "publish", *fed.cli_cluster, "--settings", "default_max_rows=0"]) == 2
    assert "default_max_rows must be a positive whole number" in capsys.readouterr().err
    assert main(["policy", "publish", "--cluster", "--config", "x.toml"]) == 2
    assert "name the signer" in capsys.readouterr().err
    assert main(["policy", "rollback", *fed.cli_cluster, "--to", "4"]) == 2
    assert "version 4 is not on the topic (versions: none)" in capsys.readouterr().err
    # A forged "cluster" bundle on the topic does not count for the next version number.
    rogue = CertificateAuthority.init(fed.root / "rogue", "suedwest")
    forged = build_cluster_bundle("suedwest", 40, {"a.rego": "package allmende.decision"})
    fed.send_raw(CLUSTER_KEY, seal_bundle(forged, rogue.signer))
    assert main(["policy", "publish", *fed.cli_cluster]) == 0
    assert "the cluster's policy bundle version 1" in capsys.readouterr().out
    raw = open_envelope(seal_bundle(forged, rogue.signer), backbone_pb2.PolicyBundle)
    assert raw[1].version == 40


def test_an_opa_gateway_pushes_the_verified_pair(tmp_path: Path) -> None:
    """policy_engine = "opa": the local policy and then the bundle pair go to the OPA server
    (a test double speaking OPA's Policy and Data API, see opa_double.py)."""
    ca = CertificateAuthority.init(tmp_path / "ca", "suedwest")
    kl = make_town(tmp_path, ca, ca.cert_path, OWNER)
    apply_statements(kl.config.node.store_path, ca, [member_statement(ca, OWNER)])
    keys = kl.config.node.keys
    assert keys is not None
    owner = MemberSigner.from_file(OWNER, keys.signing_key)
    sources = read_policy_sources(BUNDLED_POLICY_DIR, include_tests=False)
    agreement = load_agreements(agreements_dir(tmp_path, "a", "holder: redact"))
    follower = PolicyFollower(kl.config.node, lambda: connect(kl.config.node.store_path))
    request = {
        "subject": {"member": "pirmasens", "cluster": "suedwest", "service": "app"},
        "action": "query",
        "resource": {
            "owner": OWNER,
            "cluster": "suedwest",
            "dataset": "parking-permits",
            "classification": "internal",
            "fields": ["holder"],
        },
        "request": {"purpose": "traffic-planning", "fields": [], "limit": 10},
        "now": "2026-06-01T00:00:00+00:00",
    }

    async def scenario(opa: OpaDouble) -> None:
        config = replace(kl.config.gateway, policy_engine="opa", opa_url=opa.url)
        gateway = Gateway(config)
        await gateway.start()
        try:
            assert gateway.policy is not None
            local = gateway.policy.decide(request)
            assert not local.allow and local.policy_version.startswith("sha256:")
            cluster = build_cluster_bundle("suedwest", 1, sources)
            assert follower.apply(seal_bundle(cluster, ca.signer), key=CLUSTER_KEY)
            mine = build_owner_bundle("suedwest", OWNER, 1, agreement, {"extra.rego": EXTRA})
            assert follower.apply(seal_bundle(mine, owner), key=bundle_key(OWNER))
            assert await gateway.refresh_policy()
            decision = gateway.policy.decide(request)
            assert decision.allow and dict(decision.mask) == {"holder": "redact"}
            assert decision.policy_version.startswith(f"cluster-v1+{OWNER}-v1:sha256:")
            assert any(name.endswith(f"owners/{OWNER}/extra.rego") for name in opa.policies)
        finally:
            await gateway.stop()

    try:
        with OpaDouble() as opa:
            asyncio.run(scenario(opa))
    finally:
        follower.close()
