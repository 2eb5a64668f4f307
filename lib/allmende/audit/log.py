"""The owner's audit log: appends decision records to the hash chain and signs checkpoints.

The format is chain.py's. Appends are synchronous (one ``write`` on an O_APPEND descriptor per
entry, fsync at each checkpoint) because the gateway serves nothing it has not logged: any OS
error becomes AuditUnavailable, and a write cut off half-way is truncated back so nothing
already written is damaged. A log whose last lines are damaged is never appended to.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from allmende.audit.chain import (
    GENESIS,
    AuditError,
    TemplatedRecord,
    canonical_json,
    chain_hash,
    checkpoint_envelope,
    parse_line,
    recomputed_hash,
)
from allmende.errors import AuditUnavailable
from allmende.v1 import backbone_pb2

__all__ = ["AuditEntry", "AuditLog", "AuditSigner"]

log = logging.getLogger(__name__)

RESERVED = ("seq", "prev", "hash", "checkpoint")
_TAIL_BLOCK = 64 * 1024


class _LogBusy(AuditUnavailable):
    """Another process appends to the log (it holds the lock)."""


class AuditSigner(Protocol):
    """Signs checkpoints as the log's owner (allmende.signing.MemberSigner)."""

    member: str

    def sign(self, env: backbone_pb2.Envelope) -> None: ...


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class AuditEntry(NamedTuple):
    """One appended entry: its place in the chain and its canonical JSON (without ``hash``)."""

    seq: int
    prev: str
    hash: str
    body_json: str

    @property
    def entry(self) -> dict[str, Any]:
        """The entry as written, ``hash`` included."""
        out: dict[str, Any] = json.loads(self.body_json)
        out["hash"] = self.hash
        return out


def _line_number(path: Path, offset: int) -> int:
    """The number of the line starting at ``offset`` (only for error messages)."""
    count = 1
    with open(path, "rb") as f:
        while offset > 0:
            block = f.read(min(offset, 1 << 20))
            if not block:
                break
            count += block.count(b"\n")
            offset -= len(block)
    return count


@dataclass(frozen=True)
class _Tail:
    seq: int
    head: str
    checkpointed: int


def _read_tail(path: Path, fd: int, size: int) -> _Tail:
    """The chain head from the end of the file, back to its last checkpoint.

    Raises AuditUnavailable naming the line when the tail is damaged.
    """
    start = size
    buf = b""
    while start > 0:
        upto, start = start, max(0, start - _TAIL_BLOCK)
        buf = os.pread(fd, upto - start, start) + buf
        if b'\n{"checkpoint":' in buf or buf.startswith(b'{"checkpoint":'):
            break
    if start > 0:  # drop the first, probably cut, line
        cut = buf.index(b"\n") + 1
        start, buf = start + cut, buf[cut:]
    lines = []
    offset = start
    for raw in buf.splitlines(keepends=True):
        lines.append((offset, raw))
        offset += len(raw)
    seq, head, checkpointed = 0, GENESIS, 0
    known = False  # head/seq set from a line of the tail
    for off, raw in lines:
        line = parse_line(0, off, raw)

        def damaged(what: str, _off: int = off) -> AuditUnavailable:
            number = _line_number(path, _off)
            return AuditUnavailable(
                f"audit log {path} line {number}: {what}; refusing to append to a damaged log "
                f"(see `allmende audit verify --log {path}`; move the file aside to start a "
                "new log)"
            )

        if line.kind in ("bad", "partial"):
            raise damaged(line.error)
        if line.kind == "checkpoint":
            cp_seq, cp_hash = line.data.get("seq"), line.data.get("hash")
            if known and (cp_seq != seq or cp_hash != head):
                raise damaged(f"checkpoint for seq {cp_seq} does not match the entry before it")
            if not isinstance(cp_seq, int) or not isinstance(cp_hash, str):
                raise damaged("malformed checkpoint")
            seq, head, checkpointed, known = cp_seq, cp_hash, cp_seq, True
            continue
        data = line.data
        if known and (data["seq"] != seq + 1 or data["prev"] != head):
            raise damaged(f"entry seq {data['seq']} does not follow seq {seq} in the chain")
        if recomputed_hash(data) != data["hash"]:
            raise damaged(f"entry seq {data['seq']} does not match its hash")
        seq, head, known = data["seq"], data["hash"], True
    return _Tail(seq, head, checkpointed)


