"""A Query repeated within a second is answered on the plan decided for it (OwnerService's
QueryPlan), and that plan never outlives what it was decided on: the second of the policy
input's `now`, the dataset's descriptor, the policy in force, the caller. A revoked member
and a used-up quota are refused on a planned request as on a new one.

Real parts throughout: the bench town's SQLite store filled by the node's importer, the
owner's Rego policy and agreement on regorus, the audit log as a file with signed
checkpoints. The clock is the test's, so the second turns when the test says.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from allmende.audit import AuditLog
from allmende.config import load_town_config
from allmende.errors import PolicyDenied, QuotaExceeded
from allmende.identity import Identity
from allmende.policy import BUNDLED_POLICY_DIR, PolicyEngine
from allmende.signing import MemberSigner
from allmende.store import StoreReader
from allmende.v1 import query_pb2
from allmende_cli.bench.town import AGREEMENT, CONSUMER, DATASET, OWNER, PURPOSE, make_bench_town
from allmende_gateway.authentication import Caller, MemberRevoked
from allmende_gateway.enforcement import Enforcer
from allmende_gateway.page_tokens import TokenSigner
from allmende_gateway.quotas import QuotaBook
from allmende_gateway.serving import OwnerService
from allmende_node.importer import import_configured

PARTNER = Caller(Identity("suedwest", CONSUMER, "dashboard"), via_gateway=False)
STRANGER = Caller(Identity("suedwest", "zweibruecken", "dashboard"), via_gateway=False)
START = dt.datetime(2026, 12, 2, 5, 0, 0, 100_000, tzinfo=dt.UTC)


@dataclass
class Owner:
    town_dir: Path
    service: OwnerService
    enforcer: Enforcer
    audit_path: Path
    now: list[dt.datetime]
    authorized: list[str]

    def tick(self, seconds: float) -> None:
        self.now[0] += dt.timedelta(seconds=seconds)

    def entries(self) -> list[dict[str, Any]]:
        lines = self.audit_path.read_text(encoding="utf-8").splitlines()
        return [e for e in map(json.loads, lines) if "action" in e]


def engine(agreements: Path) -> PolicyEngine:
    return PolicyEngine.from_paths(BUNDLED_POLICY_DIR, agreements, {"default_max_rows": 10_000})


@pytest.fixture
def owner(tmp_path: Path) -> Iterator[Owner]:
    town = make_bench_town(tmp_path, 40)
    gw = town.config.gateway
    now = [START]
    enforcer = Enforcer(
        engine(town.dir / "agreements"), owner=OWNER, cluster=gw.cluster, clock=lambda: now[0]
    )
    assert gw.keys is not None
    audit_path = tmp_path / "audit.jsonl"
    log = AuditLog(audit_path, MemberSigner.from_file(OWNER, gw.keys.signing_key))
    service = OwnerService(
        StoreReader(gw.store_path),
        enforcer,
        TokenSigner(),
        owner=OWNER,
        auditor=log,
        quotas=QuotaBook(monotonic=lambda: now[0].timestamp()),
    )
    authorized: list[str] = []
    authorize = service._authorize

    def counted(caller: Caller, action: str, *args: Any, **kwargs: Any) -> Any:
        authorized.append(caller.member)
        return authorize(caller, action, *args, **kwargs)

    service._authorize = counted  # type: ignore[method-assign]
    try:
        yield Owner(town.dir, service, enforcer, audit_path, now, authorized)
    finally:
        log.close()


def request(**kw: Any) -> query_pb2.QueryRequest:
    return query_pb2.QueryRequest(owner=OWNER, dataset=DATASET, purpose=PURPOSE, **kw)


def test_a_query_repeated_within_the_second_is_not_decided_again(owner: Owner) -> None:
    first = owner.service.query(PARTNER, request(page_size=5))
    again = owner.service.query(PARTNER, request(page_size=5))
    assert owner.authorized == [CONSUMER]
    # The same answer (the agreement's mask applied), and each request audited.
    assert [r.id for r in again.records] == [r.id for r in first.records]
    assert json.loads(again.records[0].json)["holder"] is None
    assert again.decision == first.decision
    entries = owner.entries()
    assert [(e["allow"], e["rows"]) for e in entries] == [(True, 5), (True, 5)]
    assert entries[0]["input"] == entries[1]["input"]
    # Its next page is bound to the request as before.
    second_page = owner.service.query(
        PARTNER, request(page_size=5, page_token=again.next_page_token)
    )
    assert second_page.records[0].id == "KL-000006"


def test_a_new_second_decides_again_with_its_own_now(owner: Owner) -> None:
    owner.service.query(PARTNER, request(page_size=5))
    owner.tick(1.0)
    owner.service.query(PARTNER, request(page_size=5))
    assert owner.authorized == [CONSUMER, CONSUMER]
    first, second = (e["input"]["now"] for e in owner.entries())
    assert (first, second) == ("2026-12-02T05:00:00+00:00", "2026-12-02T05:00:01+00:00")


def test_an_expired_agreement_is_not_kept_alive_by_a_plan(owner: Owner, tmp_path: Path) -> None:
    ends = tmp_path / "ends"
    ends.mkdir()
    text = AGREEMENT.replace("valid_until: 2099-01-01", "valid_until: 2026-12-02T05:00:01Z")
    (ends / "bench.yaml").write_text(text, encoding="utf-8")
    owner.enforcer.policy = engine(ends)
    owner.service.query(PARTNER, request(page_size=5))
    owner.tick(1.0)
    with pytest.raises(PolicyDenied):
        owner.service.query(PARTNER, request(page_size=5))


def test_a_swapped_policy_applies_to_the_very_next_request(owner: Owner, tmp_path: Path) -> None:
    owner.service.query(PARTNER, request(page_size=5))
    none = tmp_path / "no-agreements"
    none.mkdir()
    owner.enforcer.policy = engine(none)  # as the gateway swaps in an accepted bundle
    with pytest.raises(PolicyDenied):
        owner.service.query(PARTNER, request(page_size=5))
    assert [e["allow"] for e in owner.entries()] == [True, False]


def test_a_changed_dataset_is_decided_again(owner: Owner) -> None:
    owner.service.query(PARTNER, request(page_size=5))
    # The node imports the dataset again, now "restricted": a new descriptor.
    toml = owner.town_dir / "town.toml"
    toml.write_text(
        toml.read_text(encoding="utf-8").replace(
            'classification = "internal"', 'classification = "restricted"'
        ),
        encoding="utf-8",
    )
    list(import_configured(load_town_config(toml, env={}).node))
    owner.service.query(PARTNER, request(page_size=5))
    assert owner.authorized == [CONSUMER, CONSUMER]
    assert owner.entries()[-1]["input"]["resource"]["classification"] == "restricted"


def test_a_revoked_member_is_refused_on_a_planned_request(owner: Owner) -> None:
    owner.service.query(PARTNER, request(page_size=5))
    owner.service.revocations.update({CONSUMER: "key compromised"})
    with pytest.raises(MemberRevoked):
        owner.service.query(PARTNER, request(page_size=5))


def test_a_planned_request_still_counts_against_the_quota(owner: Owner, tmp_path: Path) -> None:
    limited = tmp_path / "limited"
    limited.mkdir()
    text = AGREEMENT + "requests_per_minute: 2\n"
    (limited / "bench.yaml").write_text(text, encoding="utf-8")
    owner.enforcer.policy = engine(limited)
    owner.service.query(PARTNER, request(page_size=5))
    owner.service.query(PARTNER, request(page_size=5))
    with pytest.raises(QuotaExceeded):
        owner.service.query(PARTNER, request(page_size=5))
    assert owner.authorized == [CONSUMER]
    assert [e["allow"] for e in owner.entries()] == [True, True, False]


def test_another_caller_with_the_same_request_gets_its_own_decision(owner: Owner) -> None:
    owner.service.query(PARTNER, request(page_size=5))
    with pytest.raises(PolicyDenied):
        owner.service.query(STRANGER, request(page_size=5))
    assert owner.authorized == [CONSUMER, "zweibruecken"]
