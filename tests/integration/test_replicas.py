"""Replicas on a real broker: a node mirrors another member's open and encrypted datasets from
their records topics, refuses whatever a hostile producer writes there, stops when the owner
rotates the key away from it, and takes a recreated topic's history for history."""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from allmende.backbone import Topics, seal
from allmende.broker import EmbeddedBroker
from allmende.ca import CertificateAuthority
from allmende.config import NodeConfig, load_town_config
from allmende.signing import MemberSigner
from allmende.store import connect
from allmende.v1 import backbone_pb2, query_pb2
from allmende_cli.main import main
from allmende_node import Node
from allmende_node.record_reader import RecordReader

from .cluster_trust import apply_statements, member_statement, revocation_statement
from .towns import PARKING, PERMITS, Town, make_town

pytestmark = pytest.mark.integration

KA, PS, SW = "kaiserslautern", "pirmasens", "sankt-wendel"
SITES, PERMITS_DS = "parking-sites", "parking-permits"
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T], timeout_s: float = 10.0) -> T:
    """``probe()`` once it is truthy; fails naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not (value := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:.0f} s: {what}")
        time.sleep(0.05)
    return value


def query(config: NodeConfig, sql: str, *args: object) -> list[tuple]:
    conn = connect(config.store_path, readonly=True)
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def owned(town: Town, dataset: str) -> dict[str, str]:
    return dict(query(town.config.node, "SELECT id, json FROM records WHERE dataset = ?", dataset))


def replica(config: NodeConfig, dataset: str) -> dict[str, str]:
    sql = "SELECT id, json FROM replica_records WHERE owner = ? AND dataset = ?"
    return dict(query(config, sql, KA, dataset))


def state(config: NodeConfig, dataset: str) -> tuple[int, int, str] | None:
    sql = "SELECT last_sequence, key_version, status FROM replica_state WHERE dataset = ?"
    rows = query(config, sql, dataset)
    return tuple(rows[0]) if rows else None


def capacity(config: NodeConfig) -> int | None:
    """The capacity of parking site p-01 in the replica."""
    found = replica(config, SITES).get("p-01")
    return None if found is None else int(json.loads(found)["capacity"])


def mirrored(town: Town, config: NodeConfig) -> bool:
    return all(owned(town, ds) == replica(config, ds) != {} for ds in (SITES, PERMITS_DS))


def write_parking(town: Town, capacity: int, drop_last: bool = False) -> None:
    data = copy.deepcopy(PARKING)
    data["features"][0]["properties"]["capacity"] = capacity
    if drop_last:
        data["features"].pop()
    (town.dir / "data" / "parking.geojson").write_text(json.dumps(data), encoding="utf-8")


def write_permits(town: Town, holder: str, keep: int = 30) -> None:
    rows = list(csv.reader(io.StringIO(PERMITS)))
    rows[1][1] = holder
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows[: keep + 1])
    (town.dir / "data" / "permits.csv").write_text(out.getvalue(), encoding="utf-8")


def signer(town: Town) -> MemberSigner:
    assert town.config.node.keys is not None
    return MemberSigner.from_file(town.member, town.config.node.keys.signing_key)


def sites_batch(seq: int, author: str, sign: MemberSigner | None) -> bytes:
    """A one-change batch of ka's parking sites, sealed as ``author`` and signed by ``sign``."""
    change = backbone_pb2.RecordChange(
        owner=KA,
        dataset=SITES,
        kind=query_pb2.CHANGE_KIND_UPSERT,
        record_id="p-99",
        json='{"name":"Parkhaus echt"}',
        sequence=seq,
        dataset_version=99,
    )
    batch = backbone_pb2.RecordBatch(
        owner=KA, dataset=SITES, first_sequence=seq, last_sequence=seq, dataset_version=99
    )
    batch.plaintext.changes.append(change)
    return seal(author, "suedwest", batch, signer=sign)


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=[bootstrap])
    try:
        for value in values:
            producer.send(topic, key=SITES.encode(), value=value)
        producer.flush(5)
    finally:
        producer.close()


