"""`allmende backbone quarantine`: the operator's view of what the node refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from allmende.backbone import seal
from allmende.signing import MemberSigner
from allmende.store import connect
from allmende.v1 import backbone_pb2, catalog_pb2
from allmende_cli.main import main
from allmende_node.quarantine import Arrival, Quarantine


def town_toml(tmp_path: Path) -> Path:
    path = tmp_path / "town.toml"
    path.write_text(
        '[town]\nmember = "pirmasens"\ncluster = "suedwest"\ndata_dir = "var"\n'
        '[backbone]\nbootstrap_servers = ["127.0.0.1:1"]\n'
        '[tls]\nca = "ca.pem"\ncert = "c.pem"\nkey = "k.pem"\n'
        '[keys]\nsigning_key = "s.pem"\nencryption_key = "e.pem"\ncluster_ca = "ca.pem"\n',
        encoding="utf-8",
    )
    return path


def signed_entry() -> bytes:
    signer = MemberSigner("kaiserslautern", ed25519.Ed25519PrivateKey.generate())
    desc = catalog_pb2.DatasetDescriptor(
        owner="kaiserslautern", id="parking-sites", title="Parkhäuser", version=7
    )
    return seal(
        "kaiserslautern", "suedwest", backbone_pb2.CatalogEntry(dataset=desc), signer=signer
    )


@pytest.fixture
def config(tmp_path: Path) -> str:
    """A town whose store holds three quarantined messages (ids 1, 2, 3)."""
    toml = town_toml(tmp_path)
    conn = connect(tmp_path / "var" / "store.sqlite")
    q = Quarantine(conn)
    key = b"kaiserslautern/parking-sites"
    with conn:
        q.add(
            Arrival("t.catalog", 0, 4, None, b"\xff junk", "2026-11-22T10:00:00.000Z"),
            "",
            "undecodable: x",
        )
        q.add(
            Arrival("t.catalog", 0, 5, key, signed_entry(), "2026-11-22T10:00:01.000Z"),
            "kaiserslautern",
            "bad signature: does not verify with kaiserslautern's registered key "
            "(forged, or altered after signing)",
        )
        q.add(
            Arrival("t.catalog", 0, 9, key, signed_entry(), "2026-11-22T10:00:02.000Z"),
            "kaiserslautern",
            "replayed: version 7 of kaiserslautern/parking-sites is older than applied version 8",
        )
    conn.close()
    return str(toml)


def test_lists_newest_first_with_where_author_and_whole_reason(
    config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["backbone", "quarantine", "--config", config]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("3 of 3 quarantined message(s), newest first")
    assert out[1].split() == ["ID", "RECEIVED", "WHERE", "AUTHOR", "REASON"]
    assert out[2].split()[:4] == [
        "3",
        "2026-11-22T10:00:02.000Z",
        "t.catalog@0:9",
        "kaiserslautern",
    ]
    assert out[2].endswith("is older than applied version 8")  # never cut
    assert out[3].endswith("(forged, or altered after signing)")
    assert out[4].split()[:4] == ["1", "2026-11-22T10:00:00.000Z", "t.catalog@0:4", "-"]


def test_limit_and_json(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backbone", "quarantine", "--config", config, "--json", "--limit", "2"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in rows] == [3, 2]
    assert rows[0] == {
        "id": 3,
        "received_at": "2026-11-22T10:00:02.000Z",
        "topic": "t.catalog",
        "partition": 0,
        "offset": 9,
        "key": "kaiserslautern/parking-sites",
        "author": "kaiserslautern",
        "reason": "replayed: version 7 of kaiserslautern/parking-sites is older than applied "
        "version 8",
    }
    with pytest.raises(SystemExit) as exited:
        main(["backbone", "quarantine", "--config", config, "--limit", "0"])
    assert exited.value.code == 2
    assert "'0' is not a positive whole number" in capsys.readouterr().err


def test_show_prints_envelope_signature_and_payload(
    config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["backbone", "quarantine", "--config", config, "--show", "2"]) == 0
    out = capsys.readouterr().out
    assert "quarantined message 2" in out
    assert "where      t.catalog@0:5" in out
    assert "payload_type  allmende.v1.CatalogEntry" in out
    assert "signature     64 bytes " in out
    assert 'title: "Parkhäuser"' in out and "version: 7" in out
    assert main(["backbone", "quarantine", "--config", config, "--show", "2", "--json"]) == 0
    detail = json.loads(capsys.readouterr().out)
    assert len(bytes.fromhex(detail["envelope"]["signature"])) == 64
    assert detail["envelope"]["author"] == "kaiserslautern"
    assert main(["backbone", "quarantine", "--config", config, "--show", "1"]) == 0
    assert "not an allmende envelope" in capsys.readouterr().out


def test_unknown_id_and_missing_store_are_clear_errors(
    config: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["backbone", "quarantine", "--config", config, "--show", "42"]) == 2
    assert "no message with id 42" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    assert main(["backbone", "quarantine", "--config", str(town_toml(other))]) == 2
    err = capsys.readouterr().err
    assert "does not exist yet" in err and "Traceback" not in err


def test_an_empty_quarantine_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    toml = town_toml(tmp_path)
    connect(tmp_path / "var" / "store.sqlite").close()
    assert main(["backbone", "quarantine", "--config", str(toml)]) == 0
    assert "the quarantine is empty" in capsys.readouterr().out
