"""Checking an audit log: every entry's hash, the chain's order and links, and the checkpoints.

An edited entry no longer matches its hash; a removed one leaves a gap in ``seq``; swapped
ones arrive out of order; an entry rewritten together with every hash after it no longer
matches the signed checkpoint that covers it. Entries after the last checkpoint are only
as good as the file (nothing signed covers them yet), so they are reported as a warning,
and so is the one thing a local file cannot show: a tail cut off after the last checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from allmende.audit.chain import (
    GENESIS,
    LogLine,
    checkpoint_envelope,
    iter_lines,
    recomputed_hash,
)
from allmende.errors import AllmendeError
from allmende.signing import verify_member

__all__ = ["KeySource", "Problem", "VerifyReport", "verify"]

KeySource = bytes | Mapping[str, bytes] | Callable[[str], bytes]
"""Who may sign checkpoints: one raw Ed25519 public key (the owner's), signer → key, or a
function (such as ``TrustStore.signing_key``) raising AllmendeError for an unknown signer."""


@dataclass(frozen=True)
class Problem:
    """One finding: ``kind`` is unreadable, edited, removed, reordered, broken-link,
    checkpoint-signature, checkpoint-mismatch or uncovered."""

    line: int
    kind: str
    message: str
    seq: int | None = None

    def __str__(self) -> str:
        return f"line {self.line}: {self.kind}: {self.message}"


@dataclass
class VerifyReport:
    """What ``verify`` found; ``ok`` when there are no problems (warnings do not count)."""

    path: Path
    entries: int = 0
    checkpoints: int = 0
    last_seq: int = 0
    covered_seq: int = 0
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        def plain(p: Problem) -> dict[str, Any]:
            return {"line": p.line, "kind": p.kind, "seq": p.seq, "message": p.message}

        return {
            "path": str(self.path),
            "ok": self.ok,
            "entries": self.entries,
            "checkpoints": self.checkpoints,
            "last_seq": self.last_seq,
            "covered_seq": self.covered_seq,
            "problems": [plain(p) for p in self.problems],
            "warnings": [plain(p) for p in self.warnings],
        }


def _key_for(keys: KeySource, signer: str) -> bytes:
    if isinstance(keys, bytes):
        return keys
    if callable(keys):
        return keys(signer)
    if signer not in keys:
        raise KeyError(signer)
    return keys[signer]


def _check_signature(line: LogLine, keys: KeySource) -> str:
    """Empty when the checkpoint's signature verifies, else what is wrong."""
    cp = line.data
    body = {k: cp.get(k) for k in ("hash", "seq", "signer", "time")}
    if not isinstance(body["signer"], str) or not isinstance(cp.get("signature"), str):
        return "checkpoint names no signer or signature"
    try:
        key = _key_for(keys, body["signer"])
    except (KeyError, AllmendeError) as exc:
        return f"no public key for signer {body['signer']!r}: {exc}"
    try:
        env = checkpoint_envelope(body)
        env.signature = bytes.fromhex(cp["signature"])
    except (ValueError, TypeError) as exc:
        return f"checkpoint is malformed: {exc}"
    try:
        verify_member(env, key)
    except AllmendeError:
        return f"signature does not verify with the public key of {body['signer']!r}"
    return ""


def verify(path: str | Path, keys: KeySource) -> VerifyReport:
    """Check the log at ``path``; checkpoints must be signed by a key from ``keys``.

    Returns a report listing every problem with its line. Raises AuditError when the file
    cannot be read at all.
    """
    report = VerifyReport(Path(path))
    entries: list[LogLine] = []
    checkpoints: list[LogLine] = []
    for line in iter_lines(report.path):
        if line.kind == "entry":
            entries.append(line)
        elif line.kind == "checkpoint":
            checkpoints.append(line)
        else:
            kind = "unreadable" if line.kind == "bad" else "truncated"
            report.problems.append(Problem(line.number, kind, line.error))
    report.entries, report.checkpoints = len(entries), len(checkpoints)
    by_seq: dict[int, LogLine] = {}
    for line in entries:
        by_seq.setdefault(line.data["seq"], line)
    valid: dict[int, bool] = {}
    for line in entries:
        seq = line.data["seq"]
        intact = recomputed_hash(line.data) == line.data["hash"]
        valid[line.number] = intact
        if not intact:
            report.problems.append(
                Problem(line.number, "edited", f"entry seq {seq} does not match its hash", seq)
            )
    _check_order(report, entries, by_seq)
    _check_links(report, entries, by_seq)
    _check_checkpoints(report, checkpoints, by_seq, valid, keys)
    if entries:
        report.last_seq = max(by_seq)
    if report.last_seq > report.covered_seq:
        first = report.covered_seq + 1
        start_line = by_seq[first].number if first in by_seq else entries[-1].number
        report.warnings.append(
            Problem(
                start_line,
                "uncovered",
                f"entries seq {first}..{report.last_seq} are not yet covered by a checkpoint: "
                "an edit or a cut-off tail there would not show (a running gateway signs "
                "one within its checkpoint interval, and on shutdown)",
                first,
            )
        )
    report.problems.sort(key=lambda p: (p.line, p.kind))
    return report


def _check_order(report: VerifyReport, entries: list[LogLine], by_seq: dict[int, LogLine]) -> None:
    before = 0
    for line in entries:
        seq = line.data["seq"]
        if seq <= before:
            what = "repeats" if seq == before else "comes after"
            report.problems.append(
                Problem(line.number, "reordered", f"entry seq {seq} {what} seq {before}", seq)
            )
        elif seq > before + 1:
            gone = [s for s in range(before + 1, seq) if s not in by_seq]
            moved = [s for s in range(before + 1, seq) if s in by_seq]
            if gone:
                report.problems.append(
                    Problem(
                        line.number,
                        "removed",
                        f"entries seq {_ranges(gone)} are missing before entry seq {seq}",
                        seq,
                    )
                )
            if moved:
                where = ", ".join(f"seq {s} at line {by_seq[s].number}" for s in moved[:5])
                report.problems.append(
                    Problem(
                        line.number,
                        "reordered",
                        f"entry seq {seq} comes before {where}",
                        seq,
                    )
                )
        before = max(before, seq)


def _check_links(report: VerifyReport, entries: list[LogLine], by_seq: dict[int, LogLine]) -> None:
    for line in entries:
        seq, prev = line.data["seq"], line.data["prev"]
        if seq == 1:
            expected = GENESIS
        elif seq - 1 in by_seq:
            expected = by_seq[seq - 1].data["hash"]
        else:
            continue  # already reported as removed
        if prev != expected:
            report.problems.append(
                Problem(
                    line.number,
                    "broken-link",
                    f"entry seq {seq} does not link to entry seq {seq - 1}'s hash "
                    "(an entry before it was altered or replaced)",
                    seq,
                )
            )


def _check_checkpoints(
    report: VerifyReport,
    checkpoints: list[LogLine],
    by_seq: dict[int, LogLine],
    valid: dict[int, bool],
    keys: KeySource,
) -> None:
    for line in checkpoints:
        cp = line.data
        seq = cp.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            report.problems.append(Problem(line.number, "unreadable", "checkpoint has no seq"))
            continue
        wrong = _check_signature(line, keys)
        if wrong:
            report.problems.append(Problem(line.number, "checkpoint-signature", wrong, seq))
            continue
        entry = by_seq.get(seq)
        if entry is None:
            report.problems.append(
                Problem(
                    line.number,
                    "removed",
                    f"checkpoint covers seq {seq} but the log holds no entry seq {seq}",
                    seq,
                )
            )
            continue
        if entry.data["hash"] != cp.get("hash") or not valid[entry.number]:
            report.problems.append(
                Problem(
                    line.number,
                    "checkpoint-mismatch",
                    f"signed chain head for seq {seq} differs from entry seq {seq} (line "
                    f"{entry.number}): entries up to it were altered after they were signed",
                    seq,
                )
            )
            continue
        if entry.number > line.number:
            report.problems.append(
                Problem(
                    line.number,
                    "reordered",
                    f"checkpoint for seq {seq} stands before its entry (line {entry.number})",
                    seq,
                )
            )
            continue
        report.covered_seq = max(report.covered_seq, seq)


def _ranges(seqs: list[int]) -> str:
    """``[3, 4, 5, 9]`` → ``"3..5, 9"``."""
    parts: list[str] = []
    start = prev = seqs[0]
    for s in [*seqs[1:], None]:
        if s is not None and s == prev + 1:
            prev = s
            continue
        parts.append(str(start) if start == prev else f"{start}..{prev}")
        if s is not None:
            start = prev = s
    return ", ".join(parts)
