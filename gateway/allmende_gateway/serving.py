"""Answers Query and Subscribe for the datasets this town owns, from its store, under its policy."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable

from allmende.errors import InvalidRequest
from allmende.store import (
    Condition,
    StoreReader,
    compile_filter,
    conditions_from_proto,
)
from allmende.v1 import query_pb2
from allmende_gateway.authentication import Caller, Revocations
from allmende_gateway.enforcement import Enforcer, Grant, field_types
from allmende_gateway.page_tokens import TokenSigner

__all__ = ["OwnerService"]

DEFAULT_PAGE_SIZE = 100
_CHANGE_BATCH = 500


def _binding(
    caller: Caller, kind: str, req: query_pb2.QueryRequest | query_pb2.SubscribeRequest
) -> bytes:
    """What a token is bound to: the caller and every part of the request but the token."""
    stripped = type(req)()
    stripped.CopyFrom(req)  # type: ignore[arg-type]  # the same type, type(req)
    stripped.ClearField("page_token" if kind == "query" else "resume_token")
    if kind == "subscribe":
        stripped.ClearField("start")
    h = hashlib.sha256(caller.identity.spiffe_id.encode() + b"\x00" + kind.encode() + b"\x00")
    h.update(stripped.SerializeToString(deterministic=True))
    return h.digest()


class OwnerService:
    """The owner's side of Query and Subscribe. Rows leave only through ``Grant.shape``."""

    def __init__(
        self,
        store: StoreReader,
        enforcer: Enforcer,
        signer: TokenSigner,
        *,
        owner: str,
        max_page_size: int = 1000,
        poll_s: float = 0.1,
        recheck_s: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
        revocations: Revocations | None = None,
    ) -> None:
        self.store = store
        self.enforcer = enforcer
        self.signer = signer
        self.owner = owner
        self.max_page_size = max_page_size
        self.poll_s = poll_s
        self.recheck_s = recheck_s
        self.monotonic = monotonic
        self.revocations = revocations or Revocations()

    def _grant(
        self,
        caller: Caller,
        action: str,
        req: query_pb2.QueryRequest | query_pb2.SubscribeRequest,
        limit: int,
    ) -> tuple[Grant, dict[str, str], list[Condition]]:
        # A revoked member has no grant, whatever the policy says.
        self.revocations.check(caller.member)
        desc = self.store.own_dataset(req.dataset, self.owner)
        request_conditions = conditions_from_proto(req.filter)
        grant = self.enforcer.authorize(
            caller,
            action,
            desc,
            req.purpose,
            list(req.fields),
            [c.field for c in request_conditions],
            limit,
        )
        types = field_types(desc)
        # The caller's filter and the policy's row filter are ANDed: a caller can narrow its
        # grant but never widen it.
        conditions = [*request_conditions, *grant.row_conditions]
        return grant, types, conditions

    def query(self, caller: Caller, req: query_pb2.QueryRequest) -> query_pb2.QueryResponse:
        """One page. Raises InvalidRequest, DatasetNotFound, PolicyDenied, MemberRevoked,
        StoreError."""
        page_size = req.page_size or DEFAULT_PAGE_SIZE
        if page_size > self.max_page_size:
            raise InvalidRequest(
                f"page_size {page_size} is above this gateway's maximum of {self.max_page_size}",
                field="page_size",
            )
        grant, types, conditions = self._grant(caller, "query", req, page_size)
        flt = compile_filter(conditions, types)
        after, served = None, 0
        if req.page_token:
            state = self.signer.open(req.page_token, _binding(caller, "query", req))
            after, served = state.get("after"), int(state.get("served", 0))
        room = max(grant.max_rows - served, 0)
        take = min(page_size, room)
        # One row more than we send tells whether another page (or a cut) follows.
        rows = self.store.page(req.dataset, flt, after, take + 1)
        more = len(rows) > take
        rows = rows[:take]
        resp = query_pb2.QueryResponse(decision=grant.summary)
        resp.records.extend(query_pb2.Record(id=rid, json=grant.shape(js)) for rid, js in rows)
        served += len(rows)
        if more and served < grant.max_rows:
            resp.next_page_token = self.signer.issue(
                _binding(caller, "query", req), {"after": rows[-1][0], "served": served}
            )
        elif more:
            resp.truncated = True
        return resp

    def _start_seq(self, caller: Caller, req: query_pb2.SubscribeRequest) -> int:
        if req.resume_token:
            state = self.signer.open(
                req.resume_token, _binding(caller, "subscribe", req), "resume_token"
            )
            return int(state["seq"])
        if req.start == query_pb2.START_FROM_LIVE:
            return self.store.last_seq(req.dataset)
        return 0

    async def subscribe(
        self, caller: Caller, req: query_pb2.SubscribeRequest
    ) -> AsyncIterator[query_pb2.ChangeEvent]:
        """Stream change events; the policy is asked again every ``recheck_s`` seconds.

        The first event carries only the decision and a resume token for the starting point.
        Raises (before or during the stream) InvalidRequest, DatasetNotFound, PolicyDenied,
        MemberRevoked. (The servicer's StreamGuard ends a revoked member's stream sooner.)
        """
        grant, types, conditions = self._grant(caller, "subscribe", req, 0)
        new_flt = compile_filter(conditions, types, column="json")
        old_flt = compile_filter(conditions, types, column="old_json")
        binding = _binding(caller, "subscribe", req)
        seq = self._start_seq(caller, req)
        yield query_pb2.ChangeEvent(
            decision=grant.summary, resume_token=self.signer.issue(binding, {"seq": seq})
        )
        checked = self.monotonic()
        while True:
            if self.monotonic() - checked >= self.recheck_s:
                # An agreement may have ended: a stream must not outlive its grant.
                grant, types, conditions = self._grant(caller, "subscribe", req, 0)
                new_flt = compile_filter(conditions, types, column="json")
                old_flt = compile_filter(conditions, types, column="old_json")
                checked = self.monotonic()
            rows, scanned = self.store.changes(req.dataset, seq, new_flt, old_flt, _CHANGE_BATCH)
            for row in rows:
                event = query_pb2.ChangeEvent(
                    resume_token=self.signer.issue(binding, {"seq": row.seq})
                )
                event.changed_at.FromJsonString(row.changed_at)
                if row.kind == "upsert" and row.new_visible and row.json is not None:
                    event.kind = query_pb2.CHANGE_KIND_UPSERT
                    event.record.id = row.record_id
                    event.record.json = grant.shape(row.json)
                else:
                    # Deleted, or changed so that it left the caller's view.
                    event.kind = query_pb2.CHANGE_KIND_DELETE
                    event.record.id = row.record_id
                yield event
            if scanned == seq:
                await asyncio.sleep(self.poll_s)
            seq = scanned
