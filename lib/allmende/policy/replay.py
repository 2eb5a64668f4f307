"""What-if for ``allmende policy diff``: recorded decisions replayed under a proposed policy.

The owner's audit log holds, for every decision, the exact policy input the gateway decided
on. ``replay`` decides each of them under the current and under a proposed policy, with its
recorded ``now``, and reports the decisions whose outcome for the consumer changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from allmende.policy.engine import Decision
from allmende.policy.explain import DecidingPolicy, describe_row_filter, gateway_refusals, plain

__all__ = ["OUTCOME_KEYS", "Change", "DiffReport", "format_diff", "outcome", "replay"]

# What a consumer gets from a decision; `policy diff` reports a change in any of these.
OUTCOME_KEYS = ("allow", "mask", "row_filter", "max_rows", "min_group_size", "requests_per_minute")


def outcome(decision: Decision, document: Mapping[str, Any]) -> dict[str, Any]:
    """What the consumer gets from ``decision`` for the recorded ``document``.

    Includes the gateway's refusal of rows under an aggregate-only grant; the mask is cut
    to the fields the request receives, as in the gateway's decision summary.
    """
    member = str(document.get("subject", {}).get("member", ""))
    refused = gateway_refusals(decision, str(document.get("action", "")), member)
    if not decision.allow or refused:
        return {
            "allow": False,
            "mask": {},
            "row_filter": {},
            "max_rows": 0,
            "min_group_size": 0,
            "requests_per_minute": 0,
            "reasons": sorted(refused) or list(decision.reasons),
        }
    request, resource = document.get("request", {}), document.get("resource", {})
    chosen = set(request.get("fields") or resource.get("fields") or ())
    return {
        "allow": True,
        "mask": {k: v for k, v in decision.mask.items() if not chosen or k in chosen},
        "row_filter": plain(decision.row_filter),
        "max_rows": decision.max_rows,
        "min_group_size": decision.min_group_size,
        "requests_per_minute": decision.requests_per_minute,
        "reasons": list(decision.reasons),
    }


@dataclass(frozen=True)
class Change:
    """A recorded decision whose outcome differs under the proposed policy."""

    seq: int
    time: str
    member: str
    owner: str
    dataset: str
    action: str
    purpose: str
    changed: tuple[str, ...]
    before: Mapping[str, Any]
    after: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": self.time,
            "member": self.member,
            "owner": self.owner,
            "dataset": self.dataset,
            "action": self.action,
            "purpose": self.purpose,
            "changed": list(self.changed),
            "before": dict(self.before),
            "after": dict(self.after),
        }


@dataclass(frozen=True)
class DiffReport:
    """``changes``: the decisions that change; ``unchanged``: how many do not; ``skipped``:
    decision entries without a recorded input; ``gateway_refused``: entries the gateway
    refused after the current policy allowed them (a masked field used in a filter, a quota
    exceeded), which a replay of the policy cannot re-check. Neither of the last two is
    replayed."""

    changes: tuple[Change, ...]
    unchanged: int
    skipped: int
    gateway_refused: int
    current_version: str
    proposed_version: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "changes": [c.to_dict() for c in self.changes],
            "changed": len(self.changes),
            "unchanged": self.unchanged,
            "skipped": self.skipped,
            "gateway_refused": self.gateway_refused,
            "current_policy_version": self.current_version,
            "proposed_policy_version": self.proposed_version,
        }


def replay(
    entries: Iterable[Mapping[str, Any]], current: DecidingPolicy, proposed: DecidingPolicy
) -> DiffReport:
    """Decide every recorded ``"decision"`` entry's input under both policies; compare.

    The input is replayed as recorded, ``now`` included, so an agreement that expires later
    counts at the time of the request. An entry recorded as denied under the current policy
    version although that policy allows it was refused by the gateway beyond the policy
    (``DiffReport.gateway_refused``) and is not compared. Raises PolicyError when a policy
    fails on an input.
    """
    changes: list[Change] = []
    unchanged = skipped = gateway_refused = 0
    versions = ["", ""]
    for entry in entries:
        if entry.get("event", "decision") != "decision":
            continue
        document = entry.get("input")
        if not isinstance(document, dict):
            skipped += 1
            continue
        old = current.decide(document)
        versions[0] = old.policy_version
        before = outcome(old, document)
        if (
            entry.get("allow") is False
            and before["allow"]
            and entry.get("policy_version") == old.policy_version
        ):
            gateway_refused += 1
            continue
        new = proposed.decide(document)
        versions[1] = new.policy_version
        after = outcome(new, document)
        changed = tuple(k for k in OUTCOME_KEYS if before[k] != after[k])
        if not changed:
            unchanged += 1
            continue
        changes.append(
            Change(
                seq=int(entry.get("seq", 0)),
                time=str(entry.get("time", document.get("now", ""))),
                member=str(document.get("subject", {}).get("member", "")),
                owner=str(document.get("resource", {}).get("owner", "")),
                dataset=str(document.get("resource", {}).get("dataset", "")),
                action=str(document.get("action", "")),
                purpose=str(document.get("request", {}).get("purpose", "")),
                changed=changed,
                before=before,
                after=after,
            )
        )
    return DiffReport(tuple(changes), unchanged, skipped, gateway_refused, versions[0], versions[1])


def format_diff(report: DiffReport) -> str:
    """The changed decisions, one block each, and a count of the unchanged ones."""
    lines = []
    for c in report.changes:
        lines.append(
            f"#{c.seq} {c.time} {c.member} {c.action} {c.owner}/{c.dataset} for {c.purpose}:"
        )
        for key in c.changed:
            lines.append(f"    {key}: {_show(key, c.before)} → {_show(key, c.after)}")
        if c.before["allow"] != c.after["allow"]:
            lines.append("    now: " + "; ".join(c.after["reasons"]))
    summary = f"{len(report.changes)} decision(s) change, {report.unchanged} unchanged"
    if report.skipped:
        summary += f", {report.skipped} without a recorded input (not replayed)"
    if report.gateway_refused:
        summary += (
            f", {report.gateway_refused} refused by the gateway beyond the policy "
            "(a masked field used, a quota; not replayed)"
        )
    current, proposed = report.current_version or "-", report.proposed_version or "-"
    lines.append(f"{summary} (current {current}, proposed {proposed})")
    return "\n".join(lines)


def _show(key: str, values: Mapping[str, Any]) -> str:
    value = values[key]
    if key == "allow":
        return "allowed" if value else "denied"
    if key == "mask":
        return ", ".join(f"{k}={v}" for k, v in sorted(value.items())) or "no mask"
    if key == "row_filter":
        return " and ".join(describe_row_filter(value)) or "all rows"
    if key in ("min_group_size", "requests_per_minute") and not value:
        return "none"
    return str(value)
