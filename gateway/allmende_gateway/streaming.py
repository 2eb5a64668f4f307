"""Subscribe and SubscribeBatches: the owner's change log streamed under the caller's grant.

One loop (``_follow``) serves both RPCs: it authorizes, audits, reads the log a chunk at a
time and asks the policy again every ``recheck_s`` seconds, so a stream never outlives its
grant. The two RPCs differ only in how a chunk is framed: one ChangeEvent per change, or one
ChangeBatch per chunk.

Messages are built as wire bytes (DESIGN: splice each record's bytes into the response):
a record's bytes as the grant shapes them come from the gateway's row cache (shared with
Query), the timestamp's bytes are reused while it repeats, and one signed resume token
covers a whole chunk. Flow control: the generators yield one
chunk's messages and are resumed only after the servicer has written them (each write awaits
HTTP/2 flow control), so a stalled consumer holds at most one chunk here, never the log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

from google.protobuf import timestamp_pb2

from allmende.errors import AllmendeError, AuditUnavailable, InvalidRequest, PolicyDenied
from allmende.store import SqlFilter
from allmende.v1 import query_pb2
from allmende_gateway.authentication import Caller
from allmende_gateway.page_tokens import TokenSigner
from allmende_gateway.serving import Decided, OwnerService, binding

__all__ = [
    "DEFAULT_MAX_BATCH",
    "MAX_BATCH",
    "batch_stream",
    "event_stream",
    "subscribe",
]

log = logging.getLogger(__name__)

# Change-log entries read per chunk of a Subscribe stream.
EVENT_CHUNK = 500
DEFAULT_MAX_BATCH = 500
MAX_BATCH = 5000

_UPSERT = b"\x08\x01\x12"  # kind = UPSERT, then the tag of field 2 (record)
_DELETE = b"\x08\x02\x12"  # kind = DELETE, then the tag of field 2 (record)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Every length up to 16 KiB, encoded once: framing a record then costs a list lookup.
_TABLE = 1 << 14
_SIZES = [_varint(n) for n in range(_TABLE)]


def _size(n: int) -> bytes:
    return _SIZES[n] if n < _TABLE else _varint(n)


def _framed(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: its tag, the payload's length, the payload."""
    return tag + _size(len(payload)) + payload


class _Stamps:
    """``changed_at`` as the bytes of ChangeEvent field 4; one import shares one timestamp,
    so the last few are kept rather than parsed again per change."""

    def __init__(self) -> None:
        self._known: dict[str, bytes] = {}

    def __call__(self, text: str) -> bytes:
        raw = self._known.get(text)
        if raw is None:
            ts = timestamp_pb2.Timestamp()
            ts.FromJsonString(text)
            raw = _framed(b"\x22", ts.SerializeToString())
            if len(self._known) >= 64:
                self._known.clear()
            self._known[text] = raw
        return raw


class _Tokens:
    """Resume tokens ``<signed range>.<seq>``: one HMAC per chunk instead of per change.

    The signed part binds the caller and the request (``binding``) and the range of log
    positions the stream has reached for them; ``seq`` must lie in it. Resuming from any
    position in the range gives only changes the caller's grant shows, so signing the range
    once is as strong as signing each position, at a fraction of the cost.
    """

    def __init__(self, signer: TokenSigner, bound: bytes) -> None:
        self._signer = signer
        self._bound = bound

    def prefix(self, lo: int, hi: int) -> str:
        return self._signer.issue(self._bound, {"hi": hi, "lo": lo}) + "."

    def open(self, token: str) -> int:
        """The position after which to continue; raises InvalidRequest naming resume_token."""
        signed, dot, seq = token.rpartition(".")
        if not dot or not seq.isdigit():
            raise InvalidRequest(
                "resume_token is not a token this gateway issued", field="resume_token"
            )
        state = self._signer.open(signed, self._bound, "resume_token")
        position = int(seq)
        if not int(state.get("lo", -1)) <= position <= int(state.get("hi", -1)):
            raise InvalidRequest(
                "resume_token was altered: its position is outside what it was issued for",
                field="resume_token",
            )
        return position


