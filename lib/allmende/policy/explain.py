"""Why the owner's policy decides a request as it does (``allmende policy explain``).

``explain`` builds the policy input exactly as the owner's gateway does (``policy_input``),
asks the policy, applies the refusals the gateway adds after the policy (an aggregate-only
grant asked for rows; a filter on a masked field) and returns an ``Explanation``: the
decision, the rule and agreements that decided it, masks, row filter and limits.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from allmende.errors import InvalidRequest
from allmende.policy import requests
from allmende.policy.engine import Decision
from allmende.policy.requests import (
    CLASSIFICATION_NAMES,
    FIELD_TYPE_NAMES,
    gateway_refusals,
    policy_time,
)
from allmende.v1 import catalog_pb2

__all__ = [
    "ACTIONS",
    "DatasetFacts",
    "DecidingPolicy",
    "Explanation",
    "Subject",
    "agreement_files",
    "applied_mask",
    "describe_mask",
    "describe_row_filter",
    "explain",
    "format_explanation",
    "gateway_refusals",
    "parse_time",
    "plain",
    "policy_input",
    "policy_time",
]

ACTIONS = ("query", "subscribe", "aggregate")
_AGREEMENT_CLASSIFICATIONS = ("internal", "restricted")
_NUMBER_TYPES = ("integer", "number")
_MAX_DECIMALS = 10
_OPS = {"eq": "=", "ne": "≠", "lt": "<", "le": "≤", "gt": ">", "ge": "≥", "in": "in"}


class DecidingPolicy(Protocol):
    """An embedded PolicyEngine or a RemotePolicy."""

    def decide(self, input: Mapping[str, Any]) -> Decision: ...


@dataclass(frozen=True)
class Subject:
    """Who asks: a member of a cluster, through one of its services."""

    member: str
    cluster: str
    service: str = "explain"


@dataclass(frozen=True)
class DatasetFacts:
    """What the policy sees of a dataset: its owner, id, classification and field names;
    ``types`` (field → type name, when known) tells which masks the gateway can apply."""

    owner: str
    dataset: str
    classification: str
    fields: tuple[str, ...] = ()
    types: Mapping[str, str] | None = None

    @classmethod
    def from_descriptor(cls, desc: catalog_pb2.DatasetDescriptor) -> DatasetFacts:
        classification = CLASSIFICATION_NAMES.get(desc.classification, "unspecified")
        types = {f.name: FIELD_TYPE_NAMES.get(f.type, "string") for f in desc.fields}
        return cls(desc.owner, desc.id, classification, tuple(types), types)


def applied_mask(spec: str, field_type: str | None) -> str:
    """The mask the gateway applies for ``spec`` on a field of ``field_type``: the spec, or
    "redact" when it cannot be applied exactly (an unknown kind, bucket on a string, …).

    Mirrors ``allmende_gateway.masks.compile_mask``; an unknown type keeps the spec.
    """
    kind, _, arg = spec.partition(":")
    if kind == "redact" or (kind == "hash" and arg):
        return spec
    if kind not in ("coarsen", "bucket"):
        return "redact"
    if field_type is None:
        return spec
    if kind == "coarsen":
        fits = field_type in _NUMBER_TYPES or field_type == "geometry"
        ok = arg.isascii() and arg.isdigit() and int(arg) <= _MAX_DECIMALS
        return spec if fits and ok else "redact"
    try:
        width = float(arg)
    except ValueError:
        return "redact"
    return spec if field_type in _NUMBER_TYPES and math.isfinite(width) and width > 0 else "redact"


def parse_time(text: str) -> dt.datetime:
    """A date (midnight UTC) or an RFC 3339 time with a zone; raises InvalidRequest."""
    value = text.strip()
    try:
        if len(value) == 10:
            day = dt.date.fromisoformat(value)
            return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(
            f"time {text!r} is not a date (2026-06-01) or an RFC 3339 time "
            "(2026-06-01T08:00:00+00:00)",
            field="at",
        ) from None
    if when.tzinfo is None:
        raise InvalidRequest(f"time {text!r} has no zone: add Z or +01:00", field="at")
    return when


def policy_input(
    subject: Subject,
    action: str,
    dataset: DatasetFacts,
    cluster: str,
    purpose: str,
    fields: Sequence[str],
    limit: int,
    now: dt.datetime,
) -> dict[str, Any]:
    """The input document the owner's gateway (of ``cluster``) hands to its policy."""
    resource = {
        "owner": dataset.owner,
        "cluster": cluster,
        "dataset": dataset.dataset,
        "classification": dataset.classification,
        "fields": list(dataset.fields),
    }
    who = {"member": subject.member, "cluster": subject.cluster, "service": subject.service}
    return requests.policy_input(who, action, resource, purpose, fields, limit, now)


