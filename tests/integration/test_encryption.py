"""Encrypted datasets on a real broker: ciphertext on the topics, grants, rotation, rotate-key.

Kaiserslautern owns parking permits (restricted) and parking sites (open). Pirmasens and
Sankt Wendel hold agreements for the permits; Pirmasens loses its agreement, the key
rotates, and what Kaiserslautern publishes afterwards is unreadable to Pirmasens only.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from allmende.backbone import Topics, open_envelope, seal
from allmende.ca import CertificateAuthority
from allmende.config import BackboneConfig, NodeConfig, load_town_config
from allmende.datakeys import KeyUnavailable
from allmende.errors import DatasetNotFound, InvalidRequest
from allmende.policy import AgreementError
from allmende.signing import CA_AUTHOR, CaSigner, SignatureInvalid, verify_member
from allmende.store import connect
from allmende.trust import TrustStore, UnknownMember
from allmende.v1 import backbone_pb2
from allmende_cli.main import main
from allmende_node import Outbox, Publisher, import_file
from allmende_node.keys import KeyManager
from allmende_node.record_reader import RecordReader

pytestmark = pytest.mark.integration

CLUSTER = "suedwest"
KA = "kaiserslautern"
PERMITS = "parking-permits"
HOLDERS = [f"Erika Musterfrau {i:02d}" for i in range(1, 9)]
PLATES = [f"KL-QX {700 + i}" for i in range(1, 9)]


def permits_csv(path: Path, holders: list[str]) -> None:
    rows = [f"PM-{i:04d},{holder},{PLATES[i - 1]}" for i, holder in enumerate(holders, start=1)]
    path.write_text("permit_id,holder,plate\n" + "\n".join(rows) + "\n", encoding="utf-8")


def write_town(
    root: Path,
    ca: CertificateAuthority,
    member: str,
    backbone: BackboneConfig,
    *,
    datasets: bool = False,
    agreements: Path | None = None,
) -> Path:
    """A town folder with its keys and town.toml; with ``datasets``, permits and parking."""
    tdir = root / member
    (tdir / "data").mkdir(parents=True)
    issued = ca.issue(tdir / "certs", member)
    lines = [
        "[town]",
        f'member = "{member}"',
        f'cluster = "{CLUSTER}"',
        'data_dir = "var"',
        "[backbone]",
        f'bootstrap_servers = ["{backbone.bootstrap_servers[0]}"]',
        f'topic_prefix = "{backbone.topic_prefix}"',
        "[tls]",
        f'ca = "{ca.cert_path}"',
        f'cert = "{issued.tls.cert}"',
        f'key = "{issued.tls.key}"',
        "[keys]",
        f'signing_key = "{issued.signing_key}"',
        f'encryption_key = "{issued.encryption_key}"',
        f'cluster_ca = "{ca.cert_path}"',
        "[gateway]",
    ]
    if agreements is not None:
        lines.append(f'agreements_dir = "{agreements}"')
    if datasets:
        permits_csv(tdir / "data" / "permits.csv", HOLDERS)
        (tdir / "data" / "sites.csv").write_text(
            "id,name,capacity\nps-1,Parkhaus Pfaffplatz,420\nps-2,Parkhaus Altstadt,180\n",
            encoding="utf-8",
        )
        lines += [
            "[[node.datasets]]",
            f'id = "{PERMITS}"',
            'file = "data/permits.csv"',
            'title = "Anwohnerparkausweise"',
            'classification = "restricted"',
            'id_field = "permit_id"',
            "[[node.datasets]]",
            'id = "parking-sites"',
            'file = "data/sites.csv"',
            'title = "Parkhäuser"',
            'classification = "open"',
        ]
    (tdir / "town.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tdir / "town.toml"


def node(toml: Path) -> NodeConfig:
    return load_town_config(toml, env={}).node


def trust_statement(ca: CertificateAuthority, member: str, entry: dict) -> bytes:
    """The CA's signed MemberRecord for ``member`` from its registry entry."""
    record = backbone_pb2.MemberRecord(
        cluster=CLUSTER,
        member=member,
        signing_public_key=bytes.fromhex(entry["signing_public_key"]),
        encryption_public_key=bytes.fromhex(entry["encryption_public_key"]),
        version=entry["version"],
    )
    return seal(
        CA_AUTHOR,
        CLUSTER,
        backbone_pb2.TrustStatement(member=record),
        signer=CaSigner(ca._key),
    )


