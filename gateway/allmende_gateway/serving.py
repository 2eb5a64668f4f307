"""Answers Query, Subscribe and Aggregate for the datasets this town owns, under its policy.

Every decision (allow and deny) is written to the owner's audit log before anything is sent;
when the log cannot be written, the call fails (AuditUnavailable) and nothing leaves.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from google.protobuf.message import Message

from allmende.audit.chain import EntryTemplate, TemplatedRecord
from allmende.errors import (
    AllmendeError,
    AuditUnavailable,
    InvalidRequest,
    PolicyDenied,
    QuotaExceeded,
)
from allmende.policy.engine import Decision
from allmende.store import (
    OrderPlan,
    SqlFilter,
    StoreReader,
    and_filters,
    compile_filter,
    compile_order,
    compile_request_filter,
    filter_fields,
    plan_aggregate,
)
from allmende.v1 import catalog_pb2, query_pb2
from allmende_gateway.authentication import Caller, Revocations
from allmende_gateway.enforcement import DecisionLike, Enforcer, Grant, field_types
from allmende_gateway.page_tokens import TokenSigner
from allmende_gateway.pages import RowCache, page_wire
from allmende_gateway.quotas import QuotaBook

__all__ = ["AuditSink", "Decided", "OwnerService", "binding"]

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 100


def binding(
    caller: Caller,
    kind: str,
    req: query_pb2.QueryRequest | query_pb2.SubscribeRequest,
    raw: bytes | None = None,
) -> bytes:
    """What a token is bound to: the caller and every part of the request but the token.

    For a subscription neither ``start`` nor ``max_batch`` count either, so the resume tokens
    of Subscribe and SubscribeBatches continue each other, whatever the batch size. ``raw``
    is ``req`` serialized deterministically, when the caller has it already.
    """
    if isinstance(req, query_pb2.QueryRequest):
        unbound = bool(req.page_token)
    else:
        unbound = bool(req.resume_token or req.start or req.max_batch)
    stripped = req
    if unbound:
        # Fields at their default are not serialized (proto3, no presence): a request without
        # them is its own stripped form, and the copy is only needed when one is set.
        stripped = type(req)()
        stripped.CopyFrom(req)  # type: ignore[arg-type]  # the same type, type(req)
        stripped.ClearField("page_token" if kind == "query" else "resume_token")
        if kind == "subscribe":
            stripped.ClearField("start")
            stripped.ClearField("max_batch")
        raw = None
    h = hashlib.sha256(caller.identity.spiffe_id.encode() + b"\x00" + kind.encode() + b"\x00")
    h.update(stripped.SerializeToString(deterministic=True) if raw is None else raw)
    return h.digest()


# What a refusal made before the policy was asked records as its decision.
_NO_DECISION = Decision.denied(["refused before the policy was asked"], "")


class AuditSink(Protocol):
    """Where the owner's decisions are recorded (allmende.audit.AuditLog).

    ``append`` must have written the record when it returns, and raise AuditUnavailable
    when it cannot.
    """

    def append(self, record: Mapping[str, Any]) -> object: ...


@dataclass(frozen=True)
class Decided:
    """One authorized request: its grant, the decision and input it was made on, its filter."""

    grant: Grant
    decision: DecisionLike
    policy_input: dict[str, Any]
    types: Mapping[str, str]
    request_filter: query_pb2.Filter

    def sql(self, column: str = "json") -> SqlFilter:
        """The caller's filter AND the policy's row filter, over the JSON in ``column``: a
        caller can narrow its grant but never widen it (its or/not stay inside its part).
        Raises InvalidRequest for the caller's filter, PolicyError for the policy's."""
        # The same grant and filter compile to the same SQL: kept per grant (numbered for
        # life), column and the filter's bytes. Only filters that compiled are kept.
        key = (self.grant.serial, column, self.request_filter.SerializeToString(deterministic=True))
        known = _COMPILED.get(key)
        if known is not None:
            return known
        compiled = and_filters(
            compile_request_filter(self.request_filter, self.types, column),
            compile_filter(self.grant.row_conditions, self.types, column),
        )
        if len(_COMPILED) >= _COMPILED_SIZE:
            _COMPILED.clear()
        _COMPILED[key] = compiled
        return compiled


@dataclass(frozen=True)
class QueryPlan:
    """What a Query's authorization decided, for the descriptor, the policy (by the
    Enforcer's generation) and the second (of the policy input's ``now``) it was decided
    on: the decision and grant, the SQL of the caller's filter AND the policy's row filter,
    the order, and what its page tokens are bound to."""

    desc: catalog_pb2.DatasetDescriptor
    generation: int
    second: int
    decided: Decided
    sql: SqlFilter
    order: OrderPlan
    bound: bytes

    def holds(self, desc: catalog_pb2.DatasetDescriptor, generation: int, second: int) -> bool:
        """True when the request would be decided the same way now."""
        return self.second == second and self.desc is desc and self.generation == generation


# What an audit entry of the gateway varies in besides the log's seq and prev, and how many
# entry templates (one per caller, decision and policy input) are kept.
_VARYING = ("time", "rows", "request_sha256", "seq", "prev")
_TEMPLATES = 256
_PLANS = 256  # Query plans kept (requests repeated within a second)


class UtcMillis:
    """``now.isoformat(timespec="milliseconds")`` for a UTC ``now``, as an audit entry's
    time: the date and time to the second are formatted once per second and the
    milliseconds looked up (``isoformat`` with ``timespec`` takes 2-3 µs here, this a
    fifth of that). Safe to share between threads: the second and its text are swapped as
    one tuple."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: tuple[tuple[int, ...], str] = ((), "")

    def __call__(self, now: dt.datetime) -> str:
        second = (now.year, now.month, now.day, now.hour, now.minute, now.second)
        last = self._last
        if last[0] != second:
            last = self._last = (second, now.replace(microsecond=0, tzinfo=None).isoformat())
        return last[1] + _MILLIS[now.microsecond // 1000]


_MILLIS = tuple(f".{ms:03d}+00:00" for ms in range(1000))
_COMPILED: dict[tuple[int, str, bytes], SqlFilter] = {}
_BY_ID = compile_order((), {})
_COMPILED_SIZE = 1024


class OwnerService:
    """The owner's side of Query, Subscribe and Aggregate. Rows leave only through
    ``Grant.shape``, groups only through ``AggregatePlan.groups``; every decision is audited
    (when an ``auditor`` is given) before the answer leaves."""

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
        auditor: AuditSink | None = None,
        quotas: QuotaBook | None = None,
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
        self.auditor = auditor
        self.quotas = quotas or QuotaBook(monotonic=monotonic)
        self.rows = RowCache()
        self._templates: dict[tuple[Any, ...], tuple[DecisionLike, object, EntryTemplate]] = {}
        self._plans: dict[tuple[Caller, bytes], QueryPlan] = {}
        self._entry_time = UtcMillis()

    # -- decisions and the audit -----------------------------------------------------------

    def _dataset(self, caller: Caller, dataset: str) -> catalog_pb2.DatasetDescriptor:
        # A revoked member has no grant, whatever the policy says.
        self.revocations.check(caller.member)
        return self.store.own_dataset(dataset, self.owner)

    def audit(
        self,
        caller: Caller,
        action: str,
        req: Message,
        policy_input: Mapping[str, Any],
        decision: DecisionLike,
        *,
        allow: bool,
        reasons: Sequence[str],
        rows: int = 0,
        event: str = "decision",
        raw: bytes | None = None,
        recorded_input: bool = True,
    ) -> None:
        """Append the record of one decision (``raw``: ``req`` serialized deterministically,
        if the caller has it; ``recorded_input`` False: the input is not the policy's and is
        recorded as null); raises AuditUnavailable when it cannot be written."""
        if self.auditor is None:
            return
        now = self.enforcer.clock()
        if now.tzinfo is not dt.UTC:
            now = now.astimezone(dt.UTC)
        varying = {
            "time": self._entry_time(now),
            "rows": rows,
            "request_sha256": hashlib.sha256(
                req.SerializeToString(deterministic=True) if raw is None else raw
            ).hexdigest(),
        }
        dataset: str = getattr(req, "dataset", "")
        record: dict[str, Any] | None = None
        if allow == decision.allow and reasons is decision.reasons and recorded_input:
            # Requests repeat all but the time, the request and the rows served: their
            # entry's text is encoded once per caller, decision and input (the log's entry
            # template), not once per request. An input that is not JSON goes the usual
            # way, and the log refuses it naming the value.
            with contextlib.suppress(TypeError, ValueError):
                template = self._template(caller, action, dataset, policy_input, decision, event)
                record = TemplatedRecord(template, varying)
        if record is None:
            record = self._static(caller, action, dataset, policy_input, decision, event)
            record["allow"] = allow
            record["reasons"] = list(reasons)
            record["input"] = policy_input if recorded_input else None
            record.update(varying)
        try:
            self.auditor.append(record)
        except AuditUnavailable:
            raise
        except Exception as exc:  # any failure to log must refuse, never serve unlogged
            raise AuditUnavailable(f"the audit log refused the record: {exc!r}") from exc

    def _static(
        self,
        caller: Caller,
        action: str,
        dataset: str,
        policy_input: Mapping[str, Any],
        decision: DecisionLike,
        event: str,
    ) -> dict[str, Any]:
        """What an entry says about the caller, the request and the decision."""
        return {
            "subject": {
                "member": caller.member,
                "cluster": caller.cluster,
                "service": caller.service,
                "spiffe_id": caller.identity.spiffe_id,
            },
            "owner": self.owner,
            "dataset": dataset,
            "action": action,
            "purpose": policy_input.get("request", {}).get("purpose", ""),
            "allow": decision.allow,
            "reasons": list(decision.reasons),
            "policy_version": decision.policy_version,
            "agreements": list(decision.agreements),
            "way_in": decision.way_in,
            "event": event,
            "input": policy_input,
        }

    def _template(
        self,
        caller: Caller,
        action: str,
        dataset: str,
        policy_input: Mapping[str, Any],
        decision: DecisionLike,
        event: str,
    ) -> EntryTemplate:
        """The entry template of a decision as recorded, kept per caller, action, dataset,
        event, decision and input document (the latter two held, so their ids stay unique).
        Raises TypeError/ValueError when the input is not JSON."""
        key = (caller.identity, action, dataset, event, id(decision), id(policy_input))
        known = self._templates.get(key)
        if known is not None and known[0] is decision and known[1] is policy_input:
            return known[2]
        static = self._static(caller, action, dataset, policy_input, decision, event)
        template = EntryTemplate(static, _VARYING)
        if len(self._templates) >= _TEMPLATES:
            self._templates.clear()
        self._templates[key] = (decision, policy_input, template)
        return template

    def audit_refusal(self, caller: Caller, action: str, req: Message, err: AllmendeError) -> None:
        """Record a refusal made before any policy decision (a member the CA revoked): no
        policy version, no input to replay. Raises AuditUnavailable."""
        self.audit(
            caller,
            action,
            req,
            {"request": {"purpose": getattr(req, "purpose", "")}},
            _NO_DECISION,
            allow=False,
            reasons=[str(err)],
            recorded_input=False,
        )

    def _authorize(
        self,
        caller: Caller,
        action: str,
        req: query_pb2.QueryRequest | query_pb2.SubscribeRequest | query_pb2.AggregateRequest,
        desc: catalog_pb2.DatasetDescriptor,
        *,
        fields: Sequence[str],
        limit: int,
        grouped: Sequence[str] = (),
        measured: Sequence[str] = (),
        ordered: Sequence[str] = (),
        functions: Sequence[str] = (),
        counts: bool = True,
    ) -> Decided:
        """Decide, check the grant's obligations and the quota; audit a denial before raising.

        ``counts`` False for a subscription's re-check (not a new request: neither counted
        nor audited; its end is). Raises InvalidRequest, PolicyDenied, QuotaExceeded,
        AuditUnavailable, PolicyError.
        """
        self.enforcer.check_request(desc, req.purpose, fields)
        policy_input, decision = self.enforcer.decide(
            caller, action, desc, req.purpose, fields, limit
        )
        # A request without a filter names no field in it (most do not have one).
        used = dict.fromkeys(filter_fields(req.filter), "filter") if req.HasField("filter") else {}
        used.update({name: "sort order" for name in ordered})
        used.update({name: "measure" for name in measured})
        used.update({name: "group_by" for name in grouped})
        try:
            grant = self.enforcer.grant(caller, action, desc, decision, fields, used, functions)
        except PolicyDenied as err:
            if counts:
                self.audit(
                    caller, action, req, policy_input, decision, allow=False, reasons=err.reasons
                )
            raise
        decided = Decided(grant, decision, policy_input, grant.types, req.filter)
        if counts:
            self._count(caller, action, req, decided)
        return decided

    def _count(self, caller: Caller, action: str, req: Message, d: Decided) -> None:
        """Count one request against the caller's quota; audit and raise QuotaExceeded when
        it is used up."""
        decision = d.decision
        try:
            self.quotas.admit(
                caller.member, tuple(decision.agreements), decision.requests_per_minute
            )
        except QuotaExceeded as err:
            self.audit(
                caller, action, req, d.policy_input, decision, allow=False, reasons=[str(err)]
            )
            raise

    # -- Query -----------------------------------------------------------------------------

    def query(self, caller: Caller, req: query_pb2.QueryRequest) -> query_pb2.QueryResponse:
        """One page. Raises InvalidRequest, DatasetNotFound, PolicyDenied, MemberRevoked,
        QuotaExceeded, AuditUnavailable, StoreError."""
        return query_pb2.QueryResponse.FromString(self.query_wire(caller, req))

    def query_wire(self, caller: Caller, req: query_pb2.QueryRequest) -> bytes:
        """One page as the serialized QueryResponse the Query RPC sends (rows spliced as
        bytes, never a message built and serialized again). Raises as ``query``."""
        page_size = req.page_size or DEFAULT_PAGE_SIZE
        if page_size > self.max_page_size:
            raise InvalidRequest(
                f"page_size {page_size} is above this gateway's maximum of {self.max_page_size}",
                field="page_size",
            )
        desc = self._dataset(caller, req.dataset)
        raw = req.SerializeToString(deterministic=True)  # for the token and the audit entry
        plan = self._plan(caller, req, raw, desc, page_size)
        d, grant = plan.decided, plan.decided.grant
        after: tuple[list[Any], str] | None = None
        served = 0
        if req.page_token:
            # Bound to the caller and the whole request: it cannot be altered or moved.
            state = self.signer.open(req.page_token, plan.bound)
            after = (list(state.get("key", [])), str(state["after"]))
            served = int(state.get("served", 0))
        room = max(grant.max_rows - served, 0)
        take = min(page_size, room)
        # One row more than we send tells whether another page (or a cut) follows.
        rows = self.store.page(req.dataset, plan.sql, take + 1, plan.order, after)
        more = len(rows) > take
        rows = rows[:take]
        served += len(rows)
        token = ""
        if more and served < grant.max_rows:
            last_id, last_json = rows[-1]
            state = {"after": last_id, "served": served}
            if plan.order.fields:
                state["key"] = plan.order.row_key(last_json)
            token = self.signer.issue(plan.bound, state)
        wire = page_wire(self.rows, grant, rows, token, truncated=more and not token)
        self.audit(
            caller,
            "query",
            req,
            d.policy_input,
            d.decision,
            allow=True,
            reasons=d.decision.reasons,
            rows=len(rows),
            raw=raw,
        )
        return wire

    def _plan(
        self,
        caller: Caller,
        req: query_pb2.QueryRequest,
        raw: bytes,
        desc: catalog_pb2.DatasetDescriptor,
        page_size: int,
    ) -> QueryPlan:
        """The authorized plan of a Query, counted against the caller's quota.

        A request repeated by the same caller within the same second, on the same
        descriptor and under the same policy, is decided as it was (the policy input holds
        ``now`` to the second): its plan is kept, and only the quota is counted again. A
        revoked member never gets this far (``_dataset``). Raises as ``query``.
        """
        generation = self.enforcer.generation
        second = int(self.enforcer.clock().timestamp())
        key = (caller, raw)
        plan = self._plans.get(key)
        if plan is not None and plan.holds(desc, generation, second):
            self._count(caller, "query", req, plan.decided)
            return plan
        # Without order_by the plan (by record id) is the same for every dataset.
        order: OrderPlan = (
            compile_order(req.order_by, self.enforcer.types_of(desc)) if req.order_by else _BY_ID
        )
        d = self._authorize(
            caller,
            "query",
            req,
            desc,
            fields=list(req.fields),
            limit=page_size,
            ordered=[f.name for f in order.fields],
        )
        plan = QueryPlan(
            desc, generation, second, d, d.sql(), order, binding(caller, "query", req, raw)
        )
        # Kept only when the second did not turn while deciding (the input's `now` is then
        # this second), and not for a page token, which is used once.
        if not req.page_token and int(self.enforcer.clock().timestamp()) == second:
            if len(self._plans) >= _PLANS:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    # -- Aggregate -------------------------------------------------------------------------

    def aggregate(
        self, caller: Caller, req: query_pb2.AggregateRequest
    ) -> query_pb2.AggregateResponse:
        """Groups and measures over the records the grant lets the caller see.

        Under an aggregate-only grant (min_group_size k > 0) MIN and MAX are refused and
        groups of fewer than k records are left out (counted in ``suppressed_groups``).
        Raises InvalidRequest (naming the field), DatasetNotFound, PolicyDenied,
        MemberRevoked, QuotaExceeded, AuditUnavailable, StoreError.
        """
        desc = self._dataset(caller, req.dataset)
        if not req.purpose:
            raise InvalidRequest("purpose is required: say why you need the data", field="purpose")
        types = field_types(desc)
        plan = plan_aggregate(list(req.group_by), list(req.measures), types)
        d = self._authorize(
            caller,
            "aggregate",
            req,
            desc,
            fields=plan.fields,
            limit=0,
            grouped=plan.group_by,
            measured=[m.field for m in plan.measures if m.field],
            functions=[m.function for m in plan.measures],
        )
        flt = d.sql()
        result = self.store.aggregate(
            req.dataset,
            plan,
            flt,
            min_group_size=d.grant.min_group_size,
            max_groups=d.grant.max_rows,
        )
        resp = query_pb2.AggregateResponse(
            groups=[
                json.dumps(g, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
                for g in result.groups
            ],
            suppressed_groups=result.suppressed_groups,
            decision=d.grant.summary,
            truncated=result.truncated,
        )
        self.audit(
            caller,
            "aggregate",
            req,
            d.policy_input,
            d.decision,
            allow=True,
            reasons=d.decision.reasons,
            rows=len(result.groups),
        )
        return resp

    # -- Subscribe -------------------------------------------------------------------------

    def subscribe(
        self, caller: Caller, req: query_pb2.SubscribeRequest
    ) -> AsyncIterator[query_pb2.ChangeEvent]:
        """Stream change events (allmende_gateway.streaming.subscribe)."""
        from allmende_gateway.streaming import subscribe

        return subscribe(self, caller, req)

    def subscribe_grant(
        self, caller: Caller, req: query_pb2.SubscribeRequest, *, counts: bool
    ) -> Decided:
        """Authorize a subscription (``counts`` False for a re-check: not a new request)."""
        desc = self._dataset(caller, req.dataset)
        return self._authorize(
            caller, "subscribe", req, desc, fields=list(req.fields), limit=0, counts=counts
        )
