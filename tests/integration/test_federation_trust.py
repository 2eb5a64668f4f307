"""The trust pieces wired together on running nodes: CA → trust → keys → encrypted records.

The CA publishes its registry; every node's trust follower applies it; Kaiserslautern's
running node grants the permits' data key to the members its agreements name; Pirmasens
reads and decrypts Kaiserslautern's records from the backbone. When Pirmasens' replica
agreement is withdrawn, the running node rotates the key by itself, and what is published
next is unreadable to Pirmasens but not to Sankt Wendel — although Pirmasens keeps its
masked query agreement: a grant that hides fields never carries the key.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from allmende.ca import CertificateAuthority
from allmende.config import BackboneConfig
from allmende.datakeys import KeyUnavailable
from allmende.store import connect
from allmende_node import Node
from allmende_node.record_reader import OpenedBatch, RecordReader

from .towns import AGREEMENTS, PERMITS, Town, make_town, publish_trust

pytestmark = pytest.mark.integration

T = TypeVar("T")


def eventually(what: str, probe: Callable[[], T | None], timeout_s: float = 20.0) -> T:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = probe()
        except KeyUnavailable as exc:
            result, last = None, exc
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout_s} s (last: {last})")


def read_permits(town: Town) -> list[OpenedBatch]:
    conn = connect(town.config.node.store_path)
    try:
        reader = RecordReader(town.config.node, conn)
        reader.sync_keys()
        return reader.read("kaiserslautern", "parking-permits")
    finally:
        conn.close()


@pytest.fixture
def towns(tmp_path: Path, backbone: BackboneConfig) -> Iterator[dict[str, Town]]:
    ca = CertificateAuthority.init(tmp_path / "ca", "suedwest")
    agreements = tmp_path / "agreements"
    shutil.copytree(AGREEMENTS, agreements)  # masked query agreements: no key from these
    for consumer in ("pirmasens", "sankt-wendel"):
        (agreements / f"ka-{consumer}-replica.yaml").write_text(
            f"agreement: ka-{consumer}-replica\nprovider: kaiserslautern\n"
            f"datasets: [parking-permits]\nconsumers: [{consumer}]\npurposes: [research]\n"
            "valid_from: 2026-01-01\nreplicate: true\n"
        )
    opts = dict(bootstrap=backbone.bootstrap_servers[0], topic_prefix=backbone.topic_prefix)
    built = {
        "kaiserslautern": make_town(
            tmp_path,
            ca,
            ca.cert_path,
            "kaiserslautern",
            datasets=True,
            agreements=agreements,
            **opts,
        ),
        "pirmasens": make_town(tmp_path, ca, ca.cert_path, "pirmasens", **opts),
        "sankt-wendel": make_town(tmp_path, ca, ca.cert_path, "sankt-wendel", **opts),
    }
    publish_trust(ca, backbone)
    nodes = [Node(t.config.node) for t in built.values()]
    try:
        for node in nodes:
            node.start()
        yield built
    finally:
        for node in nodes:
            node.stop()


def test_keys_follow_agreements_on_running_nodes(towns: dict[str, Town]) -> None:
    kl, ps, wnd = towns["kaiserslautern"], towns["pirmasens"], towns["sankt-wendel"]
    holders = {line.split(",")[1] for line in PERMITS.splitlines()[1:]}

    batches = eventually("pirmasens decrypting the permits", lambda: read_permits(ps))
    seen = {b.changes[0].json for b in batches if b.changes}
    assert batches[0].key_version == 1
    assert any(h in js for js in seen for h in holders)
    assert eventually("sankt-wendel decrypting the permits", lambda: read_permits(wnd))

    # The steward withdraws Pirmasens' agreement; the running node rotates on its own.
    agreements_dir = kl.config.node.agreements_dir
    assert agreements_dir is not None
    (agreements_dir / "ka-pirmasens-replica.yaml").unlink()

    def owner_key_version() -> int | None:
        conn = connect(kl.config.node.store_path, readonly=True)
        try:
            row = conn.execute(
                "SELECT MAX(key_version) FROM data_keys WHERE owner = ? AND dataset = ?",
                ("kaiserslautern", "parking-permits"),
            ).fetchone()
        finally:
            conn.close()
        return row[0] if row and row[0] and row[0] >= 2 else None

    assert eventually("the owner rotating the key", owner_key_version) == 2
    permits = kl.dir / "data" / "permits.csv"
    permits.write_text(permits.read_text().replace("Holder 1,", "Holder Eins,"))

    def newest_version(town: Town) -> int | None:
        batches = read_permits(town)
        return batches[-1].key_version if len(batches) > 1 else None

    assert (
        eventually("sankt-wendel reading the batch after rotation", lambda: newest_version(wnd))
        == 2
    )
    with pytest.raises(KeyUnavailable):
        read_permits(ps)
