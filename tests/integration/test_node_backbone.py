"""Nodes on a real broker: publishing, following, forged entries, and a backbone outage."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from allmende.backbone import (
    BackboneProducer,
    OutgoingMessage,
    Topics,
    ensure_topics,
    open_envelope,
    seal,
)
from allmende.broker import EmbeddedBroker
from allmende.ca import CertificateAuthority
from allmende.config import BackboneConfig, DatasetSource, KeyFiles, NodeConfig
from allmende.errors import BackboneError
from allmende.signing import CA_AUTHOR, CaSigner, MemberSigner
from allmende.store import connect
from allmende.trust import TrustStore
from allmende.v1 import backbone_pb2, catalog_pb2
from allmende_node import CatalogFollower, Node, Outbox

pytestmark = pytest.mark.integration

CLUSTER = "suedwest"
KA_DS = ("kaiserslautern", "parking-sites")


def wait_until(condition: Callable[[], object], what: str, timeout_s: float = 15.0) -> None:
    """Poll ``condition`` until it is true; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:.0f} s: {what}")
        time.sleep(0.05)


def parking_file(path: Path, capacities: dict[str, int]) -> Path:
    features = [
        {
            "type": "Feature",
            "properties": {"id": lot, "name": f"Parkhaus {lot}", "capacity": capacity},
            "geometry": {"type": "Point", "coordinates": [7.7 + int(lot[-1]) / 100, 49.44]},
        }
        for lot, capacity in capacities.items()
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}), "utf-8")
    return path


def member_keys(tmp_path: Path, member: str) -> KeyFiles:
    """The member's keys, issued by this test's cluster CA (created on first use)."""
    ca_dir = tmp_path / "ca"
    if (ca_dir / "ca.pem").exists():
        ca = CertificateAuthority.load(ca_dir)
    else:
        ca = CertificateAuthority.init(ca_dir, CLUSTER)
    issued = ca.issue(tmp_path / member / "certs", member)
    assert issued.signing_key is not None and issued.encryption_key is not None
    return KeyFiles(issued.signing_key, issued.encryption_key, ca.cert_path)


def node_config(
    tmp_path: Path, member: str, backbone: BackboneConfig, source: DatasetSource, **kw: float
) -> NodeConfig:
    return NodeConfig(
        member=member,
        cluster=CLUSTER,
        store_path=tmp_path / member / "store.sqlite",
        backbone=backbone,
        gateway_address=f"127.0.0.1:{7400 + len(member)}",
        datasets=(source,),
        keys=member_keys(tmp_path, member),
        publish_interval_s=0.05,
        rescan_interval_s=kw.get("rescan_interval_s", 0.1),
    )


def trust_everyone(tmp_path: Path, *configs: NodeConfig) -> None:
    """Apply the CA's statement about every issued member to each store (as the trust follower
    would from the trust topic)."""
    ca = CertificateAuthority.load(tmp_path / "ca")
    statements = [
        seal(
            CA_AUTHOR,
            CLUSTER,
            backbone_pb2.TrustStatement(
                member=backbone_pb2.MemberRecord(
                    cluster=CLUSTER,
                    member=member,
                    signing_public_key=bytes.fromhex(entry["signing_public_key"]),
                    encryption_public_key=bytes.fromhex(entry["encryption_public_key"]),
                    version=entry["version"],
                )
            ),
            signer=CaSigner(ca._key),
        )
        for member, entry in ca.registry().items()
    ]
    for config in configs:
        conn = connect(config.store_path)
        try:
            trust = TrustStore(conn, CLUSTER, ca.cert)
            for raw in statements:
                trust.apply(raw)
        finally:
            conn.close()