class AuditLog:
    """Appends decision records to the hash-chained log at ``path``; thread-safe.

    Signs a checkpoint after every ``checkpoint_every`` entries, when an entry arrives
    ``checkpoint_interval_s`` after the last checkpoint, from a background thread when entries
    wait that long uncovered (``background``), and on ``close``. With the background thread,
    the checkpoint due after ``checkpoint_every`` entries is signed and synced by that thread
    right away, off the appending caller's path (by the caller only if the thread falls
    ``checkpoint_every`` entries further behind). Reopening an existing log
    continues its chain. Raises AuditUnavailable naming the line when the log's last lines are
    damaged; a log that cannot be opened for writing (permissions, a full disk, another
    process appending to it) is reported by every ``append`` instead, so a gateway refuses
    each request with the reason, and opens the log as soon as it can.
    """

    def __init__(
        self,
        path: str | Path,
        signer: AuditSigner,
        *,
        checkpoint_every: int = 100,
        checkpoint_interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], str] = _utc_now,
        background: bool = True,
    ) -> None:
        if checkpoint_every < 1 or not checkpoint_interval_s > 0:
            raise AuditError("checkpoint_every and checkpoint_interval_s must be positive")
        self.path = Path(path)
        self.signer = signer
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval_s = checkpoint_interval_s
        self._clock = clock
        self._now = now
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._regular = True
        self._size = 0
        self._seq = 0
        self._head = GENESIS
        self._checkpointed = 0
        self._last_checkpoint = clock()
        self._closed = False
        self._failing = False
        try:
            self._open()
        except OSError as exc:
            self._unavailable(exc)  # logged; every append reports it until the log opens
        except _LogBusy as exc:  # the gateway it replaces may still be shutting down
            log.error("%s", exc)
        self._stop = threading.Event()
        self._wake = threading.Event()  # a checkpoint is due by count: sign it off-path
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(
                target=self._tick, name=f"allmende-audit-{signer.member}", daemon=True
            )
            self._thread.start()

    # -- state ---------------------------------------------------------------------------

    @property
    def seq(self) -> int:
        """The last entry's seq (0 for an empty log)."""
        return self._seq

    @property
    def head(self) -> str:
        """The last entry's hash (64 zeros for an empty log)."""
        return self._head

    @property
    def checkpointed(self) -> int:
        """The seq the newest checkpoint covers."""
        return self._checkpointed

    def _unavailable(self, exc: OSError) -> AuditUnavailable:
        """The error for a failed write; logged once per outage, not once per request."""
        reason = exc.strerror or str(exc)
        err = AuditUnavailable(
            f"audit log {self.path} cannot be written: {reason}; refusing to serve unlogged"
        )
        if not self._failing:
            self._failing = True
            log.error("%s", err)
        return err

    def _open(self) -> None:
        """Open for appending and take up the chain; raises OSError or AuditUnavailable."""
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        created = not self.path.exists()
        if created:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, flags, 0o600)
        try:
            st = os.fstat(fd)
            self._regular = stat.S_ISREG(st.st_mode)
            tail = _Tail(0, GENESIS, 0)
            if self._regular:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError as exc:
                    raise _LogBusy(
                        f"audit log {self.path} is in use by another process; "
                        "refusing to serve unlogged"
                    ) from exc
                rfd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    tail = _read_tail(self.path, rfd, st.st_size)
                finally:
                    os.close(rfd)
                if created:
                    _sync_directory(self.path.parent)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._size = fd, st.st_size
        self._seq, self._head, self._checkpointed = tail.seq, tail.head, tail.checkpointed
        self._last_checkpoint = self._clock()

    def _drop_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _write(self, data: bytes, sync: bool = False) -> None:
        """Append ``data`` whole or not at all; raises AuditUnavailable."""
        assert self._fd is not None
        try:
            done = os.write(self._fd, data)
            while done < len(data):
                done += os.write(self._fd, data[done:])
            if sync and self._regular:
                os.fsync(self._fd)
        except OSError as exc:
            if self._regular:
                # A write cut off by a full disk leaves half a line: take it back, so the
                # file stays a valid log. If even that fails, the next append reopens the
                # file and refuses, naming the damaged line.
                with contextlib.suppress(OSError):
                    if os.fstat(self._fd).st_size > self._size:
                        os.ftruncate(self._fd, self._size)
            self._drop_fd()
            raise self._unavailable(exc) from exc
        self._size += len(data)
        if self._failing:
            self._failing = False
            log.warning("audit log %s is written again", self.path)

    # -- appending -----------------------------------------------------------------------

    def append(self, record: Mapping[str, Any]) -> AuditEntry:
        """Log ``record`` (JSON values only) as the next entry, written before returning.

        Raises AuditUnavailable (naming the path and the OS error) when the log cannot be
        written or is closed, and AuditError when ``record`` is not a JSON object or uses a
        reserved key (seq, prev, hash, checkpoint).
        """
        kind = type(record)
        if not (kind is TemplatedRecord or kind is dict or isinstance(record, Mapping)):
            raise AuditError(f"an audit record must be a mapping, not {type(record).__name__}")
        clash = [k for k in RESERVED if k in record]
        if clash:
            raise AuditError(f"an audit record must not set {', '.join(clash)} (the log does)")
        with self._lock:
            if self._closed:
                raise AuditUnavailable(
                    f"audit log {self.path} is closed; refusing to serve unlogged"
                )
            if self._fd is None:
                try:
                    self._open()
                except OSError as exc:
                    raise self._unavailable(exc) from exc
            seq = self._seq + 1
            body = dict(record)
            body["seq"] = seq
            body["prev"] = self._head
            # A record made from a template is joined from text encoded once (see
            # EntryTemplate), unless a value it varies in is not a plain str or int.
            body_json = (
                record.template.render(body) if isinstance(record, TemplatedRecord) else None
            )
            if body_json is None:
                try:
                    body_json = canonical_json(body)
                except (TypeError, ValueError) as exc:
                    raise AuditError(f"an audit record must hold JSON values only: {exc}") from exc
            digest = chain_hash(self._head, body_json)
            # The hash goes first; the rest of the line is the canonical JSON it covers.
            self._write(f'{{"hash":"{digest}",{body_json[1:]}\n'.encode())
            entry = AuditEntry(seq, self._head, digest, body_json)
            self._seq, self._head = seq, digest
            uncovered = seq - self._checkpointed
            if uncovered >= self.checkpoint_every and self._thread is not None:
                # Signing and fsync (milliseconds on a busy disk) are the background
                # thread's, not the caller's; inline only if it falls a whole round behind.
                self._wake.set()
            if (
                uncovered >= self.checkpoint_every * (1 if self._thread is None else 2)
                or self._clock() - self._last_checkpoint >= self.checkpoint_interval_s
            ):
                try:
                    self._checkpoint()
                except AuditUnavailable as exc:  # the entry is written; retried next time
                    log.error("%s", exc)
            return entry

    def _checkpoint(self, sync: bool = True) -> None:
        """Sign the chain head and write it, fsynced unless ``sync`` is False (the caller
        syncs); raises AuditUnavailable."""
        if self._fd is None:
            try:
                self._open()
            except OSError as exc:
                raise self._unavailable(exc) from exc
        body = {
            "hash": self._head,
            "seq": self._seq,
            "signer": self.signer.member,
            "time": self._now(),
        }
        env = checkpoint_envelope(body)
        self.signer.sign(env)
        line = canonical_json({"checkpoint": {**body, "signature": env.signature.hex()}})
        self._write(line.encode() + b"\n", sync=sync)
        self._checkpointed = self._seq
        self._last_checkpoint = self._clock()

    def checkpoint(self) -> bool:
        """Sign a checkpoint now if entries are not yet covered; True if one was written.

        Raises AuditUnavailable.
        """
        with self._lock:
            if self._closed or self._seq <= self._checkpointed:
                return False
            self._checkpoint()
            return True

    def _tick(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.checkpoint_interval_s / 2)
            self._wake.clear()
            if self._stop.is_set():
                return
            with self._lock:
                uncovered = self._seq - self._checkpointed
                due = (
                    not self._closed
                    and uncovered > 0
                    and (
                        uncovered >= self.checkpoint_every
                        or self._clock() - self._last_checkpoint >= self.checkpoint_interval_s
                    )
                )
                if not due:
                    continue
                try:
                    covered = self._seq
                    # Written and signed under the lock; made durable outside it, so that
                    # appends go on while the disk syncs.
                    self._checkpoint(sync=False)
                    sync_fd = os.dup(self._fd) if self._regular and self._fd is not None else -1
                except AuditUnavailable as exc:
                    log.error("%s", exc)
                    continue
                except OSError as exc:  # dup: no descriptor left; sync in place instead
                    log.error("audit log %s: cannot sync off the lock: %s", self.path, exc)
                    sync_fd = -1
                    with contextlib.suppress(OSError):
                        if self._fd is not None:
                            os.fsync(self._fd)
            if sync_fd >= 0:
                self._sync_checkpoint(sync_fd, covered)

    def _sync_checkpoint(self, fd: int, covered: int) -> None:
        """fsync a checkpoint written by the background thread; if that fails, the entries
        it covers count as uncovered again, so the next checkpoint (synced) covers them."""
        try:
            os.fsync(fd)
        except OSError as exc:
            log.error("audit log %s: checkpoint at seq %d not synced: %s", self.path, covered, exc)
            with self._lock:
                self._checkpointed = min(self._checkpointed, covered - 1)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Sign a final checkpoint and close; safe to call twice.

        Raises AuditUnavailable when the final checkpoint cannot be written (the file is
        closed all the same).
        """
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._seq > self._checkpointed:
                    self._checkpoint()
            finally:
                self._drop_fd()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sync_directory(directory: Path) -> None:
    """Make a new file's directory entry durable; best effort (not every FS allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