def revocation(ca: CertificateAuthority, member: str, version: int) -> bytes:
    stmt = backbone_pb2.TrustStatement(
        revocation=backbone_pb2.Revocation(
            cluster=CLUSTER, member=member, reason="left the cluster", version=version
        )
    )
    return seal(CA_AUTHOR, CLUSTER, stmt, signer=CaSigner(ca._key))


def trust_all(ca: CertificateAuthority, *configs: NodeConfig) -> None:
    """Apply the CA's statement about every issued member to each store (the trust follower's
    job in a running node)."""
    statements = [trust_statement(ca, m, e) for m, e in ca.registry().items()]
    for config in configs:
        conn = connect(config.store_path)
        try:
            for raw in statements:
                TrustStore(conn, CLUSTER, ca.cert).apply(raw)
        finally:
            conn.close()


def agreement(
    folder: Path, consumer: str, *, until: str = "2099-01-01", replicate: bool = True
) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / f"ka-{consumer}.yaml"
    path.write_text(
        f"agreement: ka-{consumer}-permits\nprovider: {KA}\ndatasets: [{PERMITS}]\n"
        f"consumers: [{consumer}]\npurposes: [research]\nvalid_from: 2020-01-01\n"
        f"valid_until: {until}\nreplicate: {'true' if replicate else 'false'}\n",
        encoding="utf-8",
    )
    return path


def import_all(config: NodeConfig) -> None:
    conn = connect(config.store_path)
    try:
        for source in config.datasets:
            import_file(conn, config, source)
    finally:
        conn.close()


def publish(config: NodeConfig) -> None:
    """Send the whole outbox to the backbone, as the node's publisher thread does."""
    publisher = Publisher(config, connect(config.store_path))
    try:
        while publisher.drain_once():
            pass
        assert publisher.outbox.count() == 0
    finally:
        publisher.close()
        publisher.outbox.conn.close()


def with_store(config: NodeConfig, use: Callable[[sqlite3.Connection], object]) -> object:
    conn = connect(config.store_path)
    try:
        return use(conn)
    finally:
        conn.close()


def raw_values(backbone: BackboneConfig, topic: str) -> list[bytes]:
    """Every value of ``topic``, read with a plain kafka-python consumer (no allmende code)."""
    consumer = KafkaConsumer(
        bootstrap_servers=list(backbone.bootstrap_servers),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(parts)
        end = consumer.end_offsets(parts)
        values: list[bytes] = []
        deadline = time.monotonic() + 15
        while any(consumer.position(tp) < end[tp] for tp in parts):
            assert time.monotonic() < deadline, f"{topic} not read to its end within 15 s"
            for messages in consumer.poll(timeout_ms=200).values():
                values += [m.value for m in messages]
        return values
    finally:
        consumer.close()


def kcat_bytes(backbone: BackboneConfig, topic: str) -> bytes | None:
    """The topic's raw values as Debian's kcat prints them; None when kcat is not installed.

    librdkafka 2.0.2 (Debian 12's) misparses the tagged fields of tansu's ApiVersions v3
    answer, so kcat is told to skip that request and to read partition 0 from offset 0
    (librdkafka's ListOffsets v0 does not parse either). Against Apache Kafka
    ``kcat -C -b HOST:PORT -t TOPIC -e -f '%s'`` is all it takes.
    """
    kcat = shutil.which("kcat")
    if kcat is None:
        return None
    tansu = ["-X", "api.version.request=false", "-X", "broker.version.fallback=0.9.0"]
    read = ["-C", "-b", backbone.bootstrap_servers[0], "-t", topic, "-p", "0", "-o", "0", "-e"]
    done = subprocess.run(
        [kcat, *tansu, *read, "-q", "-f", "%s"],
        capture_output=True,
        timeout=30,
        check=True,
    )
    return done.stdout


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path / "ca", CLUSTER)


