"""The trust follower on a real broker: CA statements applied, hostile ones quarantined, outages."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kafka import KafkaProducer

from allmende.backbone import Topics, open_envelope, seal
from allmende.broker import EmbeddedBroker
from allmende.ca import CertificateAuthority
from allmende.config import BackboneConfig, KeyFiles, NodeConfig
from allmende.errors import BackboneError
from allmende.signing import CA_AUTHOR
from allmende.store import connect
from allmende.v1 import backbone_pb2
from allmende_cli.main import main
from allmende_node import TrustFollower

from .towns import publish_trust

pytestmark = pytest.mark.integration


def wait_until(condition: Callable[[], object], what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:.0f} s: {what}")
        time.sleep(0.02)


def node_config(tmp_path: Path, ca: CertificateAuthority, backbone: BackboneConfig) -> NodeConfig:
    issued = ca.issue(tmp_path / "certs", "pirmasens")
    assert issued.signing_key and issued.encryption_key
    connect(tmp_path / "store.sqlite").close()
    return NodeConfig(
        member="pirmasens",
        cluster=ca.cluster,
        store_path=tmp_path / "store.sqlite",
        backbone=backbone,
        gateway_address="127.0.0.1:7444",
        keys=KeyFiles(issued.signing_key, issued.encryption_key, ca.cert_path),
    )


def trust_table(config: NodeConfig) -> dict[str, tuple[int, bool]]:
    conn = connect(config.store_path, readonly=True)
    try:
        rows = conn.execute("SELECT member, version, revoked FROM trust").fetchall()
    finally:
        conn.close()
    return {r[0]: (r[1], bool(r[2])) for r in rows}


def quarantine(config: NodeConfig) -> list[sqlite3.Row]:
    conn = connect(config.store_path, readonly=True)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM quarantine ORDER BY id").fetchall()
    finally:
        conn.close()


def poller(follower: TrustFollower) -> Callable[[], None]:
    def poll() -> None:
        try:
            follower.poll_once(100)
        except BackboneError:
            follower.disconnect()  # what run() does; the next poll starts over

    return poll


def test_statements_are_applied_and_hostile_ones_quarantined(
    tmp_path: Path, broker: EmbeddedBroker, backbone: BackboneConfig
) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", "suedwest")
    config = node_config(tmp_path, ca, backbone)
    ca.issue(tmp_path / "certs", "kaiserslautern")
    cli = ["--dir", str(ca.directory), "--bootstrap", broker.bootstrap]
    cli += ["--topic-prefix", backbone.topic_prefix]
    assert main(["ca", "publish", *cli]) == 0
    follower = TrustFollower(config, lambda: connect(config.store_path), check_interval_s=0)
    poll = poller(follower)
    try:
        wait_until(
            lambda: (
                poll()
                or trust_table(config) == {"pirmasens": (1, False), "kaiserslautern": (1, False)}
            ),
            "both member records applied",
        )
        wait_until(lambda: poll() or follower.caught_up.is_set(), "caught up with the topic")
        before_revocation = ca.statement("pirmasens")  # version 1, for the replay below
        assert (
            main(
                ["ca", "revoke", "--member", "pirmasens", "--reason", "key lost", "--publish", *cli]
            )
            == 0
        )
        wait_until(lambda: poll() or trust_table(config)["pirmasens"] == (2, True), "revocation")

        # A hostile producer writes straight to the trust topic.
        rogue = CertificateAuthority.init(tmp_path / "rogue", "suedwest")  # same name, other key
        rogue.issue(tmp_path / "rogue-certs", "pirmasens")
        rogue.issue(tmp_path / "rogue-certs", "pirmasens")
        rogue.issue(tmp_path / "rogue-certs", "pirmasens")  # version 3 would re-admit it
        forged = rogue.statement("pirmasens")
        env, _ = open_envelope(ca.statement("kaiserslautern"), backbone_pb2.TrustStatement)
        env.payload = open_envelope(forged, backbone_pb2.TrustStatement)[0].payload
        altered = env.SerializeToString()  # our CA's signature over another payload
        unsigned_env, _ = open_envelope(forged, backbone_pb2.TrustStatement)
        unsigned_env.ClearField("signature")
        foreign = seal(
            CA_AUTHOR,
            "zentralschweiz",
            backbone_pb2.TrustStatement(
                member=backbone_pb2.MemberRecord(
                    cluster="zentralschweiz", member="luzern", version=1
                )
            ),
            signer=ca.signer,
        )
        hostile = [
            ("forged", forged),
            ("altered", altered),
            ("unsigned", unsigned_env.SerializeToString()),
            ("replayed", before_revocation),
            ("foreign", foreign),
            ("garbage", b"\x00not an envelope"),
        ]
        producer = KafkaProducer(bootstrap_servers=list(backbone.bootstrap_servers))
        try:
            for _, value in hostile:
                producer.send(
                    Topics(backbone.topic_prefix).trust, key=b"member/pirmasens", value=value
                )
            producer.flush(5)
        finally:
            producer.close()
        # Valid traffic after them is still applied.
        ca.issue(tmp_path / "certs", "sankt-wendel")
        publish_trust(ca, backbone, ["sankt-wendel"])
        wait_until(lambda: poll() or "sankt-wendel" in trust_table(config), "the next valid one")
        assert trust_table(config) == {
            "pirmasens": (2, True),
            "kaiserslautern": (1, False),
            "sankt-wendel": (1, False),
        }
        assert dict(follower.rejected) == {
            "bad-signature": 2,
            "unsigned": 1,
            "replayed": 1,
            "foreign-cluster": 1,
            "undecodable": 1,
        }
        rows = quarantine(config)
        assert [r["reason"].split(":")[0] for r in rows] == [
            "bad-signature",
            "bad-signature",
            "unsigned",
            "replayed",
            "foreign-cluster",
            "undecodable",
        ]
        assert [r["value"] for r in rows] == [v for _, v in hostile]
        assert {r["topic"] for r in rows} == {Topics(backbone.topic_prefix).trust}
        assert all(r["key"] == b"member/pirmasens" and r["kafka_offset"] >= 3 for r in rows)
        assert [r["author"] for r in rows] == ["@ca"] * 5 + [""]
        assert rows[3]["reason"] == (
            "replayed: trust statement: version 1 of pirmasens is older than the applied version 2"
        )
        print("quarantine reasons:", *(r["reason"] for r in rows), sep="\n  ")
    finally:
        follower.close()

    # A restarted follower resumes where it stopped: history is not taken for replays.
    again = TrustFollower(config, lambda: connect(config.store_path), check_interval_s=0)
    try:
        wait_until(lambda: poller(again)() or again.caught_up.is_set(), "caught up again")
        assert again.read == 0 and not again.rejected and len(quarantine(config)) == 6
    finally:
        again.close()


@pytest.fixture
def outage_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    broker = EmbeddedBroker(log_path=tmp_path / "outage-tansu.log").start()
    try:
        yield broker
    finally:
        broker.stop(timeout_s=0.5)


def test_the_follower_keeps_running_through_a_broker_restart(
    tmp_path: Path, outage_broker: EmbeddedBroker, topic_prefix: str
) -> None:
    backbone = BackboneConfig((outage_broker.bootstrap,), topic_prefix=topic_prefix)
    ca = CertificateAuthority.init(tmp_path / "ca", "suedwest")
    config = node_config(tmp_path, ca, backbone)
    publish_trust(ca, backbone)
    follower = TrustFollower(config, lambda: connect(config.store_path), check_interval_s=0.2)
    stop = threading.Event()
    thread = threading.Thread(target=follower.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: trust_table(config) == {"pirmasens": (1, False)}, "first record")
        outage_broker.stop(timeout_s=0.5)
        ca.revoke("pirmasens", "left the cluster")
        wait_until(lambda: follower.outage.down or follower.restarts, "the outage is noticed")
        outage_broker.start()  # the same port, empty: the CA publishes its registry again
        publish_trust(ca, backbone)
        wait_until(
            lambda: trust_table(config) == {"pirmasens": (2, True)}, "revocation after restart"
        )
        assert thread.is_alive() and not follower.rejected
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
