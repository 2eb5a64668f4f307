"""`allmende policy diff`: replaying a real audit log under a proposed policy ("what-if")."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from test_policy_explain import AGREEMENTS, FIELDS, KL, SW, write_agreements

from allmende.audit import AuditLog
from allmende.policy import BUNDLED_POLICY_DIR, PolicyEngine
from allmende.policy.explain import DatasetFacts, Subject, policy_input
from allmende.policy.replay import format_diff, replay
from allmende.signing import MemberSigner
from allmende_cli.main import main

PERMITS = DatasetFacts(KL, "parking-permits", "internal", FIELDS)
SITES = DatasetFacts(KL, "parking-sites", "open", ("id", "name"))
AT = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
EARLY = dt.datetime(2020, 6, 1, tzinfo=dt.UTC)

# What was asked, in this order (seq 1, 2, …): member, dataset, purpose, action, time.
REQUESTS = [
    (KL, PERMITS, "anything", "query", AT),  # 1 owner
    ("pirmasens", SITES, "planning", "query", AT),  # 2 open
    ("pirmasens", PERMITS, "traffic-planning", "query", AT),  # 3 max_rows 20 → 50
    ("pirmasens", PERMITS, "marketing", "query", AT),  # 4 denied, stays denied
    ("sankt-wendel", PERMITS, "research", "subscribe", AT),  # 5 agreement withdrawn
    ("kusel", PERMITS, "research", "query", AT),  # 6 expired → renewed
    ("kusel", PERMITS, "research", "query", EARLY),  # 7 valid then, valid then
    ("zweibruecken", PERMITS, "statistics", "aggregate", AT),  # 8 k 5 → 10
    ("zweibruecken", PERMITS, "statistics", "query", AT),  # 9 refused rows, still refused
    ("luzern", PERMITS, "research", "query", AT),  # 10 not a member
    ("pirmasens", PERMITS, "traffic-planning", "query", AT),  # 11 = 3
]
EXPECTED = {
    3: ("max_rows",),
    5: ("allow", "mask", "row_filter", "max_rows"),
    6: ("allow", "max_rows"),
    8: ("min_group_size",),
    11: ("max_rows",),
}

PROPOSED = {
    **AGREEMENTS,
    "ka-ps.yaml": AGREEMENTS["ka-ps.yaml"].replace("max_rows: 20", "max_rows: 50"),
    "ka-zw.yaml": AGREEMENTS["ka-zw.yaml"].replace("min_group_size: 5", "min_group_size: 10"),
    "ka-kus-2.yaml": """