def test_restricted_records_are_ciphertext_and_rotation_cuts_off_a_member(
    tmp_path: Path, ca: CertificateAuthority, backbone: BackboneConfig
) -> None:
    agreements = tmp_path / "agreements"
    ps_agreement = agreement(agreements, "pirmasens")
    agreement(agreements, "sankt-wendel")
    ka = node(write_town(tmp_path, ca, KA, backbone, datasets=True, agreements=agreements))
    ps = node(write_town(tmp_path, ca, "pirmasens", backbone))
    wnd = node(write_town(tmp_path, ca, "sankt-wendel", backbone))
    trust_all(ca, ka, ps, wnd)
    topics = Topics(backbone.topic_prefix)

    import_all(ka)
    changes = with_store(ka, lambda c: KeyManager(ka, c).run_once())
    assert [(c.dataset, c.key_version, c.rotated, c.granted) for c in changes] == [
        (PERMITS, 1, False, ("pirmasens", "sankt-wendel"))
    ]
    assert with_store(ka, lambda c: KeyManager(ka, c).run_once()) == []  # nothing changed
    publish(ka)

    # A generic Kafka client sees ciphertext: none of the permits' values, nor the data key.
    secrets = [s.encode() for s in HOLDERS + PLATES] + [b"PM-0001", b"Musterfrau"]
    raw = raw_values(backbone, topics.records(KA, PERMITS))
    assert len(raw) == 1 and all(s not in raw[0] for s in secrets)
    [[data_key]] = with_store(ka, lambda c: c.execute("SELECT key FROM data_keys").fetchall())
    assert all(data_key not in v for v in raw_values(backbone, topics.keys))
    from_kcat = kcat_bytes(backbone, topics.records(KA, PERMITS))
    if from_kcat is not None:
        assert from_kcat == raw[0]
        assert all(s not in from_kcat for s in secrets)

    # Pirmasens is entitled: it unwraps its grant and reads the records.
    ps_conn, wnd_conn = connect(ps.store_path), connect(wnd.store_path)
    try:
        ps_reader, wnd_reader = RecordReader(ps, ps_conn), RecordReader(wnd, wnd_conn)
        assert ps_reader.sync_keys() == 1
        [batch] = ps_reader.read(KA, PERMITS)
        assert (batch.author, batch.key_version) == (KA, 1)
        assert sorted(c.record_id for c in batch.changes) == [f"PM-{i:04d}" for i in range(1, 9)]
        assert any(HOLDERS[0] in c.json for c in batch.changes)

        # Its agreement is removed: the key rotates; later records are sealed with version 2.
        ps_agreement.unlink()
        [change] = with_store(ka, lambda c: KeyManager(ka, c).run_once())
        assert (change.key_version, change.rotated) == (2, True)
        assert (change.granted, change.revoked) == (("sankt-wendel",), ("pirmasens",))
        permits_csv(ka.datasets[0].file, ["Neue Halterin", *HOLDERS[1:]])
        import_all(ka)
        publish(ka)

        assert ps_reader.sync_keys() == 0
        first, second = ps_reader.fetch(KA, PERMITS)
        assert ps_reader.open_batch(first).key_version == 1  # what it was entitled to stays
        with pytest.raises(KeyUnavailable, match="rotated the key away") as caught:
            ps_reader.open_batch(second)
        assert (caught.value.owner, caught.value.dataset, caught.value.key_version) == (
            KA,
            PERMITS,
            2,
        )

        # Sankt Wendel, still entitled, reads both.
        assert wnd_reader.sync_keys() == 2
        old, new = wnd_reader.read(KA, PERMITS)
        assert (old.key_version, new.key_version) == (1, 2)
        [renamed] = new.changes
        assert "Neue Halterin" in renamed.json
        assert wnd_reader.rejected == {}
    finally:
        ps_conn.close()
        wnd_conn.close()


