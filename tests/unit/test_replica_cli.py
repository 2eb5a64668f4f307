"""`allmende backbone replicas`: the replicas a town keeps, as a table and as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from allmende.config import load_town_config
from allmende.store import connect
from allmende_cli.main import main

TOWN = """[town]
member = "pirmasens"
cluster = "suedwest"
data_dir = "var"
[backbone]
bootstrap_servers = ["127.0.0.1:9"]
[tls]
ca = "certs/ca.pem"
cert = "certs/pirmasens.pem"
key = "certs/pirmasens-key.pem"
[keys]
signing_key = "certs/pirmasens-signing-key.pem"
encryption_key = "certs/pirmasens-encryption-key.pem"
cluster_ca = "certs/ca.pem"
[node]
replicas = [{replicas}]
"""


def town(tmp_path: Path, replicas: str) -> Path:
    path = tmp_path / "town.toml"
    path.write_text(TOWN.format(replicas=replicas), encoding="utf-8")
    return path


def test_lists_each_configured_replica_with_its_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = town(tmp_path, '"kaiserslautern/parking-sites", "kaiserslautern/parking-permits"')
    conn = connect(load_town_config(path, env={}).node.store_path)
    try:
        conn.execute(
            "INSERT INTO replica_state (owner, dataset, last_sequence, dataset_version, "
            "key_version, status, updated_at) VALUES ('kaiserslautern', 'parking-permits', 46, "
            "2, 1, 'rotated-away', '2026-11-23T10:00:00Z')"
        )
        conn.execute(
            "INSERT INTO replica_records VALUES ('kaiserslautern', 'parking-permits', 'KL-1', '{}')"
        )
        conn.commit()
    finally:
        conn.close()

    assert main(["backbone", "replicas", "--config", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "2 replica(s)"
    assert [" ".join(line.split()) for line in lines[1:] if "---" not in line] == [
        "REPLICA STATUS LAST SEQUENCE DATASET VERSION KEY VERSION RECORDS UPDATED",
        "kaiserslautern/parking-sites no batch yet 0 0 - 0 -",
        "kaiserslautern/parking-permits rotated-away 46 2 1 1 2026-11-23T10:00:00Z",
    ]

    assert main(["backbone", "replicas", "--config", str(path), "--json"]) == 0
    [sites, permits] = json.loads(capsys.readouterr().out)
    assert (sites["status"], sites["records"]) == ("no batch yet", 0)
    assert permits == {
        "owner": "kaiserslautern",
        "dataset": "parking-permits",
        "status": "rotated-away",
        "last_sequence": 46,
        "dataset_version": 2,
        "key_version": 1,
        "records": 1,
        "updated_at": "2026-11-23T10:00:00Z",
        "configured": True,
    }


def test_a_town_without_replicas_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = town(tmp_path, "")
    connect(load_town_config(path, env={}).node.store_path).close()
    assert main(["backbone", "replicas", "--config", str(path)]) == 0
    assert "keeps no replicas" in capsys.readouterr().out
