"""The audit log: the hash chain, signed checkpoints, reopening, and failing closed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from allmende.audit import (
    GENESIS,
    AuditError,
    AuditLog,
    checkpoint_envelope,
    read_entries,
    verify,
)
from allmende.errors import AuditUnavailable
from allmende.signing import MemberSigner, signing_input, verify_member, write_private_key

REPO = Path(__file__).resolve().parents[2]
OWNER = "kaiserslautern"


def record(i: int = 1, **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "time": f"2026-11-30T10:{i // 60 % 60:02d}:{i % 60:02d}+00:00",
        "subject": {
            "member": "pirmasens",
            "cluster": "suedwest",
            "service": "dashboard",
            "spiffe_id": "spiffe://suedwest/member/pirmasens/service/dashboard",
        },
        "owner": OWNER,
        "dataset": "parking-sites",
        "action": "query",
        "purpose": "traffic-planning",
        "allow": True,
        "reasons": ["parking-sites is open data"],
        "policy_version": "sha256:0f",
        "agreements": [],
        "way_in": "open",
        "rows": i,
        "event": "decision",
        "request_sha256": hashlib.sha256(str(i).encode()).hexdigest(),
        "input": {"action": "query", "purpose": "traffic-planning"},
    }
    out.update(kw)
    return out


@pytest.fixture
def key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture
def signer(key: ed25519.Ed25519PrivateKey) -> MemberSigner:
    return MemberSigner(OWNER, key)


def public(key: ed25519.Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_entries_form_a_hash_chain_anyone_can_recompute(
    tmp_path: Path, signer: MemberSigner
) -> None:
    path = tmp_path / "audit.log"
    with AuditLog(path, signer, background=False) as log:
        first = log.append(record(1))
        second = log.append(record(2, allow=False, reasons=["no agreement"], rows=0))
    assert (first.seq, first.prev, second.seq, second.prev) == (1, GENESIS, 2, first.hash)
    entries = list(read_entries(path))
    assert [e["seq"] for e in entries] == [1, 2]
    prev = GENESIS
    for entry in entries:
        body = {k: v for k, v in entry.items() if k != "hash"}
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert entry["hash"] == hashlib.sha256(f"{prev}\n{text}".encode()).hexdigest()
        assert entry["prev"] == prev
        prev = entry["hash"]
    assert entries[1]["reasons"] == ["no agreement"] and entries[1]["allow"] is False
    assert second.entry == entries[1]


def test_checkpoints_every_n_entries_and_on_close_verify_with_the_owner_key(
    tmp_path: Path, signer: MemberSigner, key: ed25519.Ed25519PrivateKey
) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, signer, checkpoint_every=3, background=False)
    for i in range(7):
        log.append(record(i))
    assert log.checkpointed == 6
    log.close()
    log.close()  # twice is fine
    checkpoints = [ln["checkpoint"] for ln in lines(path) if "checkpoint" in ln]
    assert [c["seq"] for c in checkpoints] == [3, 6, 7]
    entries = {e["seq"]: e["hash"] for e in read_entries(path)}
    for cp in checkpoints:
        assert cp["hash"] == entries[cp["seq"]] and cp["signer"] == OWNER
        env = checkpoint_envelope({k: cp[k] for k in ("hash", "seq", "signer", "time")})
        env.signature = bytes.fromhex(cp["signature"])
        verify_member(env, public(key))
    with pytest.raises(AuditUnavailable, match="closed"):
        log.append(record(8))


def test_checkpoint_after_the_interval_by_the_clock(tmp_path: Path, signer: MemberSigner) -> None:
    now = [100.0]
    log = AuditLog(tmp_path / "a.log", signer, checkpoint_interval_s=10, clock=lambda: now[0])
    try:
        log.append(record(1))
        assert log.checkpointed == 0
        now[0] += 11
        log.append(record(2))
        assert log.checkpointed == 2
    finally:
        log.close()


def test_background_thread_covers_idle_entries(tmp_path: Path, signer: MemberSigner) -> None:
    log = AuditLog(tmp_path / "a.log", signer, checkpoint_interval_s=0.05)
    try:
        log.append(record(1))
        deadline = time.monotonic() + 5
        while log.checkpointed < 1:
            assert time.monotonic() < deadline, "no checkpoint from the background thread"
            time.sleep(0.01)
    finally:
        log.close()


def test_background_thread_signs_the_checkpoint_due_by_count(
    tmp_path: Path, key: ed25519.Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller does not sign or sync the checkpoint every N entries: the thread does, at
    once; the caller steps in only when the thread is a whole round behind."""
    path = tmp_path / "a.log"
    log = AuditLog(path, MemberSigner(OWNER, key), checkpoint_every=3, checkpoint_interval_s=3600)
    try:
        for i in range(3):
            log.append(record(i + 1))
        deadline = time.monotonic() + 5
        while log.checkpointed < 3:
            assert time.monotonic() < deadline, "no checkpoint from the background thread"
            time.sleep(0.01)
        monkeypatch.setattr(log._wake, "set", lambda: None)  # the thread sleeps on
        for i in range(3, 8):
            log.append(record(i + 1))
        assert log.checkpointed == 3  # five uncovered: still the thread's
        log.append(record(9))
        assert log.checkpointed == 9  # six: the caller signed it
    finally:
        monkeypatch.undo()
        log.close()
    assert verify(path, public(key)).ok


