"""`verify` finds every altered, removed or reordered entry and every bad checkpoint."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from allmende.audit import (
    AuditError,
    AuditLog,
    canonical_json,
    chain_hash,
    checkpoint_envelope,
    read_entries,
    verify,
)
from allmende.errors import IdentityError
from allmende.signing import MemberSigner

OWNER = "kaiserslautern"
KEY = ed25519.Ed25519PrivateKey.generate()
PUBLIC = KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def entry(i: int) -> dict[str, Any]:
    return {
        "time": f"2026-11-30T10:00:{i:02d}+00:00",
        "subject": {"member": "pirmasens", "service": "dashboard"},
        "owner": OWNER,
        "dataset": "parking-sites",
        "action": "query",
        "purpose": "traffic-planning",
        "allow": i % 3 != 0,
        "reasons": ["why"],
        "rows": i,
        "event": "decision",
    }


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    """12 entries, checkpoints after 5, 10 and (closing) 12: lines e1-e5 c5 e6-e10 c10 e11 e12 c12."""
    path = tmp_path / "audit.log"
    with AuditLog(path, MemberSigner(OWNER, KEY), checkpoint_every=5, background=False) as log:
        for i in range(1, 13):
            log.append(entry(i))
    return path


def read(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def write(path: Path, lines: list[str]) -> None:
    path.write_text("".join(lines))


def kinds(path: Path, keys: Any = PUBLIC) -> list[tuple[int, str]]:
    return [(p.line, p.kind) for p in verify(path, keys).problems]


def rehash_from(lines: list[str], start: int) -> list[str]:
    """What a forger does: recompute every entry's prev and hash from line index ``start``."""
    out = list(lines)
    prev = None
    for i, line in enumerate(out):
        data = json.loads(line)
        if "checkpoint" in data:
            continue
        if i >= start and prev is not None:
            data["prev"] = prev
            body = {k: v for k, v in data.items() if k != "hash"}
            data["hash"] = chain_hash(prev, canonical_json(body))
            out[i] = json.dumps(data) + "\n"
        prev = data["hash"]
    return out


def test_an_intact_closed_log_verifies(log_path: Path) -> None:
    report = verify(log_path, PUBLIC)
    assert report.ok and not report.warnings
    assert (report.entries, report.checkpoints, report.last_seq, report.covered_seq) == (
        12,
        3,
        12,
        12,
    )


def test_an_edited_entry_is_found(log_path: Path) -> None:
    lines = read(log_path)
    lines[2] = lines[2].replace('"purpose":"traffic-planning"', '"purpose":"research"')
    write(log_path, lines)
    assert kinds(log_path) == [(3, "edited")]


def test_an_edited_entry_with_recomputed_hashes_breaks_the_signed_checkpoint(
    log_path: Path,
) -> None:
    lines = read(log_path)
    lines[2] = lines[2].replace('"rows":3', '"rows":3000')
    write(log_path, rehash_from(lines, 2))
    found = kinds(log_path)
    assert (6, "checkpoint-mismatch") in found and (12, "checkpoint-mismatch") in found


def test_a_deleted_entry_is_found(log_path: Path) -> None:
    lines = read(log_path)
    del lines[7]  # entry seq 7
    write(log_path, lines)
    report = verify(log_path, PUBLIC)
    assert [(p.line, p.kind) for p in report.problems] == [(8, "removed")]
    assert "entries seq 7 are missing before entry seq 8" in report.problems[0].message


def test_a_deleted_and_renumbered_entry_breaks_the_checkpoint(log_path: Path) -> None:
    lines = read(log_path)
    del lines[7]
    for i in range(7, len(lines)):
        data = json.loads(lines[i])
        if "seq" in data:
            data["seq"] -= 1
            lines[i] = json.dumps(data) + "\n"
    write(log_path, rehash_from(lines, 7))
    found = {kind for _, kind in kinds(log_path)}
    assert "checkpoint-mismatch" in found


def test_swapped_entries_are_found(log_path: Path) -> None:
    lines = read(log_path)
    lines[1], lines[2] = lines[2], lines[1]
    write(log_path, lines)
    report = verify(log_path, PUBLIC)
    assert [(p.line, p.kind) for p in report.problems] == [(2, "reordered"), (3, "reordered")]
    assert "entry seq 3 comes before seq 2 at line 3" in report.problems[0].message


