"""The enforcement point: asks the owner's policy for a decision and shapes every row by it."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from allmende.errors import InvalidRequest, PolicyDenied
from allmende.store import Condition, conditions_from_row_filter
from allmende.v1 import catalog_pb2, query_pb2
from allmende_gateway.authentication import Caller

__all__ = ["CLASSIFICATION_NAMES", "FIELD_TYPE_NAMES", "Enforcer", "Grant", "field_types"]

CLASSIFICATION_NAMES = {
    catalog_pb2.CLASSIFICATION_OPEN: "open",
    catalog_pb2.CLASSIFICATION_INTERNAL: "internal",
    catalog_pb2.CLASSIFICATION_RESTRICTED: "restricted",
}
FIELD_TYPE_NAMES = {
    catalog_pb2.FIELD_TYPE_STRING: "string",
    catalog_pb2.FIELD_TYPE_INTEGER: "integer",
    catalog_pb2.FIELD_TYPE_NUMBER: "number",
    catalog_pb2.FIELD_TYPE_BOOLEAN: "boolean",
    catalog_pb2.FIELD_TYPE_TIMESTAMP: "timestamp",
    catalog_pb2.FIELD_TYPE_GEOMETRY: "geometry",
}


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


class PolicyLike(Protocol):
    def decide(self, input: Mapping[str, Any]) -> DecisionLike: ...


@dataclass(frozen=True)
class Grant:
    """What the policy allows for one request, ready to apply to rows."""

    fields: tuple[str, ...]
    schema_fields: tuple[str, ...]
    mask: Mapping[str, str]
    row_conditions: tuple[Condition, ...]
    max_rows: int
    summary: query_pb2.DecisionSummary

    @property
    def reshapes(self) -> bool:
        """False when rows can be sent exactly as stored (no projection, no mask)."""
        return bool(self.mask) or self.fields != self.schema_fields

    def shape(self, stored_json: str) -> str:
        """The row as the caller may see it: projected to ``fields``, masked values redacted.

        Every mask kind is applied as redaction (null): a kind this gateway does not know is
        treated as the most restrictive one rather than passed through.
        """
        if not self.reshapes:
            return stored_json
        row = json.loads(stored_json)
        out = {name: (None if name in self.mask else row.get(name)) for name in self.fields}
        return json.dumps(out, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class Enforcer:
    """Builds the policy input (DESIGN: Policy input and decision) and turns decisions into Grants."""

    def __init__(
        self,
        policy: PolicyLike,
        *,
        owner: str,
        cluster: str,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.policy = policy
        self.owner = owner
        self.cluster = cluster
        self.clock = clock

    def policy_input(
        self,
        caller: Caller,
        action: str,
        desc: catalog_pb2.DatasetDescriptor,
        purpose: str,
        fields: Sequence[str],
        limit: int,
    ) -> dict[str, Any]:
        return {
            "subject": {
                "member": caller.member,
                "cluster": caller.cluster,
                "service": caller.service,
            },
            "action": action,
            "resource": {
                "owner": desc.owner,
                "cluster": self.cluster,
                "dataset": desc.id,
                "classification": CLASSIFICATION_NAMES.get(desc.classification, "unspecified"),
                "fields": [f.name for f in desc.fields],
            },
            "request": {"purpose": purpose, "fields": list(fields), "limit": limit},
            "now": self.clock().strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    def authorize(
        self,
        caller: Caller,
        action: str,
        desc: catalog_pb2.DatasetDescriptor,
        purpose: str,
        fields: Sequence[str],
        filter_fields: Sequence[str],
        limit: int,
    ) -> Grant:
        """Decide and return the Grant.

        Raises InvalidRequest for a missing purpose or an unknown field, and PolicyDenied when
        the policy denies or when the caller filters on a field the policy masks for it (a
        filter on a masked field would reveal its values one guess at a time).
        """
        if not purpose:
            raise InvalidRequest("purpose is required: say why you need the data", field="purpose")
        schema = [f.name for f in desc.fields]
        for name in fields:
            if name not in schema:
                raise InvalidRequest(
                    f"unknown field {name!r} in fields (dataset {desc.owner}/{desc.id} has: "
                    f"{', '.join(schema)})",
                    field=name,
                )
        decision = self.policy.decide(
            self.policy_input(caller, action, desc, purpose, fields, limit)
        )
        denied = dict(subject_member=caller.member, owner=desc.owner, dataset=desc.id)
        if not decision.allow:
            raise PolicyDenied(decision.reasons, decision.policy_version, **denied)
        masked_filters = sorted(set(filter_fields) & set(decision.mask))
        if masked_filters:
            raise PolicyDenied(
                [
                    f"field {name!r} is masked for {caller.member} and cannot be used in a filter"
                    for name in masked_filters
                ],
                decision.policy_version,
                **denied,
            )
        chosen = tuple(fields) if fields else tuple(schema)
        summary = query_pb2.DecisionSummary(
            masked_fields={k: v for k, v in decision.mask.items() if k in chosen},
            row_filter_json=json.dumps(_plain(decision.row_filter), sort_keys=True)
            if decision.row_filter
            else "",
            max_rows=decision.max_rows,
            policy_version=decision.policy_version,
            reasons=list(decision.reasons),
        )
        return Grant(
            fields=chosen,
            schema_fields=tuple(schema),
            mask={k: v for k, v in decision.mask.items() if k in chosen},
            row_conditions=tuple(conditions_from_row_filter(decision.row_filter)),
            max_rows=decision.max_rows,
            summary=summary,
        )