@dataclass
class _Chunk:
    """What one read of the log gives: the visible changes after ``after`` up to ``scanned``.

    ``heads`` hold each change's ChangeEvent fields 1-2 (kind, record) and ``stamps`` its
    field 4 (changed_at), as wire bytes; ``decision`` is set on a stream's first chunk only.
    """

    after: int
    scanned: int
    seqs: list[int] = field(default_factory=list)
    heads: list[bytes] = field(default_factory=list)
    stamps: list[bytes] = field(default_factory=list)
    decision: query_pb2.DecisionSummary | None = None


@dataclass(frozen=True)
class _View:
    """What a decision lets through: its filters over the new and the old record, its shape."""

    decided: Decided
    new: SqlFilter
    old: SqlFilter

    @classmethod
    def of(cls, d: Decided) -> _View:
        return cls(d, d.sql("json"), d.sql("old_json"))


def _read(
    service: OwnerService, view: _View, dataset: str, seq: int, limit: int, stamps: _Stamps
) -> _Chunk:
    """Up to ``limit`` log entries after ``seq``, the visible ones framed as the grant shows them."""
    rows, scanned = service.store.changes(dataset, seq, view.new, view.old, limit)
    chunk = _Chunk(seq, scanned)
    grant = view.decided.grant
    # The gateway's cache of records as a grant shapes them (serving.OwnerService.rows,
    # shared with Query): each stored JSON is masked once per grant, not once per stream.
    # It hands back a QueryResponse's ``records`` field: one tag byte, then the Record's
    # length and bytes, which are also ChangeEvent's ``record`` field after its own tag.
    record = service.rows.record
    heads, seqs, framed = chunk.heads, chunk.seqs, chunk.stamps
    when, stamp = "", b""
    for seq, kind, record_id, stored, changed_at, new_visible, _ in rows:
        if changed_at != when:  # one import, one timestamp: most rows repeat the last
            when = changed_at
            stamp = stamps(when)
        if new_visible and stored is not None and kind == "upsert":
            heads.append(_UPSERT + record(grant, record_id, stored)[1:])
        else:
            # Deleted, or changed so that it left the caller's view.
            rid = record_id.encode()
            len_id = _size(len(rid))
            n = 1 + len(len_id) + len(rid)
            heads.append(b"".join((_DELETE, _size(n), b"\n", len_id, rid)))
        seqs.append(seq)
        framed.append(stamp)
    return chunk


def _check_batch(req: query_pb2.SubscribeRequest) -> int:
    if req.max_batch > MAX_BATCH:
        raise InvalidRequest(
            f"max_batch {req.max_batch} is above the maximum of {MAX_BATCH} events per batch",
            field="max_batch",
        )
    return req.max_batch or DEFAULT_MAX_BATCH


async def _follow(
    service: OwnerService, caller: Caller, req: query_pb2.SubscribeRequest, limit: int
) -> AsyncIterator[tuple[_Chunk, _Tokens]]:
    """The chunks of one subscription: the first at once (with the decision, maybe empty),
    then each read that holds a visible change.

    The opening decision is audited before the first chunk; a "stream-end" record with the
    number of changes sent follows when the stream ends (best effort: it is over by then).
    Raises (before or during the stream) InvalidRequest, DatasetNotFound, PolicyDenied,
    MemberRevoked, QuotaExceeded, AuditUnavailable.
    """
    bound = binding(caller, "subscribe", req)
    tokens = _Tokens(service.signer, bound)
    # Bad arguments are refused before a decision: they are neither counted nor audited.
    if req.resume_token:
        seq = tokens.open(req.resume_token)
    elif req.start == query_pb2.START_FROM_LIVE:
        seq = service.store.last_seq(req.dataset)
    else:
        seq = 0
    opened = service.subscribe_grant(caller, req, counts=True)
    view = _View.of(opened)
    service.audit(
        caller,
        "subscribe",
        req,
        opened.policy_input,
        opened.decision,
        allow=True,
        reasons=opened.decision.reasons,
    )
    stamps = _Stamps()
    sent = 0
    ended: AllmendeError | None = None
    try:
        first = True
        checked = service.monotonic()
        while True:
            if service.monotonic() - checked >= service.recheck_s:
                # An agreement may have ended: a stream must not outlive its grant.
                view = _View.of(service.subscribe_grant(caller, req, counts=False))
                checked = service.monotonic()
            chunk = _read(service, view, req.dataset, seq, limit, stamps)
            if chunk.seqs or first:
                if first:
                    chunk.decision = view.decided.grant.summary
                    first = False
                sent += len(chunk.seqs)
                yield chunk, tokens  # resumed once the servicer has written it
            elif chunk.scanned == seq:
                await asyncio.sleep(service.poll_s)
            else:
                await asyncio.sleep(0)  # changes this caller cannot see: let other calls in
            seq = chunk.scanned
    except AllmendeError as err:
        ended = err
        raise
    finally:
        _stream_end(service, caller, req, opened, view.decided, sent, ended)