def recreate(bootstrap: str, topic: str) -> None:
    """Delete ``topic`` and create it again (a new topic id), as a restarted broker would."""
    admin = KafkaAdminClient(bootstrap_servers=[bootstrap])
    try:
        admin.delete_topics([topic])
        with contextlib.suppress(TopicAlreadyExistsError):  # the follower noticed first
            admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        admin.close()


def test_a_replica_mirrors_verified_batches_refuses_hostile_ones_and_stops_when_rotated_away(
    tmp_path: Path, broker: EmbeddedBroker, topic_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", "suedwest")
    agreements = tmp_path / "agreements"
    agreements.mkdir()
    agreement = agreements / "ka-pirmasens-replica.yaml"
    agreement.write_text(
        f"agreement: ka-pirmasens-replica\nprovider: {KA}\ndatasets: [{PERMITS_DS}]\n"
        f"consumers: [{PS}]\npurposes: [research]\nvalid_from: 2026-01-01\nreplicate: true\n"
    )
    opts = dict(bootstrap=broker.bootstrap, topic_prefix=topic_prefix)
    ka = make_town(tmp_path, ca, ca.cert_path, KA, datasets=True, agreements=agreements, **opts)
    ps = make_town(tmp_path, ca, ca.cert_path, PS, **opts)
    toml = ps.dir / "town.toml"
    toml.write_text(
        toml.read_text().replace(
            "[node]\n", f'[node]\nreplicas = ["{KA}/{SITES}", "{KA}/{PERMITS_DS}"]\n'
        )
    )
    ps_config = load_town_config(toml, env={}).node
    sw_key = ca.issue(tmp_path / SW, SW).signing_key
    assert sw_key is not None
    statements = [member_statement(ca, m) for m in (KA, PS, SW)]
    statements.append(revocation_statement(ca, SW, "key compromised"))
    for config in (ka.config.node, ps_config):
        apply_statements(config.store_path, ca, statements)
    topics = Topics(topic_prefix)

    with Node(ka.config.node), Node(ps_config) as ps_node:
        assert ps_node.replicas is not None
        sites, permits = (ps_node.replicas.follower(KA, ds) for ds in (SITES, PERMITS_DS))
        wait_for("pirmasens mirrors both datasets", lambda: mirrored(ka, ps_config))
        assert state(ps_config, PERMITS_DS)[1:] == (1, "following")
        assert state(ps_config, SITES)[1:] == (0, "following")

        # Upserts and deletes of both datasets arrive.
        write_parking(ka, 555, drop_last=True)
        write_permits(ka, "Neue Halterin", keep=29)
        wait_for(
            "pirmasens mirrors the changes",
            lambda: (
                mirrored(ka, ps_config)
                and len(replica(ps_config, SITES)) == 11
                and len(replica(ps_config, PERMITS_DS)) == 29
            ),
        )
        assert '"holder":"Neue Halterin"' in replica(ps_config, PERMITS_DS)["KL-001"]

        # A hostile producer writes straight to the records topics.
        conn = connect(ps_config.store_path)
        try:
            reader = RecordReader(ps_config, conn)
            first_sites, first_permits = reader.fetch(KA, SITES)[0], reader.fetch(KA, PERMITS_DS)[0]
        finally:
            conn.close()
        valid = sites_batch(10_003, KA, signer(ka))
        i = valid.index(b"echt")
        before = {ds: replica(ps_config, ds) for ds in (SITES, PERMITS_DS)}
        applied = {ds: state(ps_config, ds) for ds in (SITES, PERMITS_DS)}
        forger = MemberSigner(KA, ed25519.Ed25519PrivateKey.generate())
        produce(
            broker.bootstrap,
            topics.records(KA, SITES),
            [
                sites_batch(10_001, KA, None),
                sites_batch(10_002, KA, forger),
                valid[:i] + b"fake" + valid[i + 4 :],
                sites_batch(10_004, PS, signer(ps)),
                sites_batch(10_005, SW, MemberSigner.from_file(SW, sw_key)),
                first_sites,
            ],
        )
        produce(broker.bootstrap, topics.records(KA, PERMITS_DS), [first_permits])
        wait_for(
            "the six on the sites topic are refused", lambda: sum(sites.rejected.values()) == 6
        )
        wait_for("the permits replay too", lambda: permits.rejected == {"replayed": 1})
        assert sites.rejected == {
            "unsigned": 1,
            "bad-signature": 2,
            "author-not-owner": 1,
            "revoked-member": 1,
            "replayed": 1,
        }
        reasons = [
            r for (r,) in query(ps_config, "SELECT reason FROM quarantine ORDER BY topic, id")
        ]  # the permits topic sorts first
        assert reasons[0].startswith(f"replayed: batch 13-42 of {KA}/{PERMITS_DS} is not newer")
        last = applied[SITES][0]
        assert reasons[1:] == [
            f"unsigned: batch 10001-10001 of {KA}/{SITES} names {KA} as author and is not signed",
            f"bad-signature: batch 10002-10002 of {KA}/{SITES} does not verify with {KA}'s "
            "registered key (forged, or altered after signing)",
            f"bad-signature: batch 10003-10003 of {KA}/{SITES} does not verify with {KA}'s "
            "registered key (forged, or altered after signing)",
            f"author-not-owner: batch 10004-10004 of {KA}/{SITES} is authored by 'pirmasens', "
            "not by its owner",
            "revoked-member: signed by revoked member sankt-wendel (key compromised)",
            f"replayed: batch 1-12 of {KA}/{SITES} is not newer than applied sequence {last}",
        ]
        assert {ds: replica(ps_config, ds) for ds in before} == before
        assert {ds: state(ps_config, ds) for ds in applied} == applied

        # Honest traffic still flows.
        write_parking(ka, 777, drop_last=True)
        wait_for("the next change is applied", lambda: capacity(ps_config) == 777)
        assert mirrored(ka, ps_config)

        # The agreement ends: the owner rotates, pirmasens reads nothing newer of the permits.
        agreement.unlink()
        wait_for(
            "kaiserslautern rotates the permits key",
            lambda: query(ka.config.node, "SELECT 1 FROM data_keys WHERE key_version = 2"),
        )
        kept, seq = replica(ps_config, PERMITS_DS), state(ps_config, PERMITS_DS)[0]
        write_permits(ka, "Nach der Rotation", keep=29)
        write_parking(ka, 888, drop_last=True)
        wait_for(
            "the permits replica is rotated away",
            lambda: state(ps_config, PERMITS_DS) == (seq, 1, "rotated-away"),
        )
        wait_for("the open dataset still flows", lambda: capacity(ps_config) == 888)
        assert owned(ka, SITES) == replica(ps_config, SITES)
        assert replica(ps_config, PERMITS_DS) == kept
        assert permits.waiting == "rotated-away" and permits.rejected == {"replayed": 1}

        # The topic is recreated: what was applied before is history there, not a replay.
        top = state(ps_config, SITES)[0]
        recreate(broker.bootstrap, topics.records(KA, SITES))
        produce(
            broker.bootstrap,
            topics.records(KA, SITES),
            [first_sites, sites_batch(top + 1000, KA, signer(ka))],
        )
        wait_for("the new batch is applied", lambda: "p-99" in replica(ps_config, SITES))
        assert sum(sites.rejected.values()) == 6 and sites.restarts >= 1
        produce(broker.bootstrap, topics.records(KA, SITES), [first_sites])
        wait_for("a replay after the history is one", lambda: sites.rejected["replayed"] == 2)

    assert main(["backbone", "replicas", "--config", str(toml), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["dataset"], r["status"], r["records"]) for r in listed] == [
        (SITES, "following", 12),
        (PERMITS_DS, "rotated-away", 29),
    ]
