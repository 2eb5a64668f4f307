"""The catalog follower's rules, without a broker: who may announce what, and which version wins."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from allmende.backbone import seal
from allmende.config import BackboneConfig, NodeConfig
from allmende.store import connect
from allmende.v1 import backbone_pb2, catalog_pb2
from allmende_node import CatalogFollower


@pytest.fixture
def follower(tmp_path: Path) -> Iterator[tuple[CatalogFollower, sqlite3.Connection]]:
    config = NodeConfig(
        member="pirmasens",
        cluster="suedwest",
        store_path=tmp_path / "store.sqlite",
        backbone=BackboneConfig(bootstrap_servers=("127.0.0.1:9",), topic_prefix="t"),
        gateway_address="127.0.0.1:7444",
    )
    conn = connect(config.store_path)
    f = CatalogFollower(config, conn)
    yield f, conn
    f.close()
    conn.close()


def entry(
    version: int,
    *,
    author: str = "kaiserslautern",
    owner: str = "kaiserslautern",
    cluster: str = "suedwest",
    withdrawn: bool = False,
    title: str = "Parkhäuser",
) -> bytes:
    desc = catalog_pb2.DatasetDescriptor(
        owner=owner, id="parking-sites", title=title, version=version, cluster=cluster
    )
    return seal(author, cluster, backbone_pb2.CatalogEntry(dataset=desc, withdrawn=withdrawn))


def rows(conn: sqlite3.Connection) -> list[tuple[str, str, int, str]]:
    out = []
    for owner, dataset, version, blob in conn.execute(
        "SELECT owner, dataset, version, descriptor FROM catalog ORDER BY owner, dataset"
    ):
        out.append((owner, dataset, version, catalog_pb2.DatasetDescriptor.FromString(blob).title))
    return out


def test_highest_version_wins_and_replays_are_no_ops(follower) -> None:
    f, conn = follower
    assert f.apply(entry(2, title="v2"))
    assert not f.apply(entry(1, title="v1"))
    assert not f.apply(entry(2, title="v2 again"))
    assert rows(conn) == [("kaiserslautern", "parking-sites", 2, "v2")]
    assert f.apply(entry(3, title="v3"))
    assert rows(conn) == [("kaiserslautern", "parking-sites", 3, "v3")]
    assert f.applied == 2 and not f.rejected


def test_withdrawn_entry_removes_the_row_unless_a_newer_one_is_there(follower) -> None:
    f, conn = follower
    f.apply(entry(3))
    assert not f.apply(entry(2, withdrawn=True))
    assert len(rows(conn)) == 1
    assert f.apply(entry(4, withdrawn=True))
    assert rows(conn) == []
    assert not f.apply(entry(4, withdrawn=True))  # a replay is harmless


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (entry(1, author="pirmasens"), "author-not-owner"),
        (entry(1, author="sankt-wendel", owner="kaiserslautern"), "author-not-owner"),
        (entry(1, cluster="nordost"), "foreign-cluster"),
        (b"\xff\x00 not protobuf", "undecodable"),
        (None, "undecodable"),
        (
            seal("kaiserslautern", "suedwest", catalog_pb2.DatasetDescriptor(owner="x")),
            "undecodable",
        ),
        (entry(1, author="Kaiserslautern", owner="Kaiserslautern"), "invalid-descriptor"),
    ],
)
def test_refused_messages_are_counted_by_reason_and_never_applied(
    follower, raw: bytes | None, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    f, conn = follower
    assert not f.apply(raw)
    assert f.rejected == {reason: 1}
    assert rows(conn) == []
    assert reason in caplog.text


def test_descriptor_cluster_must_match_the_envelope(follower) -> None:
    f, conn = follower
    desc = catalog_pb2.DatasetDescriptor(
        owner="kaiserslautern", id="parking-sites", version=1, cluster="nordost"
    )
    raw = seal("kaiserslautern", "suedwest", backbone_pb2.CatalogEntry(dataset=desc))
    assert not f.apply(raw)
    assert f.rejected == {"foreign-cluster": 1}
    assert rows(conn) == []


def test_entries_about_our_own_datasets_are_left_to_the_importer(follower) -> None:
    f, conn = follower
    conn.execute(
        "INSERT INTO catalog VALUES ('pirmasens', 'parking-sites', 5, ?, 'now')",
        (catalog_pb2.DatasetDescriptor(title="ours").SerializeToString(),),
    )
    conn.commit()
    own = entry(2, author="pirmasens", owner="pirmasens", title="old echo")
    assert not f.apply(own)
    assert not f.apply(entry(9, author="pirmasens", owner="pirmasens", withdrawn=True))
    assert rows(conn) == [("pirmasens", "parking-sites", 5, "ours")]
    assert not f.rejected