def test_worked_example_matches_protocol_text(tmp_path: Path) -> None:
    """The test vector printed in PROTOCOL.md ("Audit trail")."""
    key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    assert public(key).hex() == "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
    path = tmp_path / "a.log"
    rec = record(12, time="2026-11-30T10:00:00+00:00", request_sha256="00" * 32)
    rec["subject"]["spiffe_id"] = "spiffe://suedwest/member/pirmasens/service/dashboard"
    rec["input"] = {"action": "query"}
    with AuditLog(
        path, MemberSigner(OWNER, key), background=False, now=lambda: "2026-11-30T10:00:01.000000Z"
    ) as log:
        entry = log.append(rec)
    assert entry.hash == "36fcbd4a43cd5f8c491a6bc442b28b95716cff5e89aa6614cca9c954c7b55204"
    cp = lines(path)[1]["checkpoint"]
    env = checkpoint_envelope({k: cp[k] for k in ("hash", "seq", "signer", "time")})
    assert env.created_at.seconds == 1796032801 and env.created_at.nanos == 0
    assert (
        hashlib.sha256(signing_input(env)).hexdigest()
        == hashlib.sha256(
            bytes.fromhex(
                "616c6c6d656e64652d656e76656c6f70652d7631000000000e6b6169736572736c61757465726e"
                "000000000000001c616c6c6d656e64652e61756469742e76312e436865636b706f696e74000000"
                "006b0d49210000000056751ee06835b1d84a1ed42fd10bfe3bf934304e618b01c4e0f5026be9d3cd05"
            )
        ).hexdigest()
    )
    assert cp["signature"] == (
        "4ed0c9991a20da0c9a1025510695a3bb2c8161620a13cacbecaf768c52ced0f2"
        "9005e6c785b60eeb5602dfd72e5c31d066cae29653cd2d8326ece2d62a58ca0c"
    )


def test_reopening_continues_the_chain(
    tmp_path: Path, signer: MemberSigner, key: ed25519.Ed25519PrivateKey
) -> None:
    path = tmp_path / "audit.log"
    with AuditLog(path, signer, background=False) as log:
        for i in range(5):
            last = log.append(record(i))
    log = AuditLog(path, signer, background=False)
    assert (log.seq, log.head, log.checkpointed) == (5, last.hash, 5)
    nxt = log.append(record(6))
    log.close()
    assert (nxt.seq, nxt.prev) == (6, last.hash)
    assert verify(path, public(key)).ok


