"""The node's importer: diffing files into the store, the change log, the catalog and the outbox."""

from __future__ import annotations

import copy
import hashlib
import json
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from allmende.backbone import open_envelope
from allmende.config import BackboneConfig, DatasetSource, KeyFiles, NodeConfig
from allmende.datakeys import decrypt_changes
from allmende.errors import DatasetNotFound, ImportFileError, StoreError
from allmende.signing import load_ed25519_private, verify_member, write_private_key
from allmende.store import connect
from allmende.v1 import backbone_pb2, catalog_pb2, query_pb2
from allmende_node import Outbox, import_dataset, import_file, withdraw_dataset
from allmende_node.sources import read_source

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
T1 = datetime(2026, 11, 22, 11, 0, tzinfo=UTC)

# Four car parks of Köln (Offene Daten Köln, dl-de/zero-2.0), trimmed.
FEATURES = [
    {
        "type": "Feature",
        "properties": {"id": "koeln-d-p001", "name": "Lanxess-Arena P1", "capacity": 1748},
        "geometry": {"type": "Point", "coordinates": [6.98351494, 50.93927181]},
    },
    {
        "type": "Feature",
        "properties": {"id": "koeln-d-p002", "name": "Lanxess-Arena P2", "capacity": 266},
        "geometry": {"type": "Point", "coordinates": [6.97960964, 50.93897434]},
    },
    {
        "type": "Feature",
        "properties": {"id": "koeln-d-p004", "name": "Lanxess-Arena P4", "capacity": 309},
        "geometry": {"type": "Point", "coordinates": [6.98591819, 50.93921773]},
    },
    {
        "type": "Feature",
        "properties": {"id": "koeln-d-p006", "name": "Köln Arcaden", "capacity": 1800},
        "geometry": {"type": "Point", "coordinates": [6.9979, 50.93791]},
    },
]

CSV = "id;name;free;open\nA1;Altstadt;12;true\nB2;Bahnhof;0;false\nC3;Caesarpark;7;true\n"


def write_geojson(path: Path, features: list[dict]) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}), "utf-8")
    return path


def member_keys(tmp_path: Path) -> KeyFiles:
    """A member's signing and encryption keys (the importer signs; no CA is read here)."""
    keys = KeyFiles(
        signing_key=tmp_path / "signing-key.pem",
        encryption_key=tmp_path / "encryption-key.pem",
        cluster_ca=tmp_path / "ca.pem",
    )
    if not keys.signing_key.exists():
        write_private_key(keys.signing_key, ed25519.Ed25519PrivateKey.generate())
        write_private_key(keys.encryption_key, x25519.X25519PrivateKey.generate())
    return keys


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


def parking_source(path: Path, classification: str = "open") -> DatasetSource:
    return DatasetSource(
        id="parking-sites",
        file=path,
        title="Parkhäuser",
        classification=classification,
        description="Car parks",
        keywords=("parking", "mobility"),
        license="dl-de/zero-2-0",
        source="Stadt Köln, Offene Daten Köln",
    )


@pytest.fixture
def geo(tmp_path: Path) -> tuple[NodeConfig, DatasetSource, sqlite3.Connection]:
    source = parking_source(write_geojson(tmp_path / "parking.geojson", FEATURES))
    config = make_config(tmp_path, source)
    conn = connect(config.store_path)
    yield config, source, conn
    conn.close()


def dump(conn: sqlite3.Connection) -> list[str]:
    """Every row of every table, as SQL text (blobs included), for byte-for-byte comparison."""
    return list(conn.iterdump())


def outbox_messages(conn: sqlite3.Connection) -> list[tuple[str, bytes, bytes]]:
    return [(r.topic, r.key, r.value) for r in Outbox(conn).pending(10_000)]


def record_batches(conn: sqlite3.Connection) -> list[tuple[backbone_pb2.Envelope, object]]:
    return [
        open_envelope(value, backbone_pb2.RecordBatch)
        for topic, _, value in outbox_messages(conn)
        if ".records." in topic
    ]


def record_changes(conn: sqlite3.Connection) -> list[backbone_pb2.RecordChange]:
    """The changes of every plaintext batch in the outbox, in order."""
    return [c for _, batch in record_batches(conn) for c in batch.plaintext.changes]