def test_an_open_dataset_stays_plaintext_and_signed(
    tmp_path: Path, ca: CertificateAuthority, backbone: BackboneConfig
) -> None:
    ka = node(write_town(tmp_path, ca, KA, backbone, datasets=True))
    ps = node(write_town(tmp_path, ca, "pirmasens", backbone))
    trust_all(ca, ka, ps)
    import_all(ka)
    publish(ka)
    [raw] = raw_values(backbone, Topics(backbone.topic_prefix).records(KA, "parking-sites"))
    assert b"Parkhaus Pfaffplatz" in raw
    env, batch = open_envelope(raw, backbone_pb2.RecordBatch)
    assert batch.WhichOneof("body") == "plaintext"
    signing_key = ca.registry()[KA]["signing_public_key"]
    verify_member(env, bytes.fromhex(signing_key))
    conn = connect(ps.store_path)
    try:
        [opened] = RecordReader(ps, conn).read(KA, "parking-sites")  # no key needed
        assert opened.key_version == 0 and len(opened.changes) == 2
    finally:
        conn.close()


def test_reader_refuses_batches_not_signed_by_their_owner(
    tmp_path: Path, ca: CertificateAuthority, backbone: BackboneConfig
) -> None:
    ka = node(write_town(tmp_path, ca, KA, backbone, datasets=True))
    ps = node(write_town(tmp_path, ca, "pirmasens", backbone))
    trust_all(ca, ka, ps)
    import_all(ka)
    [raw] = [
        r.value
        for r in with_store(ka, lambda c: Outbox(c).pending(100))
        if r.topic.endswith("parking-sites")
    ]
    conn = connect(ps.store_path)
    try:
        reader = RecordReader(ps, conn)
        assert reader.open_batch(raw, KA, "parking-sites").owner == KA
        env, batch = open_envelope(raw, backbone_pb2.RecordBatch)
        batch.plaintext.changes[0].json = '{"capacity":1}'
        env.payload = batch.SerializeToString()
        with pytest.raises(SignatureInvalid):
            reader.open_batch(env.SerializeToString())
        env.author = "pirmasens"
        with pytest.raises(SignatureInvalid, match="not by its owner"):
            reader.open_batch(env.SerializeToString())
        TrustStore(conn, CLUSTER, ca.cert).apply(revocation(ca, KA, 99))
        with pytest.raises(UnknownMember, match="revoked"):
            reader.open_batch(raw)
    finally:
        conn.close()


def test_key_manager_follows_agreements_and_trust(
    tmp_path: Path, ca: CertificateAuthority, backbone: BackboneConfig
) -> None:
    """No broker needed: grants and rotations are outbox messages."""
    agreements = tmp_path / "agreements"
    agreement(agreements, "pirmasens", until="2030-01-01")
    ka = node(write_town(tmp_path, ca, KA, backbone, datasets=True, agreements=agreements))
    write_town(tmp_path, ca, "pirmasens", backbone)
    trust_all(ca, ka)
    import_all(ka)
    now = [datetime(2026, 11, 22, tzinfo=UTC)]
    conn = connect(ka.store_path)
    try:
        Outbox(conn).acknowledge(r.seq for r in Outbox(conn).pending(1000))
        keys = KeyManager(ka, conn, clock=lambda: now[0])

        def grants() -> list[tuple[str, int, bool]]:
            out = []
            for row in Outbox(conn).pending(1000):
                _, grant = open_envelope(row.value, backbone_pb2.DataKeyGrant)
                assert row.key == f"{KA}/{PERMITS}/{grant.recipient}".encode()
                out.append((grant.recipient, grant.key_version, grant.revoked))
            Outbox(conn).acknowledge(r.seq for r in Outbox(conn).pending(1000))
            return sorted(out)

        assert keys.datasets() == [PERMITS]  # the open dataset has no key
        keys.run_once()
        assert grants() == [("pirmasens", 1, False)]

        # The forced rotation of the CLI; then a newcomer receives every version.
        assert keys.rotate(PERMITS).key_version == 2
        assert grants() == [("pirmasens", 2, False)]
        agreement(agreements, "sankt-wendel")
        assert keys.run_once() == []  # not a member yet: not entitled
        assert grants() == []
        write_town(tmp_path, ca, "sankt-wendel", backbone)
        trust_all(ca, ka)
        [change] = keys.run_once()
        assert (change.rotated, change.granted) == (False, ("sankt-wendel",))
        assert grants() == [("sankt-wendel", 1, False), ("sankt-wendel", 2, False)]
        assert keys.republish() == 4  # after a backbone lost its topics: every grant again
        assert len(grants()) == 4

        # The CA revokes Sankt Wendel: rotation away from it.
        TrustStore(conn, CLUSTER, ca.cert).apply(revocation(ca, "sankt-wendel", 99))
        [change] = keys.run_once()
        assert (change.key_version, change.revoked) == (3, ("sankt-wendel",))
        assert grants() == [("pirmasens", 3, False), ("sankt-wendel", 3, True)]

        # Pirmasens' agreement expires with time.
        now[0] = datetime(2030, 1, 1, tzinfo=UTC) + timedelta(seconds=1)
        [change] = keys.run_once()
        assert (change.key_version, change.revoked, change.granted) == (4, ("pirmasens",), ())
        assert grants() == [("pirmasens", 4, True)]

        # An unreadable agreement changes nothing (no mass rotation on a typo).
        (agreements / "broken.yaml").write_text("agreement: [\n", encoding="utf-8")
        with pytest.raises(AgreementError):
            keys.run_once()
        assert grants() == []
        assert keys.current_key(PERMITS).version == 4

        with pytest.raises(InvalidRequest, match="open"):
            keys.rotate("parking-sites")
        with pytest.raises(DatasetNotFound):
            keys.rotate("nope")
    finally:
        conn.close()


