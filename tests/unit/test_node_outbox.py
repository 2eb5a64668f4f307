"""The node's outbox and publisher without a broker: ordering, acknowledging, backoff, logging."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from allmende.backbone import OutgoingMessage
from allmende.broker import free_port
from allmende.ca import CertificateAuthority
from allmende.config import BackboneConfig, DatasetSource, KeyFiles, NodeConfig
from allmende.errors import BackboneError
from allmende.store import connect
from allmende_node import Backoff, Outbox, Publisher, import_file, write_transaction


def make_config(tmp_path: Path, *datasets: DatasetSource) -> NodeConfig:
    # Nothing listens on a port that was free a moment ago: the backbone is down.
    return NodeConfig(
        member="kaiserslautern",
        cluster="suedwest",
        store_path=tmp_path / "store.sqlite",
        backbone=BackboneConfig(bootstrap_servers=(f"127.0.0.1:{free_port()}",), topic_prefix="t"),
        gateway_address="127.0.0.1:7443",
        datasets=datasets,
        keys=member_keys(tmp_path),
    )


def member_keys(tmp_path: Path) -> KeyFiles:
    """Keys issued by a CA of this test: a node signs all it publishes."""
    ca = CertificateAuthority.init(tmp_path / "ca", "suedwest")
    issued = ca.issue(tmp_path / "certs", "kaiserslautern")
    assert issued.signing_key is not None and issued.encryption_key is not None
    return KeyFiles(issued.signing_key, issued.encryption_key, ca.cert_path)


def messages(n: int, topic: str = "t.x") -> list[OutgoingMessage]:
    return [OutgoingMessage(topic, f"k{i}".encode(), f"v{i}".encode()) for i in range(n)]


def test_outbox_keeps_order_and_deletes_only_what_was_acknowledged(tmp_path: Path) -> None:
    conn = connect(tmp_path / "store.sqlite")
    outbox = Outbox(conn)
    assert outbox.enqueue(messages(5)) == 5
    assert outbox.count() == 5
    first = outbox.pending(3)
    assert [r.key for r in first] == [b"k0", b"k1", b"k2"]
    assert first[0].message() == OutgoingMessage("t.x", b"k0", b"v0")
    assert outbox.acknowledge([first[0].seq, first[2].seq]) == 2
    assert [r.key for r in outbox.pending(10)] == [b"k1", b"k3", b"k4"]
    assert outbox.pending_keys("t.x") == {b"k1", b"k3", b"k4"}
    assert outbox.acknowledge([]) == 0
    conn.close()


def test_enqueue_joins_the_callers_transaction(tmp_path: Path) -> None:
    conn = connect(tmp_path / "store.sqlite")
    with pytest.raises(RuntimeError), write_transaction(conn):
        Outbox(conn).enqueue(messages(2))
        raise RuntimeError("the change failed")
    assert Outbox(conn).count() == 0
    conn.close()


def test_backoff_doubles_to_five_seconds_and_resets() -> None:
    backoff = Backoff(0.2, 5.0)
    assert [backoff.next() for _ in range(7)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    backoff.reset()
    assert backoff.next() == 0.2


def test_drain_once_with_an_empty_outbox_does_not_touch_the_backbone(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    publisher = Publisher(config, lambda: connect(config.store_path))
    assert publisher.drain_once() == 0
    publisher.close()


def test_publisher_keeps_everything_and_logs_an_outage_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "occupancy.csv"
    path.write_text("id,free\nA1,3\nB2,4\n", "utf-8")
    source = DatasetSource(id="occupancy", file=path, title="Belegung", classification="open")
    config = make_config(tmp_path, source)
    conn = connect(config.store_path)
    import_file(conn, config, source)
    before = [(r.seq, r.topic, r.key, r.value) for r in Outbox(conn).pending(100)]
    assert len(before) == 2  # the catalog entry and one batch of the two records

    stop = threading.Event()
    delays: list[float] = []

    def sleep(seconds: float) -> None:
        delays.append(seconds)
        if len(delays) == 7:
            stop.set()

    publisher = Publisher(config, lambda: connect(config.store_path), sleep=sleep)
    with pytest.raises(BackboneError):
        publisher.drain_once()
    with caplog.at_level(logging.DEBUG, logger="allmende_node"):
        publisher.run(stop)

    assert delays == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "unreachable" in warnings[0].getMessage()
    assert "2 message(s) wait in the outbox" in warnings[0].getMessage()
    assert [(r.seq, r.topic, r.key, r.value) for r in Outbox(conn).pending(100)] == before
    conn.close()


def test_announce_skips_entries_already_waiting(tmp_path: Path) -> None:
    path = tmp_path / "occupancy.csv"
    path.write_text("id,free\nA1,3\n", "utf-8")
    source = DatasetSource(id="occupancy", file=path, title="Belegung", classification="open")
    config = make_config(tmp_path, source)
    conn = connect(config.store_path)
    import_file(conn, config, source)
    publisher = Publisher(config, conn)
    assert publisher.announce() == 0  # the import's entry still waits
    outbox = Outbox(conn)
    outbox.acknowledge(r.seq for r in outbox.pending(100))
    assert publisher.announce() == 1
    [row] = outbox.pending(100)
    assert (row.topic, row.key) == ("t.catalog", b"kaiserslautern/occupancy")
    publisher.close()
    conn.execute("SELECT 1")  # a given connection stays open
    conn.close()