def two_towns(tmp_path: Path, backbone: BackboneConfig, **kw: float) -> tuple[NodeConfig, ...]:
    ka_file = parking_file(tmp_path / "ka.geojson", {"ka-p1": 400, "ka-p2": 250, "ka-p3": 90})
    ps_file = tmp_path / "ps.csv"
    ps_file.write_text("id,name,free\nps-1,Schlossplatz,12\nps-2,Rheinberger,40\n", "utf-8")
    ka = node_config(
        tmp_path,
        "kaiserslautern",
        backbone,
        DatasetSource(id="parking-sites", file=ka_file, title="Parkhäuser", classification="open"),
        **kw,
    )
    ps = node_config(
        tmp_path,
        "pirmasens",
        backbone,
        DatasetSource(id="occupancy", file=ps_file, title="Belegung", classification="open"),
        **kw,
    )
    trust_everyone(tmp_path, ka, ps)
    return ka, ps


def catalog_version(config: NodeConfig, owner: str, dataset: str) -> int | None:
    conn = connect(config.store_path, readonly=True)
    try:
        row = conn.execute(
            "SELECT version FROM catalog WHERE owner = ? AND dataset = ?", (owner, dataset)
        ).fetchone()
    finally:
        conn.close()
    return row[0] if row else None


def outbox_count(config: NodeConfig) -> int:
    conn = connect(config.store_path)
    try:
        return Outbox(conn).count()
    finally:
        conn.close()


def read_topic(backbone: BackboneConfig, topic: str, at_least: int) -> list[bytes]:
    """Every message value of ``topic`` (all partitions), once at least ``at_least`` arrived.

    All partitions, because tansu re-creates a topic that a stale client asks about with four
    partitions (kafka-python 3.0.12 ignores ``allow_auto_create_topics``).
    """
    consumer = KafkaConsumer(
        bootstrap_servers=list(backbone.bootstrap_servers),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    consumer.assign([TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)])
    values: list[bytes] = []
    try:

        def more() -> bool:
            for messages in consumer.poll(timeout_ms=200).values():
                values.extend(m.value for m in messages)
            return len(values) >= at_least

        wait_until(more, f"{at_least} message(s) on {topic}")
        return values
    finally:
        consumer.close()


@pytest.fixture
def outage_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A broker of this test's own, so stopping it disturbs no other test."""
    broker = EmbeddedBroker(log_path=tmp_path / "outage-tansu.log").start()
    try:
        yield broker
    finally:
        broker.stop(timeout_s=0.5)


def test_a_producer_closed_during_an_outage_leaves_no_thread_behind(
    outage_broker: EmbeddedBroker, topic_prefix: str
) -> None:
    """kafka-python's close gives up when a send is pending and the broker is gone, and its
    network thread would go on reconnecting for the life of the process: one per outage
    in a node that reopens its producer after each."""
    backbone = BackboneConfig((outage_broker.bootstrap,), topic_prefix=topic_prefix)
    before = set(threading.enumerate())
    producer = BackboneProducer(backbone, timeout_s=1.0)
    topic = f"{topic_prefix}.close-test"
    producer.send_all([OutgoingMessage(topic, b"k", b"delivered")])
    outage_broker.stop(timeout_s=0.5)
    with pytest.raises(BackboneError, match="did not acknowledge"):
        producer.send_all([OutgoingMessage(topic, b"k", b"pending")])
    started = time.monotonic()
    producer.close()
    assert time.monotonic() - started < 5
    left = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert left == []


def test_two_nodes_see_each_others_datasets(tmp_path: Path, backbone: BackboneConfig) -> None:
    ka, ps = two_towns(tmp_path, backbone)
    ka_node, ps_node = Node(ka), Node(ps)
    with ka_node, ps_node:
        wait_until(
            lambda: catalog_version(ps, "kaiserslautern", "parking-sites") == 1,
            "pirmasens knows kaiserslautern's parking-sites",
        )
        wait_until(
            lambda: catalog_version(ka, "pirmasens", "occupancy") == 1,
            "kaiserslautern knows pirmasens' occupancy",
        )
        [raw] = read_topic(backbone, Topics(backbone.topic_prefix).records(*KA_DS), 1)
        env, batch = open_envelope(raw, backbone_pb2.RecordBatch)
        assert env.author == "kaiserslautern" and env.signature
        changes = batch.plaintext.changes
        assert sorted(c.record_id for c in changes) == ["ka-p1", "ka-p2", "ka-p3"]

        # The rescanner notices the changed file; the new version reaches pirmasens.
        parking_file(ka.datasets[0].file, {"ka-p1": 400, "ka-p2": 251})
        wait_until(
            lambda: catalog_version(ps, "kaiserslautern", "parking-sites") == 2,
            "pirmasens sees version 2 after the file changed",
        )
    assert not ka_node.running and not ps_node.running  # stopped within the deadline


