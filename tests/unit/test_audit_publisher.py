"""The decision publisher's reading side: where it resumes, replaced logs, half-written lines.

Publishing itself runs against the real broker in tests/integration/test_audit.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from allmende.audit import AuditError, AuditLog
from allmende.config import BackboneConfig, KeyFiles, NodeConfig
from allmende.errors import ConfigError
from allmende.signing import MemberSigner, write_private_key
from allmende_node.decision_publisher import ChainBroken, DecisionPublisher, PublishPosition

OWNER = "kaiserslautern"


@pytest.fixture
def node(tmp_path: Path) -> NodeConfig:
    write_private_key(tmp_path / "s.pem", ed25519.Ed25519PrivateKey.generate())
    return NodeConfig(
        member=OWNER,
        cluster="suedwest",
        store_path=tmp_path / "store.sqlite",
        backbone=BackboneConfig(("127.0.0.1:1",)),
        gateway_address="127.0.0.1:1",
        keys=KeyFiles(tmp_path / "s.pem", tmp_path / "e.pem", tmp_path / "ca.pem"),
        audit_log=tmp_path / "audit.log",
    )


def write_log(path: Path, n: int, start: int = 0) -> None:
    signer = MemberSigner(OWNER, ed25519.Ed25519PrivateKey.generate())
    with AuditLog(path, signer, checkpoint_every=2, background=False) as log:
        for i in range(start, start + n):
            log.append({"rows": i})


def settle(pub: DecisionPublisher, lines: list) -> None:
    """What ``step`` does after the broker acknowledged ``lines``."""
    last = lines[-1]
    if lines[0].data["seq"] == 1:
        pub.position.first = lines[0].data["hash"]
    pub.position.seq, pub.position.hash = last.data["seq"], last.data["hash"]
    pub.position.offset, pub.position.line = last.end, last.number + 1
    pub.position.save(pub.position_path)


def test_reads_entries_in_batches_and_resumes_from_the_saved_position(node: NodeConfig) -> None:
    assert node.audit_log is not None
    write_log(node.audit_log, 5)
    pub = DecisionPublisher(node, batch_size=3)
    first = pub.pending()
    assert [ln.data["rows"] for ln in first] == [0, 1, 2]
    settle(pub, first)
    assert pub.position_path == node.store_path.with_name("store.sqlite.decisions.json")
    again = DecisionPublisher(node, batch_size=3)
    assert again.position == PublishPosition.load(pub.position_path, node.audit_log)
    assert [ln.data["rows"] for ln in again.pending()] == [3, 4]


def test_a_half_written_line_waits(node: NodeConfig) -> None:
    assert node.audit_log is not None
    write_log(node.audit_log, 2)
    with node.audit_log.open("a") as f:
        f.write('{"hash":"ab')
    assert [ln.data["rows"] for ln in DecisionPublisher(node).pending()] == [0, 1]


def test_a_replaced_log_is_published_from_its_first_entry(node: NodeConfig) -> None:
    assert node.audit_log is not None
    write_log(node.audit_log, 4)
    pub = DecisionPublisher(node)
    settle(pub, pub.pending())
    node.audit_log.unlink()
    write_log(node.audit_log, 2, start=100)  # a new chain, shorter than what was published
    assert [ln.data["rows"] for ln in DecisionPublisher(node).pending()] == [100, 101]
    node.audit_log.unlink()
    write_log(node.audit_log, 6, start=200)  # a new chain, longer: seq 4 has another hash
    assert [ln.data["seq"] for ln in DecisionPublisher(node).pending()] == [1, 2, 3, 4, 5, 6]


def test_a_log_that_lost_published_entries_stops_the_publisher(node: NodeConfig) -> None:
    assert node.audit_log is not None
    write_log(node.audit_log, 4)
    pub = DecisionPublisher(node)
    settle(pub, pub.pending())
    lines = node.audit_log.read_text().splitlines(keepends=True)
    node.audit_log.write_text("".join(lines[:4]))  # e1 e2 c2 e3: entry 4 cut off the tail
    with pytest.raises(ChainBroken, match="no longer holds entry seq 4 that was published"):
        DecisionPublisher(node).pending()
    node.audit_log.write_text("".join(lines[2:]))  # the first entries cut away: 4 still there
    assert DecisionPublisher(node).pending() == []


def test_bad_configuration_and_position_files_are_named(node: NodeConfig, tmp_path: Path) -> None:
    from dataclasses import replace

    with pytest.raises(ConfigError, match="audit_log is not set"):
        DecisionPublisher(replace(node, audit_log=None))
    with pytest.raises(ConfigError, match=r"\[keys\] is required"):
        DecisionPublisher(replace(node, keys=None))
    position = tmp_path / "store.sqlite.decisions.json"
    position.write_text("{not json")
    with pytest.raises(AuditError, match="cannot read the decision publisher's position"):
        DecisionPublisher(node)
    position.write_text(json.dumps({"log": "/elsewhere.log", "seq": 9}))
    assert DecisionPublisher(node).position.seq == 0  # for another log: start over
    with pytest.raises(AuditError, match="/dev/full is not a regular file"):
        DecisionPublisher(replace(node, audit_log=Path("/dev/full"))).pending()
