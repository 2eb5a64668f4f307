"""A hostile producer writes straight to the catalog topic: nothing it forges, alters or replays is
applied, everything lands in quarantine with its reason, and honest traffic keeps flowing."""

from __future__ import annotations

import copy
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from allmende.backbone import Topics, catalog_key, open_envelope, seal
from allmende.broker import EmbeddedBroker
from allmende.ca import CertificateAuthority
from allmende.signing import MemberSigner
from allmende.store import connect
from allmende.v1 import backbone_pb2, catalog_pb2
from allmende_node import Node
from allmende_node.quarantine import Quarantine

from .cluster_trust import apply_statements, member_statement, revocation_statement
from .towns import PARKING, Town, make_town

pytestmark = pytest.mark.integration

KA_PARKING = ("kaiserslautern", "parking-sites")


def wait_until(condition: Callable[[], object], what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:.0f} s: {what}")
        time.sleep(0.05)


def read(town: Town, sql: str, *args: object) -> list[tuple]:
    conn = connect(town.config.node.store_path, readonly=True)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def catalog(town: Town) -> list[tuple]:
    return read(town, "SELECT owner, dataset, version, descriptor FROM catalog ORDER BY 1, 2")


def version(town: Town, owner: str, dataset: str) -> int | None:
    rows = read(town, "SELECT version FROM catalog WHERE owner = ? AND dataset = ?", owner, dataset)
    return rows[0][0] if rows else None


def quarantined(town: Town) -> list[tuple[str, str]]:
    conn = connect(town.config.node.store_path, readonly=True)
    try:
        return [(m.author, m.reason) for m in reversed(Quarantine(conn).newest(100))]
    finally:
        conn.close()


def change_parking(town: Town, capacity: int) -> None:
    data = copy.deepcopy(PARKING)
    data["features"][0]["properties"]["capacity"] = capacity
    (town.dir / "data" / "parking.geojson").write_text(json.dumps(data), encoding="utf-8")


def catalog_messages(bootstrap: str, topic: str) -> list[bytes]:
    """Every value on the catalog topic now (all partitions: tansu may have made four)."""
    consumer = KafkaConsumer(
        bootstrap_servers=[bootstrap], auto_offset_reset="earliest", enable_auto_commit=False
    )
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or [0]]
        consumer.assign(parts)
        ends = consumer.end_offsets(parts)
        values: list[bytes] = []
        deadline = time.monotonic() + 10
        while any(consumer.position(tp) < ends[tp] for tp in parts):
            assert time.monotonic() < deadline, "could not read the catalog topic"
            for batch in consumer.poll(timeout_ms=200).values():
                values += [m.value for m in batch]
        return values
    finally:
        consumer.close()


def announcement(
    author: str, owner: str, dataset: str, version: int, signer: MemberSigner | None
) -> bytes:
    desc = catalog_pb2.DatasetDescriptor(
        owner=owner, id=dataset, title="Parkhaus echt", version=version, cluster="suedwest"
    )
    return seal(author, "suedwest", backbone_pb2.CatalogEntry(dataset=desc), signer=signer)


