"""The enforcement point: asks the owner's policy for a decision and shapes every row by it."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from allmende.audit.chain import seal, sealed_text
from allmende.errors import InvalidRequest, PolicyDenied
from allmende.policy.requests import (
    CLASSIFICATION_NAMES,
    FIELD_TYPE_NAMES,
    gateway_refusals,
    policy_input,
    resource_of,
)
from allmende.store import Condition, conditions_from_row_filter
from allmende.v1 import catalog_pb2, query_pb2
from allmende_gateway.authentication import Caller
from allmende_gateway.masks import MaskFn, compile_mask, hash_salt, redact

__all__ = [
    "CLASSIFICATION_NAMES",
    "FIELD_TYPE_NAMES",
    "DecisionLike",
    "Enforcer",
    "Grant",
    "PolicyLike",
    "field_types",
]


def field_types(desc: catalog_pb2.DatasetDescriptor) -> dict[str, str]:
    """Field name → type name of a dataset's schema."""
    return {f.name: FIELD_TYPE_NAMES.get(f.type, "string") for f in desc.fields}


def _plain(value: Any) -> Any:
    """Read-only mappings and tuples (as decisions hold them) as JSON-able dicts and lists."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# How many Grants (one per distinct decision, action, projection and dataset) are kept.
_GRANT_CACHE_SIZE = 256
# Grants are numbered for life: a cache keyed by a Grant's serial (pages.RowCache) can never
# mistake a new Grant for an old one, as it could by id().
_SERIALS = itertools.count(1)
# The rows' canonical form (keys sorted by building them in order, compact, UTF-8 as is),
# with one encoder for all rows instead of one per json.dumps call.
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_DECODE = json.JSONDecoder().decode


class DecisionLike(Protocol):
    """What the gateway reads of a policy decision (allmende.policy.Decision)."""

    @property
    def allow(self) -> bool: ...
    @property
    def reasons(self) -> Sequence[str]: ...
    @property
    def mask(self) -> Mapping[str, str]: ...
    @property
    def row_filter(self) -> Mapping[str, Mapping[str, Any]]: ...
    @property
    def max_rows(self) -> int: ...
    @property
    def policy_version(self) -> str: ...
    @property
    def way_in(self) -> str: ...
    @property
    def agreements(self) -> Sequence[str]: ...
    @property
    def min_group_size(self) -> int: ...
    @property
    def requests_per_minute(self) -> int: ...


class PolicyLike(Protocol):
    """The owner's policy (allmende.policy.PolicyEngine, or RemotePolicy for an OPA sidecar).

    ``input_json`` is the input as JSON text, when the gateway has it (a policy may use it
    instead of encoding ``input`` again)."""

    def decide(
        self, input: Mapping[str, Any], *, input_json: str | None = None
    ) -> DecisionLike: ...


@dataclass(frozen=True)
class Grant:
    """What the policy allows for one request, ready to apply to rows.

    ``masks`` holds, per field of ``fields``, the function that masks its values (None: sent
    as stored); ``types`` the dataset's field types; ``mask`` the specs as applied (a spec
    the gateway could not apply exactly is reported as "redact", which is what it did).
    """

    fields: tuple[str, ...]
    schema_fields: tuple[str, ...]
    mask: Mapping[str, str]
    row_conditions: tuple[Condition, ...]
    max_rows: int
    summary: query_pb2.DecisionSummary
    masks: tuple[tuple[str, MaskFn | None], ...] = ()
    min_group_size: int = 0
    types: Mapping[str, str] = field(default_factory=dict)
    reshapes: bool = field(init=False)
    serial: int = field(init=False, compare=False)
    _sorted_masks: tuple[tuple[str, MaskFn | None], ...] = field(
        init=False, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        # Decided once per request, not per row: False when rows go out exactly as stored.
        object.__setattr__(self, "reshapes", bool(self.mask) or self.fields != self.schema_fields)
        if not self.masks:
            object.__setattr__(self, "masks", tuple((name, None) for name in self.fields))
        object.__setattr__(self, "serial", next(_SERIALS))
        # In key order, so the row comes out with its keys sorted without sorting each row.
        ordered = dict(sorted(self.masks, key=lambda m: m[0]))
        object.__setattr__(self, "_sorted_masks", tuple(ordered.items()))

    def shape(self, stored_json: str) -> str:
        """The row as the caller may see it: projected to ``fields``, masked values replaced."""
        if not self.reshapes:
            return stored_json
        get = _DECODE(stored_json).get
        return _ENCODE(
            {name: get(name) if fn is None else fn(get(name)) for name, fn in self._sorted_masks}
        )


class Enforcer:
    """Builds the policy input (DESIGN: Policy input and decision) and turns decisions into Grants.

    ``mask_key`` is the secret the hash masks' per-agreement salts derive from
    (``allmende_gateway.masks.mask_key``); without it a hash mask is applied as redact.
    """

    def __init__(
        self,
        policy: PolicyLike,
        *,
        owner: str,
        cluster: str,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        mask_key: bytes | None = None,
    ) -> None:
        self._policy = policy
        self.owner = owner
        self.cluster = cluster
        self.clock = clock
        self.mask_key = mask_key
        self._salts: dict[str, bytes] = {}
        self._grants: dict[tuple[Any, ...], tuple[DecisionLike, Grant]] = {}
        self._types: dict[int, tuple[catalog_pb2.DatasetDescriptor, dict[str, str]]] = {}
        self._inputs: dict[tuple[Any, ...], tuple[catalog_pb2.DatasetDescriptor, dict[str, Any]]]
        self._inputs = {}
        # The current policy's decision on each cached input document, by the document's
        # identity: a request repeated within the second is not encoded for the engine
        # again. Emptied when the policy is swapped (it never holds an engine: regorus
        # objects must be dropped on the thread that made them).
        self._decided: dict[int, tuple[dict[str, Any], DecisionLike]] = {}
        # Counts the policies swapped in, so what was decided under one is told from the
        # next without holding the policy (and its engine).
        self.generation = 0

    @property
    def policy(self) -> PolicyLike:
        """The owner's policy; assigning a new one (a policy bundle accepted) forgets the
        decisions of the old."""
        return self._policy

    @policy.setter
    def policy(self, policy: PolicyLike) -> None:
        self._decided.clear()
        self._policy = policy
        self.generation += 1

    def types_of(self, desc: catalog_pb2.DatasetDescriptor) -> Mapping[str, str]:
        """``field_types(desc)``, kept per descriptor object (the store hands back the same
        one until it changes); read-only."""
        known = self._types.get(id(desc))
        if known is not None and known[0] is desc:
            return known[1]
        types = field_types(desc)
        if len(self._types) >= _GRANT_CACHE_SIZE:
            self._types.clear()
        self._types[id(desc)] = (desc, types)  # holding desc keeps its id unique
        return types

    def policy_input(
        self,
        caller: Caller,
        action: str,
        desc: catalog_pb2.DatasetDescriptor,
        purpose: str,
        fields: Sequence[str],
        limit: int,
    ) -> dict[str, Any]:
        """The policy input document; read-only (the same request within the same second
        gets the same document, as ``now`` is to the second)."""
        now = self.clock()
        key = (
            caller.member,
            caller.cluster,
            caller.service,
            action,
            id(desc),
            purpose,
            tuple(fields),
            limit,
            int(now.timestamp()),
        )
        known = self._inputs.get(key)
        if known is not None and known[0] is desc:
            return known[1]
        subject = {"member": caller.member, "cluster": caller.cluster, "service": caller.service}
        resource = resource_of(desc, self.cluster)
        # Sealed: each audit entry splices its canonical JSON instead of encoding it again.
        document = seal(policy_input(subject, action, resource, purpose, fields, limit, now))
        if len(self._inputs) >= _GRANT_CACHE_SIZE:
            self._inputs.clear()
        self._inputs[key] = (desc, document)  # holding desc keeps its id unique
        return document

    @staticmethod
    def check_request(
        desc: catalog_pb2.DatasetDescriptor, purpose: str, fields: Sequence[str]
    ) -> None:
        """Raise InvalidRequest for a missing purpose or a field the dataset does not have."""
        if not purpose:
            raise InvalidRequest("purpose is required: say why you need the data", field="purpose")
        if not fields:
            return  # all fields: nothing to check against the schema
        schema = [f.name for f in desc.fields]
        for name in fields:
            if name not in schema:
                raise InvalidRequest(
                    f"unknown field {name!r} in fields (dataset {desc.owner}/{desc.id} has: "
                    f"{', '.join(schema)})",
                    field=name,
                )

    def decide(
        self,
        caller: Caller,
        action: str,
        desc: catalog_pb2.DatasetDescriptor,
        purpose: str,
        fields: Sequence[str],
        limit: int,
    ) -> tuple[dict[str, Any], DecisionLike]:
        """The policy input and the owner's decision on it; raises PolicyError."""
        document = self.policy_input(caller, action, desc, purpose, fields, limit)
        known = self._decided.get(id(document))
        if known is not None and known[0] is document:
            return document, known[1]
        # The document is sealed for the audit log: the engine takes its text as it is.
        text = sealed_text(document)
        if text is None:
            decision = self._policy.decide(document)
        else:
            decision = self._policy.decide(document, input_json=text)
        if len(self._decided) >= _GRANT_CACHE_SIZE:
            self._decided.clear()
        self._decided[id(document)] = (document, decision)  # held: its id stays unique
        return document, decision

    def _salt(self, agreement: str) -> bytes | None:
        if self.mask_key is None:
            return None
        salt = self._salts.get(agreement)
        if salt is None:
            salt = self._salts[agreement] = hash_salt(self.mask_key, agreement)
        return salt

    def grant(
        self,
        caller: Caller,
        action: str,
        desc: catalog_pb2.DatasetDescriptor,
        decision: DecisionLike,
        fields: Sequence[str],
        used: Mapping[str, str] = MappingProxyType({}),
        functions: Sequence[str] = (),
    ) -> Grant:
        """The Grant of an allowing ``decision``.

        ``used`` maps each field the request filters, groups or measures by to that use
        ("filter", "group_by", "measure"); ``functions`` are the Aggregate functions asked
        for. Raises PolicyDenied when the policy denies; when a used field is masked for the
        caller (a filter, group or measure on it would reveal its values one guess at a
        time); when an aggregate-only grant is used for Query or Subscribe, or for MIN or MAX
        (each would reveal single records); and PolicyError for a row filter the gateway
        cannot apply.
        """
        denied = dict(subject_member=caller.member, owner=desc.owner, dataset=desc.id)
        if not decision.allow:
            raise PolicyDenied(decision.reasons, decision.policy_version, **denied)
        refusals = gateway_refusals(decision, action, caller.member, used, functions)
        if refusals:
            raise PolicyDenied(refusals, decision.policy_version, **denied)
        # Requests repeat: the engine hands back the same Decision object for the same
        # answer, so the Grant built for it (masks compiled, summary filled) is kept.
        key = (id(decision), action, tuple(fields), desc.owner, desc.id, desc.version)
        cached = self._grants.get(key)
        if cached is not None and cached[0] is decision:
            return cached[1]
        grant = self._build(desc, decision, fields)
        if len(self._grants) >= _GRANT_CACHE_SIZE:
            self._grants.clear()
        self._grants[key] = (decision, grant)  # holding the decision keeps its id unique
        return grant

    def _build(
        self, desc: catalog_pb2.DatasetDescriptor, decision: DecisionLike, fields: Sequence[str]
    ) -> Grant:
        types = field_types(desc)
        schema = tuple(f.name for f in desc.fields)
        chosen = tuple(fields) if fields else schema
        masks: list[tuple[str, MaskFn | None]] = []
        applied: dict[str, str] = {}
        for name in chosen:
            spec = decision.mask.get(name)
            if spec is None:
                masks.append((name, None))
                continue
            fn = compile_mask(spec, types.get(name, "string"), self._salt)
            masks.append((name, fn))
            applied[name] = "redact" if fn is redact else spec
        summary = query_pb2.DecisionSummary(
            masked_fields=applied,
            row_filter_json=json.dumps(_plain(decision.row_filter), sort_keys=True)
            if decision.row_filter
            else "",
            max_rows=decision.max_rows,
            policy_version=decision.policy_version,
            reasons=list(decision.reasons),
            way_in=decision.way_in,
            agreements=list(decision.agreements),
            min_group_size=decision.min_group_size,
            requests_per_minute=decision.requests_per_minute,
        )
        return Grant(
            fields=chosen,
            schema_fields=schema,
            mask=applied,
            row_conditions=tuple(conditions_from_row_filter(decision.row_filter)),
            max_rows=decision.max_rows,
            summary=summary,
            masks=tuple(masks),
            min_group_size=decision.min_group_size,
            types=types,
        )