def test_a_forged_catalog_entry_is_not_applied(tmp_path: Path, backbone: BackboneConfig) -> None:
    _, ps = two_towns(tmp_path, backbone)
    sw_keys = member_keys(tmp_path, "sankt-wendel")
    trust_everyone(tmp_path, ps)
    sankt_wendel = MemberSigner.from_file("sankt-wendel", sw_keys.signing_key)
    topic = Topics(backbone.topic_prefix).catalog
    ensure_topics(backbone, [topic])

    def announce(author: str, owner: str, dataset: str, title: str) -> bytes:
        desc = catalog_pb2.DatasetDescriptor(
            owner=owner, id=dataset, title=title, version=99, cluster=CLUSTER
        )
        entry = backbone_pb2.CatalogEntry(dataset=desc)
        return seal(author, CLUSTER, entry, signer=sankt_wendel)

    producer = KafkaProducer(bootstrap_servers=list(backbone.bootstrap_servers))
    try:
        # sankt-wendel (signing as itself) claims to speak for kaiserslautern, then announces
        # its own dataset.
        for owner, dataset, title in (
            ("kaiserslautern", "parking-sites", "forged"),
            ("sankt-wendel", "bus-stops", "Haltestellen"),
        ):
            producer.send(
                topic,
                key=f"{owner}/{dataset}".encode(),
                value=announce("sankt-wendel", owner, dataset, title),
            )
        producer.flush(5)
    finally:
        producer.close()

    with Node(ps) as node:
        wait_until(
            lambda: catalog_version(ps, "sankt-wendel", "bus-stops") == 99,
            "the honest entry after the forged one is applied",
        )
        assert catalog_version(ps, "kaiserslautern", "parking-sites") is None
        assert node.follower is not None
        assert node.follower.rejected["author-not-owner"] == 1


def test_outbox_carries_events_across_a_broker_outage(
    tmp_path: Path, outage_broker: EmbeddedBroker, topic_prefix: str
) -> None:
    backbone = BackboneConfig((outage_broker.bootstrap,), topic_prefix=topic_prefix)
    ka, ps = two_towns(tmp_path, backbone, rescan_interval_s=60.0)
    with Node(ka) as ka_node, Node(ps):
        wait_until(
            lambda: (
                catalog_version(ps, *KA_DS) == 1
                and catalog_version(ka, "pirmasens", "occupancy") == 1
            ),
            "both towns know each other",
        )
        wait_until(lambda: outbox_count(ka) == outbox_count(ps) == 0, "both outboxes drained")

        port = outage_broker.port
        outage_broker.stop(timeout_s=0.5)
        parking_file(ka.datasets[0].file, {"ka-p1": 401, "ka-p3": 90, "ka-p4": 75})
        result = ka_node.import_now("parking-sites")
        assert (result.version, result.upserts, result.deletes) == (2, 2, 1)
        conn = connect(ka.store_path)
        pending = Outbox(conn).pending(100)
        conn.close()
        assert len(pending) == 2  # one catalog entry, one batch of three record changes
        assert ka_node.publisher is not None
        wait_until(lambda: ka_node.publisher.outage.down, "the publisher notices the outage")
        # kaiserslautern forgets pirmasens' entry: only the re-announcement can bring it back.
        with sqlite3.connect(ka.store_path) as db:
            db.execute("DELETE FROM catalog WHERE owner = 'pirmasens'")
        db.close()

        # The same port, empty: every topic and offset forgotten.
        restarted = EmbeddedBroker(port=port, log_path=tmp_path / "restarted-tansu.log").start()
        try:
            wait_until(lambda: outbox_count(ka) == 0, "kaiserslautern's outbox drains")
            topics = Topics(topic_prefix)
            arrived = set(read_topic(backbone, topics.records(*KA_DS), 1))
            arrived |= set(read_topic(backbone, topics.catalog, 1))
            assert {row.value for row in pending} <= arrived
            wait_until(
                lambda: catalog_version(ps, *KA_DS) == 2,
                "pirmasens' follower survives the restart and sees version 2",
            )
            wait_until(
                lambda: catalog_version(ka, "pirmasens", "occupancy") == 1,
                "pirmasens re-announced occupancy and kaiserslautern's follower applied it",
            )
            assert ka_node.publisher.outage.outages == 1
            assert not ka_node.publisher.outage.down
        finally:
            restarted.stop(timeout_s=0.5)