async def event_stream(
    service: OwnerService, caller: Caller, req: query_pb2.SubscribeRequest
) -> AsyncGenerator[list[bytes], None]:
    """Subscribe: serialized ChangeEvents, a chunk's worth at a time.

    The first event carries only the decision and a resume token for the starting point;
    every change carries the token to resume right after it. Raises as ``_follow``.
    """
    async for chunk, tokens in _follow(service, caller, req, EVENT_CHUNK):
        prefix = tokens.prefix(chunk.after, chunk.scanned)
        out: list[bytes] = []
        if chunk.decision is not None:
            hello = query_pb2.ChangeEvent(
                decision=chunk.decision, resume_token=prefix + str(chunk.after)
            )
            out.append(hello.SerializeToString())
        for seq, head, stamp in zip(chunk.seqs, chunk.heads, chunk.stamps, strict=True):
            token = (prefix + str(seq)).encode()
            out.append(b"".join((head, b"\x1a", _size(len(token)), token, stamp)))
        yield out


async def batch_stream(
    service: OwnerService, caller: Caller, req: query_pb2.SubscribeRequest
) -> AsyncGenerator[list[bytes], None]:
    """SubscribeBatches: one serialized ChangeBatch per chunk of at most ``max_batch`` changes.

    The first batch carries the decision (and may hold no events); each batch's resume token
    continues after its last change. Raises InvalidRequest for max_batch, else as ``_follow``.
    """
    limit = _check_batch(req)
    async for chunk, tokens in _follow(service, caller, req, limit):
        parts: list[bytes] = []
        sizes = _SIZES
        for head, stamp in zip(chunk.heads, chunk.stamps, strict=True):
            n = len(head) + len(stamp)
            parts += (b"\n", sizes[n] if n < _TABLE else _varint(n), head, stamp)
        token = (tokens.prefix(chunk.scanned, chunk.scanned) + str(chunk.scanned)).encode()
        parts += (b"\x12", _size(len(token)), token)
        if chunk.decision is not None:
            parts.append(_framed(b"\x1a", chunk.decision.SerializeToString()))
        yield [b"".join(parts)]


async def subscribe(
    service: OwnerService, caller: Caller, req: query_pb2.SubscribeRequest
) -> AsyncIterator[query_pb2.ChangeEvent]:
    """``event_stream`` as ChangeEvent objects, for callers in this process."""
    async for messages in event_stream(service, caller, req):
        for raw in messages:
            yield query_pb2.ChangeEvent.FromString(raw)


def _stream_end(
    service: OwnerService,
    caller: Caller,
    req: query_pb2.SubscribeRequest,
    opened: Decided,
    last: Decided,
    sent: int,
    ended: AllmendeError | None,
) -> None:
    denied = isinstance(ended, PolicyDenied)
    reasons = ended.reasons if isinstance(ended, PolicyDenied) else last.decision.reasons
    try:
        service.audit(
            caller,
            "subscribe",
            req,
            opened.policy_input,
            last.decision,
            allow=not denied,
            reasons=reasons,
            rows=sent,
            event="stream-end",
        )
    except AuditUnavailable as exc:
        log.error("the end of a subscription of %s was not audited: %s", caller.member, exc)