@dataclass(frozen=True)
class Explanation:
    """One request, decided, with everything a steward needs to see why."""

    allow: bool
    decided_by: str  # "policy" or "gateway"
    rule: str
    reasons: tuple[str, ...]
    way_in: str
    agreements: tuple[str, ...]  # those that granted; for a denial, those the reasons name
    agreement_files: Mapping[str, str]
    masked: Mapping[str, str]  # field → mask as the gateway applies it, for the fields sent
    row_filter: Mapping[str, Any]
    max_rows: int
    min_group_size: int
    requests_per_minute: int
    policy_version: str
    input: Mapping[str, Any]
    decision: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "allow": self.allow,
            "decided_by": self.decided_by,
            "rule": self.rule,
            "reasons": list(self.reasons),
            "way_in": self.way_in,
            "agreements": [
                {"id": a, "file": self.agreement_files.get(a, "")} for a in self.agreements
            ],
            "masked": dict(self.masked),
            "row_filter": plain(self.row_filter),
            "max_rows": self.max_rows,
            "min_group_size": self.min_group_size,
            "requests_per_minute": self.requests_per_minute,
            "policy_version": self.policy_version,
            "input": plain(self.input),
            "decision": plain(self.decision),
        }


def explain(
    policy: DecidingPolicy,
    subject: Subject,
    dataset: DatasetFacts,
    purpose: str,
    *,
    cluster: str,
    action: str = "query",
    fields: Sequence[str] = (),
    filter_fields: Sequence[str] = (),
    functions: Sequence[str] = (),
    limit: int = 100,
    at: dt.datetime | None = None,
    files: Mapping[str, str] | None = None,
    known_agreements: Sequence[str] = (),
) -> Explanation:
    """Decide the request as the owner's gateway of ``cluster`` would and say why.

    ``files`` maps agreement ids to their YAML files (see ``agreement_files``);
    ``known_agreements`` are the loaded agreement ids, so that a denial can name the
    agreements its reasons speak of. Raises InvalidRequest for an unknown action, a
    missing purpose or a requested field the dataset lacks, PolicyError when the policy fails.
    """
    if action not in ACTIONS:
        raise InvalidRequest(f"action {action!r} is not one of {', '.join(ACTIONS)}", "action")
    if not purpose:
        raise InvalidRequest("purpose is required: say why the data is needed", "purpose")
    unknown = [f for f in [*fields, *filter_fields] if dataset.fields and f not in dataset.fields]
    if unknown:
        raise InvalidRequest(
            f"unknown field(s) {', '.join(unknown)} (dataset {dataset.owner}/{dataset.dataset} "
            f"has: {', '.join(dataset.fields)})",
            unknown[0],
        )
    now = at or dt.datetime.now(dt.UTC)
    document = policy_input(subject, action, dataset, cluster, purpose, fields, limit, now)
    decision = policy.decide(document)
    refused = gateway_refusals(decision, action, subject.member, filter_fields, functions)
    chosen = set(fields or dataset.fields)
    files = dict(files or {})
    if decision.allow and not refused:
        return Explanation(
            allow=True,
            decided_by="policy",
            rule=_grant_rule(decision, document),
            reasons=decision.reasons,
            way_in=decision.way_in,
            agreements=decision.agreements,
            agreement_files=files,
            masked={
                k: applied_mask(v, dataset.types.get(k) if dataset.types else None)
                for k, v in decision.mask.items()
                if not chosen or k in chosen
            },
            row_filter=decision.row_filter,
            max_rows=decision.max_rows,
            min_group_size=decision.min_group_size,
            requests_per_minute=decision.requests_per_minute,
            policy_version=decision.policy_version,
            input=document,
            decision=decision.to_dict(),
        )
    reasons = tuple(sorted(refused)) if refused else decision.reasons
    named = decision.agreements if refused else _named(reasons, known_agreements)
    return Explanation(
        allow=False,
        decided_by="gateway" if refused else "policy",
        rule=_refusal_rule(decision, document, refused),
        reasons=reasons,
        way_in=decision.way_in if refused else "",
        agreements=named,
        agreement_files=files,
        masked={},
        row_filter={},
        max_rows=0,
        min_group_size=decision.min_group_size if refused else 0,
        requests_per_minute=0,
        policy_version=decision.policy_version,
        input=document,
        decision=decision.to_dict(),
    )


def _grant_rule(decision: Decision, document: Mapping[str, Any]) -> str:
    if decision.way_in == "owner":
        return "baseline: owner reads its own dataset"
    if decision.way_in == "open":
        cluster = document["resource"]["cluster"]
        return f"baseline: open dataset, any member of cluster {cluster} may read it"
    if decision.way_in == "agreement":
        label = "agreements" if len(decision.agreements) > 1 else "agreement"
        return f"baseline → agreements: {label} {', '.join(decision.agreements)}"
    return "policy: " + "; ".join(decision.reasons)


