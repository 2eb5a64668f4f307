"""Subscribe: the owner's change log streamed under the caller's grant.

The policy is asked again every ``recheck_s`` seconds, so a stream never outlives its grant;
the opening decision is audited before the first event, the stream's end after its last.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from allmende.errors import AllmendeError, AuditUnavailable, PolicyDenied
from allmende.v1 import query_pb2
from allmende_gateway.authentication import Caller
from allmende_gateway.serving import Decided, OwnerService, binding

__all__ = ["subscribe"]

log = logging.getLogger(__name__)

# Change-log entries scanned per store read.
_CHANGE_BATCH = 500


def _start_seq(service: OwnerService, caller: Caller, req: query_pb2.SubscribeRequest) -> int:
    if req.resume_token:
        state = service.signer.open(
            req.resume_token, binding(caller, "subscribe", req), "resume_token"
        )
        return int(state["seq"])
    if req.start == query_pb2.START_FROM_LIVE:
        return service.store.last_seq(req.dataset)
    return 0


async def subscribe(
    service: OwnerService, caller: Caller, req: query_pb2.SubscribeRequest
) -> AsyncIterator[query_pb2.ChangeEvent]:
    """Stream change events; the policy is asked again every ``recheck_s`` seconds.

    The first event carries only the decision and a resume token for the starting point.
    The opening decision is audited before it; a "stream-end" record with the number
    of events sent follows when the stream ends (best effort: it is over by then).
    Raises (before or during the stream) InvalidRequest, DatasetNotFound, PolicyDenied,
    MemberRevoked, QuotaExceeded, AuditUnavailable. (The servicer's StreamGuard ends a
    revoked member's stream sooner.)
    """
    opened = service.subscribe_grant(caller, req, counts=True)
    d = opened
    new_flt, old_flt = d.sql("json"), d.sql("old_json")
    bound = binding(caller, "subscribe", req)
    seq = _start_seq(service, caller, req)
    service.audit(
        caller,
        "subscribe",
        req,
        d.policy_input,
        d.decision,
        allow=True,
        reasons=d.decision.reasons,
    )
    sent = 0
    ended: AllmendeError | None = None
    try:
        yield query_pb2.ChangeEvent(
            decision=d.grant.summary, resume_token=service.signer.issue(bound, {"seq": seq})
        )
        checked = service.monotonic()
        while True:
            if service.monotonic() - checked >= service.recheck_s:
                # An agreement may have ended: a stream must not outlive its grant.
                d = service.subscribe_grant(caller, req, counts=False)
                new_flt, old_flt = d.sql("json"), d.sql("old_json")
                checked = service.monotonic()
            rows, scanned = service.store.changes(req.dataset, seq, new_flt, old_flt, _CHANGE_BATCH)
            for row in rows:
                event = query_pb2.ChangeEvent(
                    resume_token=service.signer.issue(bound, {"seq": row.seq})
                )
                event.changed_at.FromJsonString(row.changed_at)
                event.record.id = row.record_id
                if row.kind == "upsert" and row.new_visible and row.json is not None:
                    event.kind = query_pb2.CHANGE_KIND_UPSERT
                    event.record.json = d.grant.shape(row.json)
                else:
                    # Deleted, or changed so that it left the caller's view.
                    event.kind = query_pb2.CHANGE_KIND_DELETE
                sent += 1
                yield event
            if scanned == seq:
                await asyncio.sleep(service.poll_s)
            seq = scanned
    except AllmendeError as err:
        ended = err
        raise
    finally:
        _stream_end(service, caller, req, opened, d, sent, ended)


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