def test_rotate_key_command(
    tmp_path: Path, ca: CertificateAuthority, backbone: BackboneConfig, capsys
) -> None:
    agreements = tmp_path / "agreements"
    agreement(agreements, "pirmasens")
    toml = write_town(tmp_path, ca, KA, backbone, datasets=True, agreements=agreements)
    node(write_town(tmp_path, ca, "pirmasens", backbone))
    ka = node(toml)
    trust_all(ca, ka)
    import_all(ka)

    assert main(["dataset", "rotate-key", "--config", str(toml), "--dataset", PERMITS]) == 0
    out = capsys.readouterr().out
    assert "kaiserslautern/parking-permits: data key version 2; granted to pirmasens" in out
    versions = with_store(
        ka, lambda c: [r[0] for r in c.execute("SELECT key_version FROM data_keys ORDER BY 1")]
    )
    assert versions == [1, 2]
    assert main(["dataset", "rotate-key", "--config", str(toml), "--dataset", "parking-sites"]) == 2
    assert "is open" in capsys.readouterr().err


def test_a_group_of_consumers_gets_the_data_key(
    tmp_path: Path, ca: CertificateAuthority, backbone: BackboneConfig
) -> None:
    """Consumers named through groups.yaml are entitled like members named one by one."""
    agreements = tmp_path / "agreements"
    agreements.mkdir()
    (agreements / "groups.yaml").write_text(
        "groups:\n  partners: [pirmasens, sankt-wendel]\n", encoding="utf-8"
    )
    (agreements / "ka-partners.yaml").write_text(
        f"agreement: ka-partners-permits\nprovider: {KA}\ndatasets: [{PERMITS}]\n"
        "consumers: [group:partners]\npurposes: [research]\nvalid_from: 2020-01-01\n"
        "replicate: true\n",
        encoding="utf-8",
    )
    ka = node(write_town(tmp_path, ca, KA, backbone, datasets=True, agreements=agreements))
    write_town(tmp_path, ca, "pirmasens", backbone)
    write_town(tmp_path, ca, "sankt-wendel", backbone)
    trust_all(ca, ka)
    import_all(ka)
    conn = connect(ka.store_path)
    try:
        Outbox(conn).acknowledge(r.seq for r in Outbox(conn).pending(1000))
        [change] = KeyManager(ka, conn).run_once()
        assert change.granted == ("pirmasens", "sankt-wendel")
    finally:
        conn.close()