def test_forged_altered_and_replayed_entries_are_quarantined_and_honest_traffic_flows(
    tmp_path: Path, broker: EmbeddedBroker, topic_prefix: str
) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", "suedwest")
    towns = [
        make_town(
            tmp_path,
            ca,
            ca.cert_path,
            member,
            bootstrap=broker.bootstrap,
            topic_prefix=topic_prefix,
            datasets=True,
        )
        for member in ("kaiserslautern", "pirmasens")
    ]
    ka, ps = towns
    sw_keys = ca.issue(tmp_path / "sankt-wendel", "sankt-wendel").signing_key
    assert sw_keys is not None
    statements = [member_statement(ca, m) for m in ("kaiserslautern", "pirmasens", "sankt-wendel")]
    statements.append(revocation_statement(ca, "sankt-wendel", "key compromised"))
    for town in towns:
        apply_statements(town.config.node.store_path, ca, statements)

    def signer(town_or_member: Town | str, path: Path | None = None) -> MemberSigner:
        if isinstance(town_or_member, Town):
            keys = town_or_member.config.node.keys
            assert keys is not None
            return MemberSigner.from_file(town_or_member.member, keys.signing_key)
        assert path is not None
        return MemberSigner.from_file(town_or_member, path)

    topic = Topics(topic_prefix).catalog
    with Node(ka.config.node) as ka_node, Node(ps.config.node) as ps_node:
        wait_until(lambda: version(ps, *KA_PARKING) == 1, "pirmasens knows ka's parking v1")
        wait_until(
            lambda: version(ka, "pirmasens", "parking-sites") == 1, "ka knows pirmasens' parking"
        )
        change_parking(ka, 999)
        wait_until(lambda: version(ps, *KA_PARKING) == 2, "pirmasens applies ka's parking v2")
        [old] = [
            raw
            for raw in catalog_messages(broker.bootstrap, topic)
            if (entry := open_envelope(raw, backbone_pb2.CatalogEntry)[1]).dataset.id
            == "parking-sites"
            and entry.dataset.owner == "kaiserslautern"
            and entry.dataset.version == 1
        ][:1]
        before = {t.member: catalog(t) for t in towns}

        valid = announcement("kaiserslautern", *KA_PARKING, 60, signer(ka))
        i = valid.index(b"Parkhaus echt")
        hostile = {
            "unsigned": announcement("kaiserslautern", *KA_PARKING, 50, None),
            "forged": announcement(
                "kaiserslautern",
                *KA_PARKING,
                51,
                MemberSigner("kaiserslautern", ed25519.Ed25519PrivateKey.generate()),
            ),
            "altered": valid[:i] + b"Parkhaus fake" + valid[i + len(b"Parkhaus echt") :],
            "replayed": old,
            "wrong author": announcement("pirmasens", *KA_PARKING, 70, signer(ps)),
            "revoked": announcement(
                "sankt-wendel", "sankt-wendel", "bus-stops", 1, signer("sankt-wendel", sw_keys)
            ),
        }
        producer = KafkaProducer(bootstrap_servers=[broker.bootstrap])
        try:
            for name, value in hostile.items():
                key = catalog_key("sankt-wendel", "bus-stops") if name == "revoked" else None
                producer.send(topic, key=key or catalog_key(*KA_PARKING), value=value)
            producer.flush(5)
        finally:
            producer.close()

        expected = [
            ("kaiserslautern", "unsigned: kaiserslautern is named as author, no signature"),
            ("kaiserslautern", "bad signature"),
            ("kaiserslautern", "bad signature"),
            (
                "kaiserslautern",
                "replayed: version 1 of kaiserslautern/parking-sites is older than applied "
                "version 2",
            ),
            ("pirmasens", "wrong author: pirmasens announced dataset kaiserslautern/parking-sites"),
            ("sankt-wendel", "signed by revoked member sankt-wendel (key compromised)"),
        ]
        wait_until(lambda: len(quarantined(ps)) == 6, "pirmasens quarantines all six")
        # The owner keeps its own row and so cannot call an old echo of it a replay.
        wait_until(lambda: len(quarantined(ka)) == 5, "kaiserslautern quarantines five")
        for town, want in ((ps, expected), (ka, expected[:3] + expected[4:])):
            got = quarantined(town)
            assert [a for a, _ in got] == [a for a, _ in want]
            for (_, reason), (_, start) in zip(got, want, strict=True):
                assert reason.startswith(start), (town.member, reason)
            assert catalog(town) == before[town.member], f"{town.member} applied a hostile entry"
        assert ps_node.follower is not None and ka_node.follower is not None
        assert ps_node.follower.rejected == {
            "unsigned": 1,
            "bad-signature": 2,
            "replayed": 1,
            "author-not-owner": 1,
            "revoked-member": 1,
        }
        conn = sqlite3.connect(ps.config.node.store_path)
        try:
            offsets = [r[0] for r in conn.execute("SELECT kafka_offset FROM quarantine")]
        finally:
            conn.close()
        assert len(set(offsets)) == 6  # each kept with where it was read

        # Honest traffic after the attack still flows.
        change_parking(ka, 1234)
        wait_until(lambda: version(ps, *KA_PARKING) == 3, "pirmasens applies ka's parking v3")
        [(blob,)] = read(
            ps, "SELECT descriptor FROM catalog WHERE owner = ? AND dataset = ?", *KA_PARKING
        )
        assert catalog_pb2.DatasetDescriptor.FromString(blob).title == "Parking"
        assert len(quarantined(ps)) == 6