def catalog_entries(conn: sqlite3.Connection) -> list[tuple[backbone_pb2.Envelope, object]]:
    return [
        open_envelope(value, backbone_pb2.CatalogEntry)
        for topic, _, value in outbox_messages(conn)
        if topic == "t.catalog"
    ]


def test_geojson_import_fills_store_catalog_and_outbox(geo) -> None:
    config, source, conn = geo
    result = import_file(conn, config, source, now=T0)

    assert (result.dataset, result.version, result.upserts, result.deletes) == (
        "parking-sites",
        1,
        4,
        0,
    )
    rows = dict(conn.execute("SELECT id, json FROM records WHERE dataset = 'parking-sites'"))
    assert json.loads(rows["koeln-d-p006"]) == {
        "id": "koeln-d-p006",
        "name": "Köln Arcaden",
        "capacity": 1800,
        "geom": {"type": "Point", "coordinates": [6.9979, 50.93791]},
    }
    assert "Köln" in rows["koeln-d-p006"]  # ensure_ascii=False: stored as UTF-8 text

    blob, version, source_hash = conn.execute(
        "SELECT descriptor, version, source_hash FROM datasets"
    ).fetchone()
    assert version == 1
    assert source_hash == hashlib.sha256(source.file.read_bytes()).hexdigest()
    desc = catalog_pb2.DatasetDescriptor.FromString(blob)
    assert (desc.owner, desc.cluster, desc.gateway_address) == (
        "kaiserslautern",
        "suedwest",
        "127.0.0.1:7443",
    )
    assert desc.key_field == "id"
    assert desc.classification == catalog_pb2.CLASSIFICATION_OPEN
    assert {f.name: f.type for f in desc.fields} == {
        "id": catalog_pb2.FIELD_TYPE_STRING,
        "name": catalog_pb2.FIELD_TYPE_STRING,
        "capacity": catalog_pb2.FIELD_TYPE_INTEGER,
        "geom": catalog_pb2.FIELD_TYPE_GEOMETRY,
    }
    assert desc.record_count == 4
    assert desc.spatial_extent.min_lon == pytest.approx(6.97960964)
    assert desc.spatial_extent.max_lat == pytest.approx(50.93927181)
    assert list(desc.keywords) == ["parking", "mobility"]
    assert (desc.title, desc.license, desc.source) == (
        "Parkhäuser",
        "dl-de/zero-2-0",
        "Stadt Köln, Offene Daten Köln",
    )
    assert desc.updated_at.ToDatetime(tzinfo=UTC) == T0

    assert conn.execute("SELECT owner, dataset, version FROM catalog").fetchall() == [
        ("kaiserslautern", "parking-sites", 1)
    ]
    changes = conn.execute(
        "SELECT kind, record_id, old_json, changed_at FROM changes ORDER BY seq"
    ).fetchall()
    assert [c[:3] for c in changes] == [("upsert", f["properties"]["id"], None) for f in FEATURES]
    assert {c[3] for c in changes} == {"2026-11-22T10:00:00.000Z"}

    [(env, entry)] = catalog_entries(conn)
    assert (env.author, env.cluster) == ("kaiserslautern", "suedwest")
    assert entry.dataset.version == 1 and not entry.withdrawn
    keys = {(t, k) for t, k, _ in outbox_messages(conn)}
    assert ("t.catalog", b"kaiserslautern/parking-sites") in keys
    sent = record_changes(conn)
    assert [c.record_id for c in sent] == [f["properties"]["id"] for f in FEATURES]
    assert {c.kind for c in sent} == {query_pb2.CHANGE_KIND_UPSERT}
    assert {c.dataset_version for c in sent} == {1}
    seqs = [r[0] for r in conn.execute("SELECT seq FROM changes ORDER BY seq")]
    assert [c.sequence for c in sent] == seqs
    # One batch for the whole import, keyed by the dataset, signed by the owner.
    [(env, batch)] = record_batches(conn)
    assert ("t.records.kaiserslautern.parking-sites", b"parking-sites") in keys
    assert (batch.owner, batch.dataset, batch.dataset_version) == (
        "kaiserslautern",
        "parking-sites",
        1,
    )
    assert (batch.first_sequence, batch.last_sequence) == (seqs[0], seqs[-1])
    signing_key = load_ed25519_private(config.keys.signing_key).public_key()
    verify_member(env, signing_key.public_bytes_raw())