def test_follower_reads_a_recreated_topic_from_the_start(
    tmp_path: Path, outage_broker: EmbeddedBroker, topic_prefix: str
) -> None:
    backbone = BackboneConfig((outage_broker.bootstrap,), topic_prefix=topic_prefix)
    config = NodeConfig(
        member="pirmasens",
        cluster=CLUSTER,
        store_path=tmp_path / "store.sqlite",
        backbone=backbone,
        gateway_address="127.0.0.1:7444",
        keys=member_keys(tmp_path, "pirmasens"),
    )
    kaiserslautern = MemberSigner.from_file(
        "kaiserslautern", member_keys(tmp_path, "kaiserslautern").signing_key
    )
    trust_everyone(tmp_path, config)
    topic = Topics(topic_prefix).catalog

    def publish(datasets: list[str]) -> None:
        ensure_topics(backbone, [topic])
        producer = KafkaProducer(bootstrap_servers=list(backbone.bootstrap_servers))
        for ds in datasets:
            desc = catalog_pb2.DatasetDescriptor(
                owner="kaiserslautern", id=ds, version=1, cluster=CLUSTER
            )
            entry = backbone_pb2.CatalogEntry(dataset=desc)
            value = seal("kaiserslautern", CLUSTER, entry, signer=kaiserslautern)
            producer.send(topic, key=f"kaiserslautern/{ds}".encode(), value=value)
        producer.flush(5)
        producer.close()

    def known() -> set[str]:
        conn = connect(config.store_path, readonly=True)
        try:
            return {r[0] for r in conn.execute("SELECT dataset FROM catalog")}
        finally:
            conn.close()

    def new_follower() -> CatalogFollower:
        return CatalogFollower(config, lambda: connect(config.store_path), check_interval_s=0)

    follower = new_follower()

    def poll() -> None:
        try:
            follower.poll_once(200)
        except BackboneError:
            follower.disconnect()  # what run() does; the next poll starts over

    try:
        publish(["a", "b", "c"])
        wait_until(lambda: poll() or known() == {"a", "b", "c"}, "the first three entries")
        # A restarted follower resumes where it stopped: it reads only what is new.
        follower.close()
        follower = new_follower()
        publish(["i"])
        wait_until(lambda: poll() or "i" in known(), "the entry after the restart")
        assert follower.read == 1 and not follower.rejected
        outage_broker.stop(timeout_s=0.5)
        outage_broker.start()  # the same port, empty
        # More entries than the follower had read: offsets 0-2 of the new topic are new too.
        publish(["d", "e", "f", "g", "h"])
        wait_until(
            lambda: poll() or known() == set("abcdefghi"), "all five entries of the new topic"
        )
        assert follower.restarts + follower.outage.outages >= 1
    finally:
        follower.close()
