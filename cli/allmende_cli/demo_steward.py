"""The data steward's part of the demo tour: aggregate-only grants, explain, audit, bundles.

Each step is a real call on the running federation. ``Answered`` remembers what the owner's
gateway answered earlier in the tour, so that ``explain`` can be checked against it.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization

from allmende.errors import AllmendeError, PolicyDenied
from allmende.v1 import query_pb2
from allmende_cli.demo_federation import DemoFederation
from allmende_cli.tables import render_table

if TYPE_CHECKING:  # the policy engine (regorus) is imported when a step needs it
    from allmende.policy import PolicyEngine

__all__ = ["Answered", "aggregate_only", "audit_trail", "explain_answers", "signed_bundles"]

OWNER, PERMITS = "kaiserslautern", "parking-permits"
Say = Callable[[str], None]


@dataclass(frozen=True)
class Answered:
    """A request of the tour and what Kaiserslautern's gateway answered to it."""

    step: int
    member: str
    service: str
    purpose: str
    action: str
    allowed: bool
    masked: Mapping[str, str]
    reasons: tuple[str, ...]
    policy_version: str

    @classmethod
    def allowed_by(
        cls,
        step: int,
        member: str,
        service: str,
        purpose: str,
        action: str,
        decision: query_pb2.DecisionSummary,
    ) -> Answered:
        return cls(
            step,
            member,
            service,
            purpose,
            action,
            True,
            dict(decision.masked_fields),
            tuple(decision.reasons),
            decision.policy_version,
        )

    @classmethod
    def denied_by(
        cls, step: int, member: str, service: str, purpose: str, action: str, err: PolicyDenied
    ) -> Answered:
        return cls(
            step,
            member,
            service,
            purpose,
            action,
            False,
            {},
            tuple(err.reasons),
            err.policy_version,
        )


def _indent(text: str, by: str = "  ") -> str:
    return "\n".join(by + line for line in text.splitlines())


# -- aggregate-only -------------------------------------------------------------------------


def aggregate_only(fed: DemoFederation, say: Say) -> Answered:
    """Pirmasens counts permits per district under ka-permit-statistics-2026, then asks
    for rows and is refused; returns that refusal. Raises AllmendeError when either does
    not behave so."""
    say("  agreement ka-permit-statistics-2026 grants group:suedwest-partners statistics:")
    say("  counts over groups of at least 5 permits, no care permits, plates hashed")
    say(f"  aggregate {OWNER}/{PERMITS}  purpose=statistics  group by district  measure count")
    with fed.client("pirmasens", "traffic-dashboard") as c:
        result = c.aggregate(OWNER, PERMITS, "statistics", group_by=["district"])
        groups = [json.loads(g) for g in result.groups]
        say(render_table(["district", "permits"], [[g["district"], g["count"]] for g in groups]))
        d = result.decision
        say(
            f"  {result.suppressed_groups} district(s) with fewer than {d.min_group_size} "
            f"permits suppressed; row filter {d.row_filter_json}; "
            f"quota {d.requests_per_minute} requests/minute"
        )
        if not groups or not result.suppressed_groups or d.min_group_size != 5:
            raise AllmendeError(
                f"the aggregate should show groups and suppress small ones: {len(groups)} "
                f"group(s), {result.suppressed_groups} suppressed, k={d.min_group_size}"
            )
        say("  the same dashboard asks for the permits themselves (Query, purpose statistics):")
        try:
            c.query(OWNER, PERMITS, "statistics", page_size=5)
        except PolicyDenied as err:
            say(f"  PERMISSION_DENIED by {err.owner}'s gateway:")
            for reason in err.reasons:
                say(f"    - {reason}")
            return Answered.denied_by(
                8, "pirmasens", "traffic-dashboard", "statistics", "query", err
            )
    raise AllmendeError("a row query under an aggregate-only grant should have been refused")


# -- explain --------------------------------------------------------------------------------


def _owner_policy(fed: DemoFederation) -> tuple[PolicyEngine, dict[str, str]]:
    """Kaiserslautern's local policy as its gateway builds it, and its agreement files
    (relative to the demo folder, for short lines). Raises PolicyError."""
    from allmende.policy import PolicyEngine
    from allmende.policy.explain import agreement_files
    from allmende_gateway.server import load_policy

    config = fed.towns[OWNER].config.gateway
    policy = load_policy(config)
    if not isinstance(policy, PolicyEngine):  # the demo's towns use the embedded engine
        raise AllmendeError(f"expected the embedded policy engine, got {type(policy).__name__}")
    files = {
        a: str(Path(f).relative_to(fed.workdir))
        for a, f in agreement_files(config.agreements_dir).items()
    }
    return policy, files