def test_a_removed_signed_tail_is_found(log_path: Path) -> None:
    lines = read(log_path)
    write(log_path, [*lines[:12], lines[14]])  # entries 11 and 12 gone, their checkpoint kept
    assert kinds(log_path) == [(13, "removed")]


def test_a_removed_tail_after_the_last_checkpoint_is_reported_as_unsigned(
    log_path: Path,
) -> None:
    lines = read(log_path)
    write(log_path, lines[:13])  # e11 stays, e12 and the closing checkpoint are gone
    report = verify(log_path, PUBLIC)
    assert report.ok  # a local file cannot show a cut-off unsigned tail ...
    assert [(w.line, w.kind, w.seq) for w in report.warnings] == [(13, "uncovered", 11)]
    assert "not yet covered by a checkpoint" in report.warnings[0].message  # ... so it says so


def test_a_forged_checkpoint_signature_is_found(log_path: Path) -> None:
    lines = read(log_path)
    cp = json.loads(lines[5])
    sig = cp["checkpoint"]["signature"]
    cp["checkpoint"]["signature"] = ("0" if sig[0] != "0" else "1") + sig[1:]
    lines[5] = json.dumps(cp) + "\n"
    write(log_path, lines)
    assert kinds(log_path) == [(6, "checkpoint-signature")]


def test_a_checkpoint_re_signed_by_another_key_is_found(log_path: Path) -> None:
    lines = read(log_path)
    lines[2] = lines[2].replace('"rows":3', '"rows":3000')
    lines = rehash_from(lines, 2)
    forger = MemberSigner(OWNER, ed25519.Ed25519PrivateKey.generate())
    for i, line in enumerate(lines):
        data = json.loads(line)
        if "checkpoint" in data:
            cp = data["checkpoint"]
            cp["hash"] = json.loads(lines[i - 1])["hash"]
            env = checkpoint_envelope({k: cp[k] for k in ("hash", "seq", "signer", "time")})
            forger.sign(env)
            cp["signature"] = env.signature.hex()
            lines[i] = json.dumps(data) + "\n"
    write(log_path, lines)
    assert kinds(log_path) == [
        (6, "checkpoint-signature"),
        (12, "checkpoint-signature"),
        (15, "checkpoint-signature"),
    ]


def test_a_truncated_last_line_and_garbage_are_found(log_path: Path) -> None:
    lines = read(log_path)
    lines.insert(3, "this is not JSON\n")
    lines[-1] = lines[-1][:30]
    write(log_path, lines)
    assert kinds(log_path) == [(4, "unreadable"), (16, "truncated")]


def test_keys_by_signer_name_or_from_a_trust_source(log_path: Path) -> None:
    assert verify(log_path, {OWNER: PUBLIC}).ok
    assert verify(log_path, lambda member: PUBLIC).ok

    def unknown(member: str) -> bytes:
        raise IdentityError(f"the cluster CA has not registered member {member!r}")

    problems = verify(log_path, unknown).problems
    assert len(problems) == 3 and "has not registered member" in problems[0].message
    assert {p.kind for p in verify(log_path, {"pirmasens": PUBLIC}).problems} == {
        "checkpoint-signature"
    }


def test_read_entries_skips_checkpoints_and_names_a_bad_line(log_path: Path) -> None:
    assert [e["seq"] for e in read_entries(log_path)] == list(range(1, 13))
    lines = read(log_path)
    lines.insert(4, "{broken\n")
    write(log_path, lines)
    with pytest.raises(AuditError, match=r"audit\.log line 5: not JSON"):
        list(read_entries(log_path))
    with pytest.raises(AuditError, match="cannot read audit log"):
        list(read_entries(log_path.parent / "missing.log"))
    with pytest.raises(AuditError, match="/dev/full is not a regular file"):
        list(read_entries("/dev/full"))


def test_hash_covers_every_field(log_path: Path) -> None:
    """A changed field anywhere, nested or not, changes the hash (no field escapes it)."""
    first = next(read_entries(log_path))
    body = {k: v for k, v in first.items() if k != "hash"}
    assert chain_hash(body["prev"], canonical_json(body)) == first["hash"]
    body["subject"]["service"] = "other"
    assert chain_hash(body["prev"], canonical_json(body)) != first["hash"]
    assert len(hashlib.sha256(b"").hexdigest()) == len(first["hash"])