def test_csv_import(tmp_path: Path) -> None:
    path = tmp_path / "occupancy.csv"
    path.write_text(CSV, "utf-8")
    source = DatasetSource(
        id="parking-occupancy", file=path, title="Belegung", classification="open"
    )
    config = make_config(tmp_path, source)
    conn = connect(config.store_path)
    result = import_file(conn, config, source, now=T0)
    assert (result.version, result.upserts, result.unchanged) == (1, 3, 0)
    row = conn.execute("SELECT json FROM records WHERE id = 'B2'").fetchone()[0]
    assert json.loads(row) == {"id": "B2", "name": "Bahnhof", "free": 0, "open": False}
    desc = catalog_pb2.DatasetDescriptor.FromString(
        conn.execute("SELECT descriptor FROM datasets").fetchone()[0]
    )
    assert not desc.HasField("spatial_extent")
    assert desc.fields[2].type == catalog_pb2.FIELD_TYPE_INTEGER
    assert desc.fields[3].type == catalog_pb2.FIELD_TYPE_BOOLEAN
    conn.close()


def test_reimport_of_an_unchanged_file_writes_nothing(geo) -> None:
    config, source, conn = geo
    import_file(conn, config, source, now=T0)
    before = dump(conn)
    result = import_file(conn, config, source, now=T1)
    assert (result.version, result.upserts, result.deletes, result.unchanged) == (1, 0, 0, 4)
    assert dump(conn) == before


def test_changed_file_yields_exact_changes_and_one_version(geo) -> None:
    config, source, conn = geo
    import_file(conn, config, source, now=T0)
    Outbox(conn).acknowledge(r.seq for r in Outbox(conn).pending(100))
    old_p002 = conn.execute("SELECT json FROM records WHERE id = 'koeln-d-p002'").fetchone()[0]
    old_p004 = conn.execute("SELECT json FROM records WHERE id = 'koeln-d-p004'").fetchone()[0]

    features = copy.deepcopy(FEATURES)
    features[1]["properties"]["capacity"] = 300  # p002 changed
    del features[2]  # p004 gone
    features.append(
        {
            "type": "Feature",
            "properties": {"id": "koeln-d-p010", "name": "Neumarkt", "capacity": 520},
            "geometry": {"type": "Point", "coordinates": [6.9477, 50.9358]},
        }
    )
    write_geojson(source.file, features)
    result = import_file(conn, config, source, now=T1)

    assert (result.version, result.upserts, result.deletes, result.unchanged) == (2, 2, 1, 2)
    changes = conn.execute(
        "SELECT kind, record_id, json IS NOT NULL, old_json, changed_at FROM changes "
        "WHERE changed_at = '2026-11-22T11:00:00.000Z' ORDER BY seq"
    ).fetchall()
    assert changes == [
        ("upsert", "koeln-d-p002", 1, old_p002, "2026-11-22T11:00:00.000Z"),
        ("upsert", "koeln-d-p010", 1, None, "2026-11-22T11:00:00.000Z"),
        ("delete", "koeln-d-p004", 0, old_p004, "2026-11-22T11:00:00.000Z"),
    ]
    assert (
        json.loads(
            conn.execute("SELECT json FROM records WHERE id = 'koeln-d-p002'").fetchone()[0]
        )["capacity"]
        == 300
    )
    assert conn.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 4
    assert conn.execute("SELECT version FROM datasets").fetchone()[0] == 2
    assert conn.execute("SELECT version FROM catalog").fetchone()[0] == 2

    [(_, entry)] = catalog_entries(conn)
    assert entry.dataset.version == 2 and entry.dataset.record_count == 4
    sent = record_changes(conn)
    assert [(c.kind, c.record_id, c.dataset_version) for c in sent] == [
        (query_pb2.CHANGE_KIND_UPSERT, "koeln-d-p002", 2),
        (query_pb2.CHANGE_KIND_UPSERT, "koeln-d-p010", 2),
        (query_pb2.CHANGE_KIND_DELETE, "koeln-d-p004", 2),
    ]
    assert sent[2].json == ""
    assert sent[0].sequence < sent[1].sequence < sent[2].sequence

    again = import_file(conn, config, source, now=T1)
    assert (again.version, again.upserts, again.deletes) == (2, 0, 0)