def explain_answers(fed: DemoFederation, answers: list[Answered], say: Say) -> None:
    """Explain each answered request with ``allmende.policy.explain``; raises AllmendeError
    when an explanation disagrees with what the gateway answered."""
    from allmende.policy.explain import DatasetFacts, Subject, explain, format_explanation
    from allmende.store import StoreReader

    town = fed.towns[OWNER]
    policy, files = _owner_policy(fed)
    reader = StoreReader(town.config.gateway.store_path)
    try:
        dataset = DatasetFacts.from_descriptor(reader.own_dataset(PERMITS, OWNER))
    finally:
        reader.close()
    say(f"  allmende policy explain --config {OWNER}/town.toml, for requests made above:")
    for a in answers:
        e = explain(
            policy,
            Subject(a.member, fed.towns[a.member].cluster, a.service),
            dataset,
            a.purpose,
            cluster=town.cluster,
            action=a.action,
            files=files,
            known_agreements=policy.agreement_ids,
        )
        say(f"\n  step {a.step}, {a.member}/{a.service} {a.action} for {a.purpose}:")
        say(_indent(format_explanation(e)))
        if e.allow != a.allowed or e.policy_version != a.policy_version:
            raise AllmendeError(
                f"explain says {'allowed' if e.allow else 'denied'} under {e.policy_version}, "
                f"the gateway {'allowed' if a.allowed else 'denied'} under {a.policy_version}"
            )
        if a.allowed and dict(e.masked) != dict(a.masked):
            raise AllmendeError(f"explain masks {dict(e.masked)}, the gateway {dict(a.masked)}")
        if not a.allowed and sorted(e.reasons) != sorted(a.reasons):
            raise AllmendeError(f"explain gives {e.reasons}, the gateway {a.reasons}")
        what = "masks" if a.allowed else "reasons"
        say(f"  = the gateway's answer in step {a.step}: same decision, {what} and policy version")


# -- audit ----------------------------------------------------------------------------------


