"""What the owner's gateway asks its policy, and what it refuses after the policy allowed.

One place for both, used by the gateway's Enforcer and by ``allmende policy explain``, so
that an explanation is the gateway's decision, not a copy of it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from allmende.v1 import catalog_pb2

__all__ = [
    "CLASSIFICATION_NAMES",
    "FIELD_TYPE_NAMES",
    "aggregate_only_reason",
    "gateway_refusals",
    "policy_input",
    "policy_time",
    "resource_of",
]

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


class _Decided(Protocol):
    """What the refusals read of a decision (allmende.policy.Decision)."""

    @property
    def allow(self) -> bool: ...
    @property
    def mask(self) -> Mapping[str, str]: ...
    @property
    def agreements(self) -> Sequence[str]: ...
    @property
    def min_group_size(self) -> int: ...


def policy_time(when: dt.datetime) -> str:
    """``now`` as the gateway writes it: seconds, UTC, ``+00:00``. Not "Z": regopy's
    time.parse_rfc3339_ns cannot read it, and both Rego engines must decide alike."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def resource_of(desc: catalog_pb2.DatasetDescriptor, cluster: str) -> dict[str, Any]:
    """The ``resource`` part of the policy input for a dataset of the owner's ``cluster``."""
    return {
        "owner": desc.owner,
        "cluster": cluster,
        "dataset": desc.id,
        "classification": CLASSIFICATION_NAMES.get(desc.classification, "unspecified"),
        "fields": [f.name for f in desc.fields],
    }


def policy_input(
    subject: Mapping[str, str],
    action: str,
    resource: Mapping[str, Any],
    purpose: str,
    fields: Sequence[str],
    limit: int,
    now: dt.datetime,
) -> dict[str, Any]:
    """The input document (policies/allmende/input.schema.json) the owner's gateway hands
    to its policy. ``subject`` holds member, cluster and service; ``resource`` is what
    ``resource_of`` makes of the dataset."""
    return {
        "subject": {
            "member": subject["member"],
            "cluster": subject["cluster"],
            "service": subject["service"],
        },
        "action": action,
        "resource": {
            "owner": resource["owner"],
            "cluster": resource["cluster"],
            "dataset": resource["dataset"],
            "classification": resource["classification"],
            "fields": list(resource["fields"]),
        },
        "request": {"purpose": purpose, "fields": list(fields), "limit": limit},
        "now": policy_time(now),
    }


def _ids(decision: _Decided) -> str:
    return ", ".join(decision.agreements) or "(unnamed)"


def aggregate_only_reason(decision: _Decided, member: str) -> str:
    """Why Query and Subscribe are refused under an aggregate-only grant."""
    return (
        f"agreement {_ids(decision)} grants {member} aggregates only (groups of at least "
        f"{decision.min_group_size} records): use Aggregate"
    )


def gateway_refusals(
    decision: _Decided,
    action: str,
    member: str,
    used: Mapping[str, str] | Sequence[str] = (),
    functions: Sequence[str] = (),
) -> list[str]:
    """Why the owner's gateway refuses a request its policy allowed (empty when it does not).

    In this order: a field the request uses (``used``: field → "filter", "group_by" or
    "measure"; a plain list means filters) that is masked for the caller would reveal its
    values one guess at a time; an aggregate-only grant (``min_group_size`` > 0) serves
    Aggregate only, and no MIN or MAX (``functions``), which would reveal single records.
    """
    if not decision.allow:
        return []
    uses = dict(used) if isinstance(used, Mapping) else dict.fromkeys(used, "filter")
    masked = sorted(set(uses) & set(decision.mask))
    if masked:
        return [
            f"field {name!r} is masked for {member} and cannot be used in a {uses[name]}"
            for name in masked
        ]
    if decision.min_group_size <= 0:
        return []
    if action != "aggregate":
        return [aggregate_only_reason(decision, member)]
    extremes = sorted({f.upper() for f in functions} & {"MIN", "MAX"})
    if extremes:
        return [
            f"agreement {_ids(decision)} grants {member} counts, sums and averages only "
            f"({' and '.join(extremes)} would reveal single records)"
        ]
    return []
