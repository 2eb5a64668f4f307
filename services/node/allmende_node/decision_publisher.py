"""The decision publisher: follows the owner's audit log onto ``<prefix>.decisions``, signed.

Each audit entry becomes one DecisionRecord in an envelope signed by the node (key = the
owner), so the cluster holds a copy the owner cannot quietly rewrite later. How far it got
(seq, hash and byte offset of the last entry the broker acknowledged, and the topic's id) is
kept in a small JSON file next to the store, written after every acknowledged batch, so a
restart neither repeats nor skips an entry. It checks the chain as it reads: at a broken
link it stops, publishes nothing past it and says where (``allmende audit verify`` says
more). When the broker forgot the topic (an in-memory broker restarted) it publishes the
whole log again; a crash between the broker's acknowledgement and the position write sends
that one batch twice (consumers keep one record per owner and sequence).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp

from allmende.audit import (
    GENESIS,
    AuditError,
    LogLine,
    canonical_json,
    iter_lines,
    recomputed_hash,
)
from allmende.backbone import BackboneProducer, OutgoingMessage, Topics, seal
from allmende.config import NodeConfig
from allmende.errors import BackboneError, ConfigError
from allmende.v1 import backbone_pb2
from allmende_node.backbone_link import Backoff, OutageLog, TopicAdmin, open_producer, pause
from allmende_node.signing_keys import node_signer

__all__ = ["DecisionPublisher", "PublishPosition"]

log = logging.getLogger(__name__)


@dataclass
class PublishPosition:
    """The last entry the broker acknowledged: its seq and hash, where the next line starts
    (byte ``offset``, line number ``line``), on which incarnation (``topic_id``) of the topic;
    ``first`` is the hash of the log's first entry, which tells a cut log from a new one."""

    log: str = ""
    seq: int = 0
    hash: str = GENESIS
    offset: int = 0
    line: int = 1
    topic_id: str = ""
    first: str = ""

    @classmethod
    def load(cls, path: Path, log_path: Path) -> PublishPosition:
        """The stored position for ``log_path``; a fresh one when there is none (or it was
        for another log). Raises AuditError naming the file when it is unreadable."""
        try:
            data = json.loads(path.read_text())
            pos = cls(**data)
        except FileNotFoundError:
            return cls(log=str(log_path))
        except (OSError, ValueError, TypeError) as exc:
            raise AuditError(
                f"cannot read the decision publisher's position {path}: {exc}"
            ) from exc
        if pos.log != str(log_path):
            log.info("position file %s was for %s; starting at the first entry", path, pos.log)
            return cls(log=str(log_path))
        return pos

    def save(self, path: Path) -> None:
        """Write atomically (temporary file, fsync, rename); raises OSError."""
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps(asdict(self), sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


class ChainBroken(AuditError):
    """The audit log does not continue the chain the publisher has followed so far."""


class DecisionPublisher:
    """Publishes one audit log's entries. Use from one thread; ``run`` is that thread's loop.

    ``sleep`` and ``clock`` as for Publisher. Raises ConfigError when the node has no
    ``audit_log`` or no ``[keys]``, IdentityError when its signing key cannot be read, and
    AuditError when the stored position cannot be read.
    """

    def __init__(
        self,
        config: NodeConfig,
        *,
        sleep: Callable[[float], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
        batch_size: int = 200,
        send_timeout_s: float = 5.0,
        check_interval_s: float = 1.0,
        backoff: Backoff | None = None,
        position_path: Path | None = None,
    ) -> None:
        if config.audit_log is None:
            raise ConfigError(
                f"node of {config.member}", ["audit_log is not set: no audit log to publish"]
            )
        node_signer(config)  # a node without [keys] fails at start, not at the first entry
        self.config = config
        self.log_path = Path(config.audit_log)
        store = Path(config.store_path)
        self.position_path = position_path or store.with_name(store.name + ".decisions.json")
        self.topic = Topics(config.backbone.topic_prefix).decisions
        self.batch_size = batch_size
        self.send_timeout_s = send_timeout_s
        self.check_interval_s = check_interval_s
        self.backoff = backoff or Backoff(0.2, 5.0)
        self.position = PublishPosition.load(self.position_path, self.log_path)
        self.published = 0
        self.broken: str = ""
        self._sleep = sleep
        self._clock = clock
        self._admin = TopicAdmin(config.backbone)
        self._producer: BackboneProducer | None = None
        self._topic_id: str | None = None
        self._last_check: float | None = None
        self.outage = OutageLog(log, f"decision publisher of {config.member}", clock)

    # -- reading the log -----------------------------------------------------------------

    def _follows(self, line: LogLine, seq: int, head: str) -> str:
        """Empty when ``line`` is the entry after (seq, head), else what is wrong."""
        data = line.data
        if data["seq"] != seq + 1:
            return f"entry seq {data['seq']} where seq {seq + 1} was due"
        if data["prev"] != head:
            return f"entry seq {data['seq']} does not link to the hash of seq {seq}"
        if recomputed_hash(data) != data["hash"]:
            return f"entry seq {data['seq']} does not match its hash"
        return ""

    def _relocate(self) -> None:
        """The stored position does not fit the file: find the entry it names, or, when the
        log was replaced by a new one, start at that one's first entry. Raises ChainBroken."""
        pos = self.position
        for line in iter_lines(self.log_path):
            if line.kind == "entry" and line.data["seq"] == pos.seq:
                if line.data["hash"] == pos.hash:
                    pos.offset, pos.line = line.end, line.number + 1
                    return
                break
        first = next((ln for ln in iter_lines(self.log_path) if ln.kind == "entry"), None)
        new_log = (
            first is not None
            and first.data["seq"] == 1
            and first.data["prev"] == GENESIS
            and first.data["hash"] != pos.first
        )
        if new_log:
            log.warning(
                "decision publisher of %s: %s no longer holds entry seq %d it published; "
                "a new log replaced it: publishing that from its first entry",
                self.config.member,
                self.log_path,
                pos.seq,
            )
            self.position = PublishPosition(log=str(self.log_path), topic_id=pos.topic_id)
            return
        raise ChainBroken(
            f"audit log {self.log_path} no longer holds entry seq {pos.seq} that was published "
            "(entries were removed or altered)"
        )

    def pending(self) -> list[LogLine]:
        """Up to ``batch_size`` entries after the position, each checked against the chain.

        Stops before a line still being written. Raises ChainBroken naming the line when the
        next entry does not continue the chain (entries before it are returned first), and
        AuditError when the file cannot be read.
        """
        return self._pending(relocated=False)

    def _pending(self, relocated: bool) -> list[LogLine]:
        if not self.log_path.exists():
            return []
        pos = self.position
        try:
            size = self.log_path.stat().st_size
        except OSError as exc:
            raise AuditError(f"cannot read audit log {self.log_path}: {exc.strerror}") from exc
        if pos.offset > size and not relocated:
            self._relocate()
            pos, relocated = self.position, True
        out: list[LogLine] = []
        seq, head = pos.seq, pos.hash
        for line in iter_lines(self.log_path, pos.offset, pos.line):
            if line.kind == "partial" or len(out) >= self.batch_size:
                break
            if line.kind == "checkpoint":
                if not out:  # nothing to publish before it: step over it now
                    pos.offset, pos.line = line.end, line.number + 1
                continue
            wrong = line.error if line.kind == "bad" else self._follows(line, seq, head)
            if wrong and not out and pos.seq > 0 and not relocated:
                self._relocate()  # a restart on a replaced log, or a stale offset
                return self._pending(relocated=True)
            if wrong:
                if out:
                    return out
                raise ChainBroken(f"audit log {self.log_path} line {line.number}: {wrong}")
            out.append(line)
            seq, head = line.data["seq"], line.data["hash"]
        return out

    def _message(self, line: LogLine) -> OutgoingMessage:
        data = line.data
        record = backbone_pb2.DecisionRecord(
            owner=self.config.member,
            sequence=data["seq"],
            entry_json=canonical_json({k: v for k, v in data.items() if k != "hash"}),
            entry_hash=bytes.fromhex(data["hash"]),
        )
        created = Timestamp()
        try:
            created.FromJsonString(str(data.get("time", "")))
        except ValueError:
            created.GetCurrentTime()
        value = seal(
            self.config.member,
            self.config.cluster,
            record,
            created_at=created,
            signer=node_signer(self.config),
        )
        return OutgoingMessage(topic=self.topic, key=self.config.member.encode(), value=value)

    # -- publishing ----------------------------------------------------------------------

    def check_topic(self) -> None:
        """Create the topic where missing; a new topic id (the broker forgot its topics)
        means every entry is published again. Raises BackboneError."""
        topic_id = self._admin.ensure([self.topic])[self.topic][0]
        self._last_check = self._clock()
        if self.position.topic_id and topic_id != self.position.topic_id:
            log.info(
                "decision publisher of %s: %s was recreated; publishing the audit log again",
                self.config.member,
                self.topic,
            )
            self.position = PublishPosition(log=str(self.log_path))
            self._close_producer()
        self._topic_id = topic_id

    def step(self) -> int:
        """One round: check the topic when due, publish one batch; returns how many entries.

        Raises BackboneError (nothing is marked published), AuditError (ChainBroken when the
        chain breaks) or OSError when the position cannot be written.
        """
        now = self._clock()
        if (
            self._last_check is None
            or self.outage.down
            or now - self._last_check >= (self.check_interval_s)
        ):
            self.check_topic()
        batch = self.pending()
        if not batch:
            return 0
        if self._producer is None:
            self._producer = open_producer(self.config.backbone, self.send_timeout_s)
        self._producer.send_all([self._message(line) for line in batch])
        last = batch[-1]
        if batch[0].data["seq"] == 1:
            self.position.first = batch[0].data["hash"]
        self.position.seq, self.position.hash = last.data["seq"], last.data["hash"]
        self.position.offset, self.position.line = last.end, last.number + 1
        self.position.topic_id = self._topic_id or ""
        self.position.save(self.position_path)
        self.published += len(batch)
        self.broken = ""
        return len(batch)

    def run(self, stop: threading.Event) -> None:
        """Publish until ``stop`` is set: every ``publish_interval_s``, at once while a full
        batch went out, with backoff while the backbone is down or the log cannot be read.
        Closes its clients before returning; raises nothing."""
        try:
            while not stop.is_set():
                try:
                    sent = self.step()
                except BackboneError as exc:
                    self.outage.failed(exc, f"published up to seq {self.position.seq}")
                    self._disconnect()
                    if pause(stop, self.backoff.next(), self._sleep):
                        break
                    continue
                except (AuditError, OSError) as exc:
                    if str(exc) != self.broken:
                        self.broken = str(exc)
                        log.error(
                            "decision publisher of %s: %s; nothing published past seq %d "
                            "(see `allmende audit verify`)",
                            self.config.member,
                            exc,
                            self.position.seq,
                        )
                    if pause(stop, self.backoff.next(), self._sleep):
                        break
                    continue
                self.backoff.reset()
                self.outage.recovered()
                if sent < self.batch_size and pause(
                    stop, self.config.publish_interval_s, self._sleep
                ):
                    break
        finally:
            self.close()

    def _close_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.close()

    def _disconnect(self) -> None:
        self._close_producer()
        with contextlib.suppress(Exception):
            self._admin.close()

    def close(self) -> None:
        """Close the backbone clients; safe to call twice."""
        self._disconnect()