def _public_key(fed: DemoFederation) -> bytes:
    from allmende.signing import load_ed25519_private

    keys = fed.towns[OWNER].config.gateway.keys
    assert keys is not None  # every demo town has [keys]
    return (
        load_ed25519_private(keys.signing_key)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


def audit_trail(fed: DemoFederation, say: Say) -> None:
    """Kaiserslautern's audit report for its permits, and verify of its log (and of an
    edited copy). Raises AllmendeError when the log does not verify or the copy does."""
    from allmende.audit import read_entries, summarize, verify

    path = fed.towns[OWNER].config.gateway.audit_log
    assert path is not None  # a town file always sets one
    entries = list(read_entries(path))
    rows = summarize(entries, dataset=PERMITS)
    say(f"  allmende audit report --config {OWNER}/town.toml --dataset {PERMITS}:")
    say(
        render_table(
            ["member", "service", "purpose", "action", "allowed", "denied", "rows"],
            [[r.member, r.service, r.purpose, r.action, r.allowed, r.denied, r.rows] for r in rows],
        )
    )
    if not rows:
        raise AllmendeError(f"the audit log {path} holds no request for {PERMITS}")
    key = _public_key(fed)
    report = verify(path, key)
    say(
        f"  allmende audit verify (the hash-chained log): {report.entries} entries, {report.checkpoints} signed "
        f"checkpoint(s), signed up to seq {report.covered_seq} of {report.last_seq}"
    )
    for w in report.warnings:
        say(f"    warning: {w.message}")
    if not report.ok:
        raise AllmendeError("Kaiserslautern's audit log does not verify: " + str(report.problems))
    signed = (
        "every checkpoint's signature verifies"
        if report.checkpoints
        else "none signed yet (the gateway signs one after 100 entries, after 10 s, at shutdown)"
    )
    say(f"    OK: every entry is intact, in order and linked; {signed}")
    # Tamper with a copy: turn a denial into an allow, as someone covering tracks might.
    copy = path.with_name("audit-edited-copy.log")
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    at = next((i for i, line in enumerate(lines) if '"allow":false' in line), None)
    if at is None:
        raise AllmendeError(f"the audit log {path} holds no denial (step 4 was one)")
    lines[at] = lines[at].replace('"allow":false', '"allow":true', 1)
    copy.write_text("".join(lines), encoding="utf-8")
    edited = verify(copy, key)
    say(f"  a copy with one denial edited into an allow: verify finds {len(edited.problems)}:")
    for p in edited.problems:
        say(f"    {p}")
    if edited.ok:
        raise AllmendeError("verify did not notice the edited entry")


# -- signed policy bundles ------------------------------------------------------------------


def signed_bundles(fed: DemoFederation, say: Say) -> None:
    """Kaiserslautern's steward proposes hashed plates for Pirmasens, sees with ``policy
    diff`` which recorded decisions change, and publishes: the CA signs the cluster bundle,
    Kaiserslautern its own; its gateway switches without a restart. Raises AllmendeError
    when it does not switch within 10 s or the new policy does not apply."""
    from allmende.audit import read_entries
    from allmende.backbone import BackboneProducer, OutgoingMessage, Topics
    from allmende.policy import (
        BUNDLED_POLICY_DIR,
        PolicyEngine,
        load_agreements,
        read_policy_sources,
    )
    from allmende.policy.bundles import (
        build_cluster_bundle,
        build_owner_bundle,
        bundle_key,
        seal_bundle,
    )
    from allmende.policy.replay import format_diff, replay
    from allmende.signing import MemberSigner

    town = fed.towns[OWNER]
    config = town.config.gateway
    assert config.agreements_dir is not None and config.audit_log is not None and town.gateway
    proposed_dir = town.dir / "agreements-proposed"
    shutil.copytree(config.agreements_dir, proposed_dir, dirs_exist_ok=True)
    changed = proposed_dir / "ka-ps-permits-2026.yaml"
    changed.write_text(
        changed.read_text(encoding="utf-8").replace("plate: redact", "plate: hash", 1),
        encoding="utf-8",
    )
    say("  the steward proposes: Pirmasens gets plates hashed (a pseudonym), not redacted")
    say("  allmende policy diff: the recorded decisions replayed under the proposal:")
    current, _ = _owner_policy(fed)
    settings = {"default_max_rows": config.default_max_rows}
    proposed = PolicyEngine.from_paths(BUNDLED_POLICY_DIR, proposed_dir, settings)
    diff = replay(read_entries(config.audit_log), current, proposed)
    say(_indent(format_diff(diff), "    "))
    if not diff.changes or any(c.changed != ("mask",) for c in diff.changes):
        raise AllmendeError(f"the diff should show only masks changing: {diff.to_dict()}")

    backbone = town.config.node.backbone
    keys = town.config.node.keys
    assert keys is not None  # every demo town has [keys]
    ca = fed.cas[town.cluster]
    rego = read_policy_sources(BUNDLED_POLICY_DIR, include_tests=False)
    cluster_bundle = build_cluster_bundle(town.cluster, 1, rego, comment="the demo's baseline")
    owner_bundle = build_owner_bundle(
        town.cluster,
        OWNER,
        1,
        load_agreements(proposed_dir),
        comment="plates hashed for Pirmasens",
    )
    topic = Topics(backbone.topic_prefix).policy
    gateway = town.gateway.gateway
    before = gateway.policy_label
    started = time.monotonic()
    producer = BackboneProducer(backbone)
    try:
        producer.send_all(
            [
                OutgoingMessage(topic, bundle_key(""), seal_bundle(cluster_bundle, ca.signer)),
                OutgoingMessage(
                    topic,
                    bundle_key(OWNER),
                    seal_bundle(owner_bundle, MemberSigner.from_file(OWNER, keys.signing_key)),
                ),
            ]
        )
    finally:
        producer.close()
    say(
        f"  allmende policy publish: the {town.cluster} CA signs the cluster bundle v1 (Rego, "
        f"baseline), {OWNER} signs its bundle v1 (agreements); both sent on {topic}"
    )
    while gateway.policy_label == before:
        if time.monotonic() - started > 10:
            raise AllmendeError(
                f"{OWNER}'s gateway did not switch within 10 s: {gateway.policy_note or '?'}"
            )
        time.sleep(0.02)
    say(
        f"  {OWNER}'s node verified both signatures; its gateway switched from the {before} "
        f"policy to {gateway.policy_label} {time.monotonic() - started:.1f} s after publishing"
    )
    with fed.client("pirmasens", "traffic-dashboard") as c:
        page = c.query(
            OWNER, PERMITS, "traffic-planning", fields=["permit_id", "plate"], page_size=3
        )
    d = page.decision
    if not d.masked_fields.get("plate", "").startswith("hash") or not d.policy_version.startswith(
        gateway.policy_label
    ):
        raise AllmendeError(f"the published policy does not apply: {d}")
    say("  Pirmasens' next query, no restart anywhere:")
    plates = [json.loads(r.json) for r in page.records[:3]]
    say(
        render_table(
            ["permit_id", "plate"], [[p["permit_id"], p["plate"][:16] + "…"] for p in plates]
        )
    )
    say(f"  masked: {dict(d.masked_fields)}; policy {d.policy_version}")