def test_reopening_without_a_closing_checkpoint_reads_back_to_the_last_one(
    tmp_path: Path, signer: MemberSigner, key: ed25519.Ed25519PrivateKey
) -> None:
    path = tmp_path / "audit.log"
    key_file = tmp_path / "signing.key"
    write_private_key(key_file, key)
    script = f"""
import os, sys
sys.path[:0] = {[str(REPO / "lib")]!r}
from allmende.audit import AuditLog
from allmende.signing import MemberSigner
log = AuditLog({str(path)!r}, MemberSigner.from_file("{OWNER}", {str(key_file)!r}),
               background=False, checkpoint_every=4)
for i in range(6):  # lines long enough to need two tail blocks
    entry = log.append({{"rows": i, "reasons": ["x" * 30000]}})
print(entry.hash, flush=True)
os._exit(0)  # a crash: no close, no final checkpoint
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    again = AuditLog(path, signer, checkpoint_every=4, background=False)
    assert (again.seq, again.head, again.checkpointed) == (6, out.stdout.strip(), 4)
    again.append(record(7))
    again.close()
    assert verify(path, public(key)).ok


@pytest.mark.parametrize(
    ("damage", "what"),
    [
        (lambda text: text[:-20], "line 3: incomplete line"),
        (lambda text: text + "not json\n", "line 4: not JSON"),
        (lambda text: text.replace('"rows":2', '"rows":9'), "line 3: entry seq 2 does not match"),
    ],
    ids=["truncated", "garbage", "edited"],
)
def test_a_damaged_tail_refuses_to_open_and_is_left_as_it_is(
    tmp_path: Path, signer: MemberSigner, damage: Any, what: str
) -> None:
    path = tmp_path / "audit.log"
    with AuditLog(path, signer, checkpoint_every=1, background=False) as log:
        log.append(record(1))
        log.append(record(2))
    lines_now = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines_now[:3]))  # entry 1, checkpoint 1, entry 2
    path.write_text(damage(path.read_text()))
    before = path.read_bytes()
    with pytest.raises(AuditUnavailable, match=what) as err:
        AuditLog(path, signer, background=False)
    assert "refusing to append" in str(err.value) and str(path) in str(err.value)
    assert path.read_bytes() == before


def test_dev_full_fails_every_append_closed(signer: MemberSigner) -> None:
    log = AuditLog("/dev/full", signer, background=False)
    for _ in range(2):
        with pytest.raises(AuditUnavailable) as err:
            log.append(record(1))
        assert str(err.value) == (
            "audit log /dev/full cannot be written: No space left on device; "
            "refusing to serve unlogged"
        )
        assert err.value.reason == "AUDIT_UNAVAILABLE" and err.value.grpc_code == "UNAVAILABLE"
    assert log.seq == 0
    log.close()


def test_a_directory_is_not_a_log(tmp_path: Path, signer: MemberSigner) -> None:
    log = AuditLog(tmp_path, signer, background=False)
    with pytest.raises(AuditUnavailable, match="Is a directory; refusing to serve unlogged"):
        log.append(record(1))


def test_a_full_disk_mid_line_leaves_the_written_entries_intact(
    tmp_path: Path, key: ed25519.Ed25519PrivateKey
) -> None:
    """RLIMIT_FSIZE cuts a write off half-way like a full disk (in a child process)."""
    path = tmp_path / "audit.log"
    key_file = tmp_path / "signing.key"
    write_private_key(key_file, key)
    script = f"""
import resource, signal, sys
sys.path[:0] = {[str(REPO / "lib")]!r}
from allmende.audit import AuditLog
from allmende.signing import MemberSigner
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
log = AuditLog({str(path)!r}, MemberSigner.from_file("{OWNER}", {str(key_file)!r}),
               background=False, checkpoint_every=1000)
for i in range(3):
    log.append({{"rows": i, "reasons": ["r" * 500]}})
size = __import__("os").path.getsize({str(path)!r})
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 200, size + 200))
for _ in range(2):
    try:
        log.append({{"rows": 99, "reasons": ["r" * 500]}})
    except Exception as exc:
        print(type(exc).__name__, exc)