def test_metadata_change_alone_bumps_the_version(geo) -> None:
    config, source, conn = geo
    import_file(conn, config, source, now=T0)
    Outbox(conn).acknowledge(r.seq for r in Outbox(conn).pending(100))
    retitled = replace(source, title="Parkhäuser in Köln")
    result = import_file(conn, config, retitled, now=T1)
    assert (result.version, result.upserts, result.deletes) == (2, 0, 0)
    [(_, entry)] = catalog_entries(conn)
    assert entry.dataset.title == "Parkhäuser in Köln"
    assert record_changes(conn) == []
    assert conn.execute("SELECT COUNT(*) FROM changes").fetchone()[0] == 4


def test_internal_dataset_travels_encrypted_under_its_data_key(tmp_path: Path) -> None:
    source = parking_source(
        write_geojson(tmp_path / "parking.geojson", FEATURES), classification="internal"
    )
    config = make_config(tmp_path, source)
    conn = connect(config.store_path)
    import_file(conn, config, source, now=T0)
    [(_, entry)] = catalog_entries(conn)
    assert entry.dataset.classification == catalog_pb2.CLASSIFICATION_INTERNAL
    [(_, batch)] = record_batches(conn)
    assert batch.WhichOneof("body") == "encrypted"
    assert record_changes(conn) == []
    [(version, key)] = conn.execute(
        "SELECT key_version, key FROM data_keys WHERE owner = 'kaiserslautern'"
    ).fetchall()
    assert batch.encrypted.key_version == version == 1
    [(_, _, raw)] = [m for m in outbox_messages(conn) if ".records." in m[0]]
    assert b"Arcaden" not in raw and b"koeln-d-p001" not in raw
    opened = decrypt_changes(key, batch)
    assert [c.record_id for c in opened.changes] == [f["properties"]["id"] for f in FEATURES]
    assert conn.execute("SELECT COUNT(*) FROM changes").fetchone()[0] == 4  # Subscribe
    conn.close()


@pytest.mark.parametrize(
    ("name", "text", "where"),
    [
        ("occupancy.csv", "id;name;free\nA1;Altstadt;12\nB2;Bahnhof\n", "line 3"),
        (
            "parking.geojson",
            '{"type": "FeatureCollection", "features": [{"type": "Feature", '
            '"properties": {"id": "x"}, "geometry": {"type": "Point", "coordinates": [1, 2]}},'
            ' {"type": "Feature", "properties": {"name": "no id"}, "geometry": null}]}',
            "feature 2",
        ),
        ("parking.geojson", '{"type": "FeatureCollection", "features": [', "line 1"),
    ],
)
def test_malformed_file_raises_and_leaves_the_store_untouched(
    geo, tmp_path: Path, name: str, text: str, where: str
) -> None:
    config, source, conn = geo
    import_file(conn, config, source, now=T0)
    before = dump(conn)
    bad = tmp_path / "bad" / name
    bad.parent.mkdir()
    bad.write_text(text, "utf-8")
    with pytest.raises(ImportFileError) as caught:
        import_file(conn, config, replace(source, file=bad), now=T1)
    assert caught.value.path == str(bad)
    assert where in caught.value.where
    assert dump(conn) == before


def test_missing_file_raises_import_file_error(geo, tmp_path: Path) -> None:
    config, source, conn = geo
    before = dump(conn)
    with pytest.raises(ImportFileError, match="cannot read"):
        import_file(conn, config, replace(source, file=tmp_path / "nope.geojson"))
    assert dump(conn) == before


def test_sqlite_failure_rolls_back_and_raises_store_error(geo) -> None:
    config, source, conn = geo
    parsed = read_source(source.file)
    conn.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON outbox BEGIN SELECT RAISE(ABORT, 'disk full'); END"
    )
    before = dump(conn)
    with pytest.raises(StoreError, match="disk full"):
        import_dataset(conn, config, source, parsed, now=T0)
    assert dump(conn) == before
    assert not conn.in_transaction


def test_withdraw_dataset(geo) -> None:
    config, source, conn = geo
    import_file(conn, config, source, now=T0)
    Outbox(conn).acknowledge(r.seq for r in Outbox(conn).pending(100))
    assert withdraw_dataset(conn, config, "parking-sites", now=T1) == 2
    for table in ("records", "changes", "datasets", "catalog"):
        assert conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == 0
    [(_, entry)] = catalog_entries(conn)
    assert entry.withdrawn and entry.dataset.version == 2
    with pytest.raises(DatasetNotFound):
        withdraw_dataset(conn, config, "parking-sites")
