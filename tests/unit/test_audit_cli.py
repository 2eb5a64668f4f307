"""`allmende audit verify|report` on a town's log: exit codes, listings, formats."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from allmende.audit import AuditLog
from allmende.errors import AllmendeError
from allmende.signing import MemberSigner, write_private_key
from allmende_cli import audit_commands

OWNER = "kaiserslautern"


def run(argv: Sequence[str]) -> int:
    """What `allmende` does with ``argv`` (main.py registers the same commands)."""
    parser = argparse.ArgumentParser(prog="allmende")
    audit_commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except AllmendeError as err:
        print(f"allmende: {err}", file=sys.stderr)
        return 2


@pytest.fixture
def town(tmp_path: Path) -> Path:
    """A town whose gateway logged five decisions (closed, so fully signed)."""
    key = ed25519.Ed25519PrivateKey.generate()
    write_private_key(tmp_path / "s.pem", key)
    (tmp_path / "signing.pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    path = tmp_path / "town.toml"
    path.write_text(
        f'[town]\nmember = "{OWNER}"\ncluster = "suedwest"\ndata_dir = "var"\n'
        '[backbone]\nbootstrap_servers = ["127.0.0.1:1"]\n'
        '[tls]\nca = "ca.pem"\ncert = "c.pem"\nkey = "k.pem"\n'
        '[keys]\nsigning_key = "s.pem"\nencryption_key = "e.pem"\ncluster_ca = "ca.pem"\n',
        encoding="utf-8",
    )
    with AuditLog(tmp_path / "var" / "audit.log", MemberSigner(OWNER, key)) as log:
        for i, (member, allow) in enumerate(
            [("pirmasens", True), ("pirmasens", True), ("sankt-wendel", False)] * 2
        ):
            log.append(
                {
                    "time": f"2026-11-0{i + 1}T08:00:00+00:00",
                    "subject": {"member": member, "service": "dashboard"},
                    "owner": OWNER,
                    "dataset": "parking-sites" if i < 5 else "parking-permits",
                    "action": "query",
                    "purpose": "traffic-planning",
                    "allow": allow,
                    "rows": 10 if allow else 0,
                    "event": "decision",
                }
            )
    return path


def test_verify_ok_with_the_towns_own_key(town: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["audit", "verify", "--config", str(town)]) == 0
    out = capsys.readouterr().out
    assert "6 entries, 1 checkpoint(s), signed up to seq 6 of 6" in out
    assert "OK: every entry is intact" in out


def test_verify_lists_problems_and_exits_1(town: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = town.parent / "var" / "audit.log"
    lines = log.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace('"rows":10', '"rows":1')
    del lines[3]
    log.write_text("".join(lines))
    assert (
        run(
            ["audit", "verify", "--log", str(log), "--public-key", str(town.parent / "signing.pub")]
        )
        == 1
    )
    out = capsys.readouterr().out
    assert "line 2: edited: entry seq 2 does not match its hash" in out
    assert "line 4: removed: entries seq 4 are missing before entry seq 5" in out
    assert "2 problem(s) found" in out
    assert run(["audit", "verify", "--config", str(town), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and [p["kind"] for p in report["problems"]] == [
        "edited",
        "removed",
    ]


def test_unsigned_entries_fail_only_when_required(
    town: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = town.parent / "var" / "audit.log"
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:-1]))  # no checkpoint
    assert run(["audit", "verify", "--config", str(town)]) == 0
    assert "warning: line 1: uncovered" in capsys.readouterr().out
    assert run(["audit", "verify", "--config", str(town), "--require-checkpoint"]) == 1


def test_verify_needs_a_key_and_a_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.log").write_text("")
    assert run(["audit", "verify", "--log", str(tmp_path / "a.log")]) == 2
    assert "--log needs --public-key FILE" in capsys.readouterr().err
    assert run(["audit", "verify"]) == 2
    assert "give --config town.toml or --log PATH" in capsys.readouterr().err
    assert run(["audit", "verify", "--log", str(tmp_path / "no.log"), "--public-key", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_report_table_csv_json(town: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["audit", "report", "--config", str(town), "--dataset", "parking-sites"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == [
        "DATASET",
        "MEMBER",
        "SERVICE",
        "PURPOSE",
        "ACTION",
        "ALLOWED",
        "DENIED",
        "ROWS",
        "FIRST",
        "LAST",
    ]
    assert table[2].split()[:8] == [
        "parking-sites",
        "pirmasens",
        "dashboard",
        "traffic-planning",
        "query",
        "4",
        "0",
        "40",
    ]
    assert table[3].split()[1:8] == [
        "sankt-wendel",
        "dashboard",
        "traffic-planning",
        "query",
        "0",
        "1",
        "0",
    ]
    args = ["audit", "report", "--config", str(town), "--dataset", "parking-sites"]
    assert run([*args, "--format", "csv", "--member", "sankt-wendel"]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("parking-sites,sankt-wendel,")
    assert run([*args, "--format", "json", "--since", "2026-11-03"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["member"], r["allowed"], r["denied"]) for r in rows] == [
        ("pirmasens", 2, 0),
        ("sankt-wendel", 0, 1),
    ]
    assert run([*args, "--since", "soon"]) == 2
    assert "--since 'soon' is neither" in capsys.readouterr().err
    assert run(["audit", "report", "--config", str(town), "--dataset", "nothing"]) == 0
    assert "no requests for nothing" in capsys.readouterr().out
