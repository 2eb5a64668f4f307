"""The node runner without a broker: start-up imports, import_now and the rescanner's rules."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from allmende.ca import CertificateAuthority
from allmende.config import BackboneConfig, DatasetSource, KeyFiles, NodeConfig
from allmende.errors import DatasetNotFound, ImportFileError
from allmende.store import connect
from allmende_node import Node


def make_config(tmp_path: Path, *datasets: DatasetSource) -> NodeConfig:
    return NodeConfig(
        member="kaiserslautern",
        cluster="suedwest",
        store_path=tmp_path / "store.sqlite",
        backbone=BackboneConfig(bootstrap_servers=("127.0.0.1:9",), topic_prefix="t"),
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


def csv_source(path: Path, text: str, dataset: str = "occupancy") -> DatasetSource:
    path.write_text(text, "utf-8")
    return DatasetSource(id=dataset, file=path, title="Belegung", classification="open")


def touch_later(path: Path, text: str) -> None:
    """Rewrite ``path`` and move its mtime on, so a coarse file system cannot hide the change."""
    before = path.stat().st_mtime_ns
    path.write_text(text, "utf-8")
    os.utime(path, ns=(before + 10**9, before + 10**9))


def dump(config: NodeConfig) -> list[str]:
    conn = connect(config.store_path)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def test_start_raises_on_a_malformed_dataset_and_starts_nothing(tmp_path: Path) -> None:
    good = csv_source(tmp_path / "good.csv", "id,free\nA1,3\n", "good")
    bad = csv_source(tmp_path / "bad.csv", "id,free\nA1,3\nB2\n", "bad")
    node = Node(make_config(tmp_path, good, bad))
    with pytest.raises(ImportFileError) as caught:
        node.start()
    assert caught.value.path == str(bad.file) and caught.value.where == "line 3"
    assert not node.running
    conn = connect(node.config.store_path)
    assert [r[0] for r in conn.execute("SELECT id FROM datasets")] == ["good"]
    conn.close()
    node.stop()  # harmless when nothing runs


def test_import_now_and_unknown_datasets(tmp_path: Path) -> None:
    source = csv_source(tmp_path / "o.csv", "id,free\nA1,3\n")
    node = Node(make_config(tmp_path, source))
    try:
        assert node.import_now("occupancy").version == 1
        assert node.import_now("occupancy").upserts == 0
        with pytest.raises(DatasetNotFound):
            node.import_now("nope")
    finally:
        node.stop()


def test_rescan_keeps_the_last_good_version_of_a_malformed_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = csv_source(tmp_path / "o.csv", "id,free\nA1,3\nB2,4\n")
    config = make_config(tmp_path, source)
    node = Node(config)
    conn = connect(config.store_path)
    try:
        node.import_now("occupancy")
        assert node.rescan_once(conn) == []  # nothing changed

        good = dump(config)
        touch_later(source.file, "id,free\nA1,3\nB2\n")
        with caplog.at_level(logging.ERROR, logger="allmende_node"):
            assert node.rescan_once(conn) == []
        assert dump(config) == good
        assert node.rescan_failures["occupancy"].where == "line 3"
        assert f"{source.file}, line 3" in caplog.text
        assert "keeps the last good version" in caplog.text
        caplog.clear()
        assert node.rescan_once(conn) == []  # tried once per change, not every scan
        assert caplog.text == ""

        touch_later(source.file, "id,free\nA1,5\nB2,4\n")
        [result] = node.rescan_once(conn)
        assert (result.version, result.upserts, result.deletes) == (2, 1, 0)
        assert "occupancy" not in node.rescan_failures

        source.file.unlink()
        with caplog.at_level(logging.ERROR, logger="allmende_node"):
            assert node.rescan_once(conn) == []
        assert "is gone" in caplog.text
    finally:
        conn.close()
        node.stop()