agreement: ka-kus-renewed
provider: kaiserslautern
datasets: [parking-permits]
consumers: [kusel]
purposes: [research]
valid_from: 2021-01-01
max_rows: 300
""",
}
del PROPOSED["ka-wnd.yaml"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("diff")
    current = write_agreements(root / "current")
    proposed = write_agreements(root / "proposed", PROPOSED)
    engine = PolicyEngine.from_paths(BUNDLED_POLICY_DIR, current, {"default_max_rows": 1000})
    log = AuditLog(root / "audit.log", MemberSigner(KL, ed25519.Ed25519PrivateKey.generate()))
    try:
        for member, facts, purpose, action, when in REQUESTS:
            cluster = "zentral" if member == "luzern" else SW
            document = policy_input(
                Subject(member, cluster, "svc"), action, facts, SW, purpose, [], 100, when
            )
            decision = engine.decide(document)
            log.append(
                {
                    "time": document["now"],
                    "subject": document["subject"],
                    "owner": KL,
                    "dataset": facts.dataset,
                    "action": action,
                    "purpose": purpose,
                    "allow": decision.allow,
                    "reasons": list(decision.reasons),
                    "policy_version": decision.policy_version,
                    "agreements": list(decision.agreements),
                    "way_in": decision.way_in,
                    "rows": 0,
                    "event": "decision",
                    "request_sha256": "0" * 64,
                    "input": document,
                }
            )
        # A subscription's end is not a decision; a decision without its input cannot be
        # replayed and is counted apart.
        log.append({"event": "stream-end", "rows": 3, "input": {}})
        log.append({"event": "decision", "allow": True})
        # The gateway refused what the policy allowed (a filter on a masked field): the
        # replay cannot re-check that, so it is counted apart too.
        document = policy_input(
            Subject("pirmasens", SW, "svc"), "query", PERMITS, SW, "traffic-planning", [], 5, AT
        )
        log.append(
            {
                "event": "decision",
                "allow": False,
                "reasons": [
                    "field 'holder' is masked for pirmasens and cannot be used in a filter"
                ],
                "policy_version": engine.policy_version,
                "input": document,
            }
        )
    finally:
        log.close()
    return root / "audit.log", current, proposed


def engines(current: Path, proposed: Path) -> tuple[PolicyEngine, PolicyEngine]:
    settings = {"default_max_rows": 1000}
    return (
        PolicyEngine.from_paths(BUNDLED_POLICY_DIR, current, settings),
        PolicyEngine.from_paths(BUNDLED_POLICY_DIR, proposed, settings),
    )


def test_replay_lists_exactly_the_decisions_that_change(setup: tuple[Path, Path, Path]) -> None:
    from allmende.audit import read_entries

    log, current, proposed = setup
    report = replay(read_entries(log), *engines(current, proposed))
    assert {c.seq: c.changed for c in report.changes} == EXPECTED
    assert report.unchanged == len(REQUESTS) - len(EXPECTED)
    assert report.skipped == 1 and report.gateway_refused == 1
    by_seq = {c.seq: c for c in report.changes}
    assert (by_seq[3].before["max_rows"], by_seq[3].after["max_rows"]) == (20, 50)
    withdrawn = by_seq[5]
    assert withdrawn.before["allow"] and not withdrawn.after["allow"]
    assert withdrawn.before["row_filter"] == {"district": {"in": ["Innenstadt"]}}
    assert withdrawn.after["reasons"] == [
        "no agreement covers sankt-wendel for dataset kaiserslautern/parking-permits"
    ]
    renewed = by_seq[6]
    assert renewed.after["max_rows"] == 300 and renewed.after["reasons"] == [
        "agreement ka-kus-renewed grants kusel access for research"
    ]
    assert (by_seq[8].before["min_group_size"], by_seq[8].after["min_group_size"]) == (5, 10)

    text = format_diff(report)
    assert (
        "#5 2026-06-01T12:00:00+00:00 sankt-wendel subscribe kaiserslautern/parking-permits" in text
    )
    assert "    allow: allowed → denied" in text
    assert "    row_filter: district in [Innenstadt] → all rows" in text
    assert "    max_rows: 20 → 50" in text
    assert text.splitlines()[-1].startswith(
        "5 decision(s) change, 6 unchanged, 1 without a recorded input (not replayed), "
        "1 refused by the gateway beyond the policy"
    )


def test_the_same_policy_changes_nothing(setup: tuple[Path, Path, Path]) -> None:
    from allmende.audit import read_entries

    log, current, _ = setup
    report = replay(read_entries(log), *engines(current, current))
    assert report.changes == () and report.unchanged == len(REQUESTS)


def test_cli_diff_exit_codes_and_json(
    setup: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    log, current, proposed = setup
    base = ["policy", "diff", "--log", str(log), "--current-agreements", str(current)]
    base += ["--default-max-rows", "1000"]
    assert main([*base, "--proposed-agreements", str(proposed), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert {c["seq"]: tuple(c["changed"]) for c in doc["changes"]} == EXPECTED
    assert doc["unchanged"] == 6 and doc["skipped"] == 1 and doc["gateway_refused"] == 1
    assert doc["current_policy_version"] != doc["proposed_policy_version"]

    assert main([*base, "--proposed-agreements", str(current)]) == 0
    assert capsys.readouterr().out.startswith("0 decision(s) change, 11 unchanged")

    assert main([*base, "--proposed-agreements", str(log.parent / "missing")]) == 2
    assert "missing: no such file or directory" in capsys.readouterr().err
    broken = log.parent / "broken.log"
    broken.write_text('{"seq": 1}\nnot json\n', encoding="utf-8")
    cmd = ["policy", "diff", "--log", str(broken), "--proposed-agreements", str(current)]
    assert main(cmd) == 2
    assert str(broken) in capsys.readouterr().err
    assert main(["policy", "diff", "--proposed-agreements", str(current)]) == 2
    assert "--log" in capsys.readouterr().err
