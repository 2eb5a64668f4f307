"""The audit trail end to end: a real gateway logs every decision, the log verifies, the report
answers who accessed what, a full audit disk makes the gateway refuse, and the node signs every
entry onto ``<prefix>.decisions`` across restarts and broker outages."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from kafka import KafkaConsumer, TopicPartition

from allmende.audit import AuditLog, read_entries, verify
from allmende.backbone import Topics, open_envelope
from allmende.broker import EmbeddedBroker
from allmende.ca import CertificateAuthority
from allmende.client import GatewayClient
from allmende.config import BackboneConfig, NodeConfig
from allmende.errors import AuditUnavailable, PolicyDenied
from allmende.identity import gateway_server_name
from allmende.signing import MemberSigner, load_ed25519_private, verify_member
from allmende.v1 import backbone_pb2, query_pb2
from allmende_cli import audit_commands
from allmende_gateway import GatewayThread
from allmende_node.backbone_link import Backoff
from allmende_node.decision_publisher import ChainBroken, DecisionPublisher

from .towns import Town, make_town

pytestmark = pytest.mark.integration

KL = "kaiserslautern"


def wait_until(condition: Callable[[], object], what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:.0f} s: {what}")
        time.sleep(0.05)


def public_key(town: Town) -> bytes:
    keys = town.config.gateway.keys
    assert keys is not None
    return (
        load_ed25519_private(keys.signing_key)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


def client_at(owner: Town, caller: Town, ca: CertificateAuthority, service: str) -> GatewayClient:
    """``caller``'s service talking straight to ``owner``'s gateway."""
    return GatewayClient(
        owner.config.gateway.listen,
        caller.service_tls(ca, service),
        server_name=gateway_server_name(owner.cluster, owner.member),
    )


def cli(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="allmende")
    audit_commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.run(args) or 0)


def read_decisions(backbone: BackboneConfig, at_least: int) -> list[Any]:
    """Every message on the decisions topic once at least ``at_least`` arrived."""
    topic = Topics(backbone.topic_prefix).decisions
    consumer = KafkaConsumer(
        bootstrap_servers=list(backbone.bootstrap_servers),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    consumer.assign([TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)])
    values: list[Any] = []
    try:

        def more() -> bool:
            for messages in consumer.poll(timeout_ms=200).values():
                values.extend(messages)
            return len(values) >= at_least

        wait_until(more, f"{at_least} decision(s) on {topic}")
        # anything beyond: a short extra poll catches duplicates that should not be there
        for messages in consumer.poll(timeout_ms=300).values():
            values.extend(messages)
        return values
    finally:
        consumer.close()


def check_records(messages: list[Any], owner_key: bytes) -> list[dict[str, Any]]:
    """Verify each DecisionRecord's signature and chain link; returns the entries in order."""
    entries = []
    prev = "0" * 64
    for msg in messages:
        assert msg.key == KL.encode()
        env, rec = open_envelope(msg.value, backbone_pb2.DecisionRecord)
        verify_member(env, owner_key)
        assert env.author == rec.owner == KL
        entry = json.loads(rec.entry_json)
        assert entry["seq"] == rec.sequence and entry["prev"] == prev
        digest = hashlib.sha256(f"{prev}\n{rec.entry_json}".encode()).hexdigest()
        assert rec.entry_hash.hex() == digest
        prev = digest
        entries.append(entry)
    return entries


@pytest.fixture
def towns(
    tmp_path: Path, backbone: BackboneConfig
) -> Iterator[tuple[CertificateAuthority, Town, Town]]:
    ca = CertificateAuthority.init(tmp_path / "ca", "suedwest")
    bootstrap = backbone.bootstrap_servers[0]
    kl = make_town(
        tmp_path,
        ca,
        ca.cert_path,
        KL,
        datasets=True,
        agreements=True,
        bootstrap=bootstrap,
        topic_prefix=backbone.topic_prefix,
    )
    ps = make_town(tmp_path, ca, ca.cert_path, "pirmasens")
    yield ca, kl, ps