print(__import__("os").path.getsize({str(path)!r}) == size)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    said = out.stdout.splitlines()
    assert said[0].startswith("AuditUnavailable audit log") and "File too large" in said[0]
    assert said[1].startswith("AuditUnavailable") and said[2] == "True"
    assert [e["rows"] for e in read_entries(path)] == [0, 1, 2]
    log = AuditLog(path, MemberSigner(OWNER, key), background=False)  # tail intact: opens
    assert log.seq == 3
    log.close()
    assert verify(path, public(key)).ok


def test_a_file_the_process_may_not_write_fails_closed(
    tmp_path: Path, signer: MemberSigner, key: ed25519.Ed25519PrivateKey
) -> None:
    """Root writes any file, so as root the child runs without CAP_DAC_OVERRIDE (setpriv)."""
    path = tmp_path / "audit.log"
    with AuditLog(path, signer, background=False) as log:
        log.append(record(1))
    path.chmod(0o444)
    before = path.read_bytes()
    key_file = tmp_path / "signing.key"
    write_private_key(key_file, key)
    script = f"""
import sys
sys.path[:0] = {[str(REPO / "lib")]!r}
from allmende.audit import AuditLog
from allmende.signing import MemberSigner
log = AuditLog({str(path)!r}, MemberSigner.from_file("{OWNER}", {str(key_file)!r}),
               background=False)
try:
    log.append({{"rows": 1}})
except Exception as exc:
    print(type(exc).__name__, exc)
"""
    command = [sys.executable, "-c", script]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: root may write a read-only file")
        command = [setpriv, "--bounding-set=-dac_override,-dac_read_search", *command]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        f"AuditUnavailable audit log {path} cannot be written: Permission denied; "
        "refusing to serve unlogged"
    )
    assert path.read_bytes() == before


def test_a_second_writer_is_refused(tmp_path: Path, signer: MemberSigner) -> None:
    path = tmp_path / "audit.log"
    with AuditLog(path, signer, background=False) as first:
        first.append(record(1))
        second = AuditLog(path, signer, background=False)
        with pytest.raises(AuditUnavailable, match="in use by another process"):
            second.append(record(2))
        first.append(record(3))
    assert [e["rows"] for e in read_entries(path)] == [1, 3]


def test_bad_records_are_refused_by_name(tmp_path: Path, signer: MemberSigner) -> None:
    with AuditLog(tmp_path / "a.log", signer, background=False) as log:
        with pytest.raises(AuditError, match="must not set seq, hash"):
            log.append({"seq": 3, "hash": "x"})
        with pytest.raises(AuditError, match="JSON values only"):
            log.append({"rows": object()})
        with pytest.raises(AuditError, match="JSON values only"):
            log.append({"rows": float("nan")})
        with pytest.raises(AuditError, match="mapping"):
            log.append(["rows"])  # type: ignore[arg-type]
        assert log.seq == 0
    with pytest.raises(AuditError, match="positive"):
        AuditLog(tmp_path / "b.log", signer, checkpoint_every=0)


def test_concurrent_appends_keep_one_unbroken_chain(
    tmp_path: Path, signer: MemberSigner, key: ed25519.Ed25519PrivateKey
) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, signer, checkpoint_every=50, background=False)

    def work(n: int) -> None:
        for i in range(150):
            log.append(record(n * 1000 + i))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    assert [e["seq"] for e in read_entries(path)] == list(range(1, 901))
    assert verify(path, public(key)).ok


def test_append_is_cheap(tmp_path: Path, signer: MemberSigner) -> None:
    """Measured: about 45 µs per append on the 2-core CI machine, checkpoints included ~80."""
    n = 2000
    with AuditLog(tmp_path / "a.log", signer, background=False) as log:
        rec = record(1)
        start = time.perf_counter()
        for _ in range(n):
            log.append(rec)
        per_append_us = (time.perf_counter() - start) / n * 1e6
    print(f"audit append: {per_append_us:.0f} µs")
    assert per_append_us < 1000