def _refusal_rule(decision: Decision, document: Mapping[str, Any], refused: list[str]) -> str:
    if refused and "is masked for" in refused[0]:
        return "gateway: a masked field cannot be filtered, grouped or measured on"
    if refused and document["action"] != "aggregate":
        return "gateway: the grant is aggregate-only, so rows are refused"
    if refused:
        return "gateway: the aggregate-only grant allows COUNT, SUM and AVG only"
    subject, resource = document["subject"], document["resource"]
    if subject["cluster"] != resource["cluster"]:
        return f"baseline: only members of cluster {resource['cluster']} get in"
    if (
        subject["member"] != resource["owner"]
        and resource["classification"] in _AGREEMENT_CLASSIFICATIONS
    ):
        return "baseline → agreements: no agreement grants this request"
    return "baseline: no way in"


def _named(reasons: Sequence[str], known: Sequence[str]) -> tuple[str, ...]:
    """The known agreement ids that the reasons mention, sorted."""
    text = "\n".join(reasons)
    return tuple(
        sorted(a for a in set(known) if re.search(rf"(?<![\w-]){re.escape(a)}(?![\w-])", text))
    )


def agreement_files(folder: str | Path | None) -> dict[str, str]:
    """Agreement id → the YAML file that holds it, for the files of ``folder`` that name one.

    Best effort, for messages only: unreadable files are left out (loading the agreements
    reports them with their line).
    """
    if folder is None:
        return {}
    root = Path(folder)
    files = [root] if root.is_file() else sorted(root.glob("*.y*ml")) if root.is_dir() else []
    out: dict[str, str] = {}
    for path in files:
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("agreement"), str):
            out.setdefault(doc["agreement"], str(path))
    return out


def describe_mask(spec: str) -> str:
    """A mask spec in words: redact, hash:<id>, coarsen:<n>, bucket:<w>."""
    kind, _, arg = spec.partition(":")
    if kind == "redact":
        return "redacted (null)"
    if kind == "hash":
        return f"hashed (HMAC-SHA256 with the salt of agreement {arg})"
    if kind == "coarsen":
        return f"coarsened to {arg} decimal(s)"
    if kind == "bucket":
        return f"bucketed in steps of {arg}"
    return f"{spec} (unknown to the gateway: redacted)"


def describe_row_filter(row_filter: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Each condition of a row filter as ``field op value``."""
    lines = []
    for name, cond in sorted(row_filter.items()):
        for op, value in cond.items():
            shown = (
                "[" + ", ".join(map(str, value)) + "]"
                if isinstance(value, list | tuple)
                else json.dumps(value, ensure_ascii=False)
            )
            lines.append(f"{name} {_OPS.get(op, op)} {shown}")
    return lines


def format_explanation(e: Explanation) -> str:
    """The explanation as a steward reads it."""
    inp = e.input
    head = (
        f"{'ALLOWED' if e.allow else 'DENIED'}: {inp['subject']['member']} "
        f"({inp['subject']['cluster']}) {inp['action']} {inp['resource']['owner']}/"
        f"{inp['resource']['dataset']} for {inp['request']['purpose']} at {inp['now']}"
    )
    lines = [head, f"  rule:        {e.rule}"]
    label = "agreements:" if e.allow else "concerning:"
    for a in e.agreements:
        where = e.agreement_files.get(a)
        lines.append(f"  {label:<12} {a}" + (f" ({where})" if where else ""))
        label = ""
    lines.append("  reasons:" if len(e.reasons) > 1 else f"  reason:      {e.reasons[0]}")
    if len(e.reasons) > 1:
        lines += [f"    - {r}" for r in e.reasons]
    if e.allow:
        wanted = e.decision.get("mask", {})
        masked = [
            f"{k}: {describe_mask(v)}"
            + (
                f" (the policy says {wanted[k]}, which this field's type cannot take)"
                if wanted.get(k, v) != v
                else ""
            )
            for k, v in sorted(e.masked.items())
        ]
        lines.append("  masked:      " + ("\n               ".join(masked) or "none"))
        conditions = describe_row_filter(e.row_filter)
        lines.append("  row filter:  " + (" and ".join(conditions) or "none (all rows)"))
        lines.append(f"  max rows:    {e.max_rows}")
    if e.min_group_size:
        lines.append(f"  aggregates:  only, over groups of at least {e.min_group_size} records")
    if e.allow:
        quota = (
            f"{e.requests_per_minute} request(s) per minute" if e.requests_per_minute else "none"
        )
        lines.append(f"  quota:       {quota}")
    lines.append(f"  policy:      {e.policy_version}")
    return "\n".join(lines)


def plain(value: Any) -> Any:
    """Read-only mappings and tuples (as decisions hold them) as JSON dicts and lists."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value