def test_every_decision_is_logged_verified_reported_and_published(
    towns: tuple[CertificateAuthority, Town, Town],
    backbone: BackboneConfig,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ca, kl, ps = towns
    log_path = kl.config.gateway.audit_log
    assert log_path is not None and log_path == kl.dir / "var" / "audit.log"
    gateway = GatewayThread(kl.config.gateway).start()
    try:
        with client_at(kl, ps, ca, "dashboard") as c:
            page = c.query(KL, "parking-sites", "traffic-planning", page_size=5)
            assert len(page.records) == 5
            permits = c.query(KL, "parking-permits", "traffic-planning", page_size=50)
            with pytest.raises(PolicyDenied):
                c.query(KL, "parking-permits", "marketing")
        with kl.client(ca, "steward") as c:
            own = c.query(KL, "parking-permits", "administration", page_size=100)
    finally:
        gateway.stop()
    entries = list(read_entries(log_path))
    assert [
        (e["subject"]["member"], e["dataset"], e["purpose"], e["allow"], e["rows"]) for e in entries
    ] == [
        ("pirmasens", "parking-sites", "traffic-planning", True, 5),
        ("pirmasens", "parking-permits", "traffic-planning", True, len(permits.records)),
        ("pirmasens", "parking-permits", "marketing", False, 0),
        (KL, "parking-permits", "administration", True, len(own.records)),
    ]
    denied = entries[2]
    assert denied["reasons"] and denied["policy_version"] and denied["event"] == "decision"
    assert denied["subject"]["service"] == "dashboard" and denied["action"] == "query"
    assert (
        len(denied["request_sha256"]) == 64 and denied["input"]["request"]["purpose"] == "marketing"
    )
    assert entries[1]["agreements"] == ["ka-ps-permits-2026"]
    report = verify(log_path, public_key(kl))
    assert report.ok and not report.warnings and report.covered_seq == 4  # closed: signed

    config = str(kl.dir / "town.toml")
    assert cli(["audit", "verify", "--config", config]) == 0
    assert "OK: every entry is intact" in capsys.readouterr().out
    assert (
        cli(
            [
                "audit",
                "report",
                "--config",
                config,
                "--dataset",
                "parking-permits",
                "--format",
                "json",
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert [(r["member"], r["purpose"], r["allowed"], r["denied"]) for r in rows] == [
        (KL, "administration", 1, 0),
        ("pirmasens", "marketing", 0, 1),
        ("pirmasens", "traffic-planning", 1, 0),
    ]

    # The node signs the entries onto the decisions topic, and a restart repeats none.
    node: NodeConfig = kl.config.node
    publisher = DecisionPublisher(node)
    try:
        assert publisher.step() == 4 and publisher.step() == 0
    finally:
        publisher.close()
    again = DecisionPublisher(node)
    try:
        assert again.step() == 0
        gateway = GatewayThread(kl.config.gateway).start()  # reopens the log: the chain goes on
        try:
            with client_at(kl, ps, ca, "dashboard") as c:
                c.query(KL, "parking-sites", "traffic-planning", page_size=2)
        finally:
            gateway.stop()
        assert again.step() == 1
    finally:
        again.close()
    published = check_records(read_decisions(backbone, 5), public_key(kl))
    assert [e["seq"] for e in published] == [1, 2, 3, 4, 5]
    assert published[:4] == [{k: v for k, v in e.items() if k != "hash"} for e in entries]
    assert verify(log_path, public_key(kl)).ok


def test_a_full_audit_disk_makes_the_gateway_refuse(
    towns: tuple[CertificateAuthority, Town, Town],
) -> None:
    ca, kl, ps = towns
    gateway = GatewayThread(replace(kl.config.gateway, audit_log=Path("/dev/full"))).start()
    expected = (
        "audit log /dev/full cannot be written: No space left on device; refusing to serve unlogged"
    )
    try:
        with client_at(kl, ps, ca, "dashboard") as c:
            calls: list[Callable[[], object]] = [
                lambda: c.query(KL, "parking-sites", "traffic-planning"),
                lambda: c.query(KL, "parking-permits", "marketing"),  # a denial is logged too
                lambda: c.aggregate(KL, "parking-sites", "traffic-planning", group_by=["district"]),
                lambda: next(
                    iter(
                        c.subscribe(
                            KL,
                            "parking-sites",
                            "traffic-planning",
                            start=query_pb2.START_FROM_BEGINNING,
                        )
                    )
                ),
            ]
            for call in calls:
                with pytest.raises(AuditUnavailable) as err:
                    call()
                assert expected in str(err.value)
                cause = err.value.__cause__
                assert isinstance(cause, grpc.RpcError)
                assert cause.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        gateway.stop()


def test_the_decision_publisher_survives_an_outage_and_a_forgotten_topic(
    tmp_path: Path, topic_prefix: str
) -> None:
    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log").start()
    backbone = BackboneConfig((broker.bootstrap,), topic_prefix=topic_prefix)
    ca = CertificateAuthority.init(tmp_path / "ca", "suedwest")
    kl = make_town(
        tmp_path, ca, ca.cert_path, KL, bootstrap=broker.bootstrap, topic_prefix=topic_prefix
    )
    node = replace(kl.config.node, publish_interval_s=0.05)
    keys = node.keys
    assert keys is not None and node.audit_log is not None
    log = AuditLog(node.audit_log, MemberSigner.from_file(KL, keys.signing_key))
    publisher = DecisionPublisher(node, backoff=Backoff(0.1, 0.5))
    stop = threading.Event()
    thread = threading.Thread(target=publisher.run, args=(stop,), daemon=True)
    restarted: EmbeddedBroker | None = None
    try:
        for i in range(3):
            log.append({"dataset": "parking-sites", "rows": i, "event": "decision"})
        thread.start()
        wait_until(lambda: publisher.position.seq == 3, "three entries published")
        port = broker.port
        broker.stop(timeout_s=0.5)
        for i in range(3, 6):
            log.append({"dataset": "parking-sites", "rows": i, "event": "decision"})
        wait_until(lambda: publisher.outage.down, "the publisher notices the outage")
        restarted = EmbeddedBroker(port=port, log_path=tmp_path / "restarted.log").start()
        wait_until(lambda: publisher.position.seq == 6, "all six published after the outage")
        # the restarted broker forgot the topic: the whole log is on it again, once
        entries = check_records(read_decisions(backbone, 6), public_key(kl))
        assert [e["rows"] for e in entries] == [0, 1, 2, 3, 4, 5]
        assert publisher.outage.outages == 1
    finally:
        stop.set()
        thread.join(5)
        log.close()
        if restarted is not None:
            restarted.stop(timeout_s=0.5)
        broker.stop(timeout_s=0.5)


def test_the_decision_publisher_stops_at_a_broken_chain(
    tmp_path: Path, backbone: BackboneConfig
) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", "suedwest")
    kl = make_town(
        tmp_path,
        ca,
        ca.cert_path,
        KL,
        bootstrap=backbone.bootstrap_servers[0],
        topic_prefix=backbone.topic_prefix,
    )
    node = kl.config.node
    assert node.keys is not None and node.audit_log is not None
    with AuditLog(
        node.audit_log, MemberSigner.from_file(KL, node.keys.signing_key), checkpoint_every=1000
    ) as log:
        for i in range(4):
            log.append({"dataset": "parking-sites", "rows": i, "event": "decision"})
    lines = node.audit_log.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace('"rows":2', '"rows":20')  # entry seq 3 edited
    node.audit_log.write_text("".join(lines))
    publisher = DecisionPublisher(node)
    try:
        assert publisher.step() == 2  # what comes before the break still goes out
        with pytest.raises(ChainBroken, match=r"audit\.log line 3: entry seq 3 does not match"):
            publisher.step()
        assert publisher.position.seq == 2
    finally:
        publisher.close()
    assert [e["rows"] for e in check_records(read_decisions(backbone, 2), public_key(kl))] == [0, 1]
