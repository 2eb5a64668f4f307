"""The compiled path (regorus VM) decides exactly like regorus' interpreter, the reference.

Inputs: every sample input of the Rego tests (data.allmende.fixtures_test) plus generated
combinations of member, cluster, classification, action, purpose, time and agreement sets,
generated deterministically (hypothesis is not installed). Each is decided by
``PolicyEngine.decide`` (compiled) and ``PolicyEngine.decide_interpreted``; a PolicyError
must happen on both sides. regopy (rego-cpp), a second Rego implementation, is compared
with regorus in test_policy_regopy.py.
"""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import json
from collections import Counter
from typing import Any

import pytest
import regorus

from allmende.audit.chain import canonical_json, seal, sealed_text
from allmende.errors import PolicyError
from allmende.policy import (
    BUNDLED_POLICY_DIR,
    Decision,
    PolicyEngine,
    bundled_example_agreements_dir,
    load_agreements,
    read_policy_sources,
)

POLICY_DIR = BUNDLED_POLICY_DIR / "allmende"
EXAMPLES = load_agreements(bundled_example_agreements_dir())


def _agreement(agreement: str, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "agreement": agreement,
        "provider": "kaiserslautern",
        "datasets": ["parking-permits"],
        "consumers": ["pirmasens"],
        "purposes": ["traffic-planning"],
        "mask": {},
        "row_filter": {},
        "valid_from": "2026-01-01T00:00:00+00:00",
    }
    base.update(changes)
    base.setdefault("members", base["consumers"])
    # What the loader adds: the window in nanoseconds (2262-01-01 for "does not expire").
    base["valid_from_ns"] = _ns(base["valid_from"])
    base["valid_until_ns"] = _ns(base.get("valid_until", "2262-01-01T00:00:00Z"))
    return base


def _ns(text: str) -> int:
    when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return (when - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1) * 1000


# A pool of agreements that overlap in every way the policy distinguishes.
POOL = [
    *EXAMPLES,
    _agreement(
        "ka-ps-extra",
        mask={"geom": "redact", "plate": "redact", "lot": "redact"},
        row_filter={"district": {"eq": "Innenstadt"}},
        max_rows=200,
    ),
    _agreement(
        "ka-ps-hash",
        mask={"plate": "hash:ka-ps-hash", "geom": "coarsen:3", "free": "bucket:10"},
        valid_until="2026-12-01T00:00:00+01:00",
        requests_per_minute=60,
    ),
    _agreement(
        "ka-ps-stats",
        consumers=["group:partners"],
        members=["pirmasens", "sankt-wendel"],
        mask={"plate": "hash:ka-ps-stats", "geom": "coarsen:3", "free": "bucket:20"},
        row_filter={"capacity": {"ge": 10}},
        min_group_size=5,
        requests_per_minute=30,
        valid_from="2026-01-01T00:00:00Z",  # regorus reads a Z too (regopy does not)
    ),
    _agreement(
        "ka-open-ended",
        consumers=["pirmasens", "sankt-wendel"],
        purposes=["research", "traffic-planning"],
        datasets=["parking-permits", "parking-occupancy"],
        valid_from="2026-06-01T00:00:00.5Z",
    ),
    _agreement("zw-ps", provider="zweibruecken", max_rows=50),
]
# Without the optional keys (mask, row_filter) at all.
BARE = {k: v for k, v in _agreement("ka-ps-bare").items() if k not in ("mask", "row_filter")}

AGREEMENT_SETS = [
    [],
    EXAMPLES,
    POOL,
    POOL[1:4],
    [POOL[0], POOL[2]],
    POOL[3:],
    [BARE],
    [BARE, POOL[3]],
    [POOL[2], BARE, POOL[0]],
    [POOL[4], POOL[5]],
]

MEMBERS = ["pirmasens", "sankt-wendel", "kaiserslautern", "zweibruecken"]
CLUSTERS = ["suedwest", "zentralschweiz"]
CLASSIFICATIONS = ["internal", "open", "restricted", "secret"]
PURPOSES = ["traffic-planning", "research", "marketing"]
DATASETS = ["parking-permits", "parking-occupancy"]
ACTIONS = ["query", "subscribe", "aggregate", "delete"]
NOWS: list[Any] = [
    "2026-11-22T10:00:00+00:00",
    "2025-06-01T00:00:00Z",
    "2028-06-01T00:00:00Z",
    "2026-06-01T00:00:00.25+02:00",
    "2026-12-01T00:00:00Z",
    None,  # left out of the input
]
# Times the compiled path hands to the interpreter; they must still decide the same.
ODD_NOWS: list[Any] = ["yesterday", "2026-02-30T00:00:00Z", "2026-11-22 10:00:00Z", 5, ""]


def _request(
    member: str,
    cluster: str,
    classification: str,
    purpose: str,
    dataset: str = "parking-permits",
    action: str = "query",
    now: Any = "2026-11-22T10:00:00Z",
) -> dict[str, Any]:
    value: dict[str, Any] = {
        "subject": {"member": member, "cluster": cluster, "service": "traffic-dashboard"},
        "action": action,
        "resource": {
            "owner": "kaiserslautern",
            "cluster": "suedwest",
            "dataset": dataset,
            "classification": classification,
            "fields": ["lot", "free", "plate", "holder", "district", "geom"],
        },
        "request": {"purpose": purpose, "fields": ["lot", "free"], "limit": 500},
    }
    if now is not None:
        value["now"] = now
    return value


def rego_test_samples() -> list[dict[str, Any]]:
    """Every input the Rego tests use (data.allmende.fixtures_test.inputs), by regorus."""
    engine = regorus.Engine()
    for name, source in read_policy_sources(POLICY_DIR, include_tests=True).items():
        engine.add_policy(name, source)
    inputs: dict[str, dict[str, Any]] = engine.eval_rule("data.allmende.fixtures_test.inputs")
    return list(inputs.values())


def generated_inputs() -> list[dict[str, Any]]:
    inputs = [
        _request(m, c, k, p, dataset=d, now=n)
        for m, c, k, p, d, n in itertools.product(
            MEMBERS, CLUSTERS, CLASSIFICATIONS, PURPOSES, DATASETS, NOWS
        )
    ]
    inputs += [
        _request(m, "suedwest", k, "traffic-planning", action=a, now=n)
        for m, k, a, n in itertools.product(MEMBERS, CLASSIFICATIONS, ACTIONS, ODD_NOWS)
    ]
    # Parts missing or of the wrong type: the names for messages must match too.
    base = _request("pirmasens", "suedwest", "internal", "traffic-planning")
    for part, key in [
        ("subject", "member"),
        ("subject", "cluster"),
        ("resource", "owner"),
        ("resource", "dataset"),
        ("resource", "classification"),
        ("request", "purpose"),
    ]:
        for value in (None, 7, ["x"]):
            changed = copy.deepcopy(base)
            if value is None:
                del changed[part][key]
            else:
                changed[part][key] = value
            inputs.append(changed)
    inputs += [{}, {"action": "query"}, {"now": "2026-11-22T10:00:00Z"}]
    return inputs


def outcome(decide: Any, value: dict[str, Any]) -> Decision | str:
    try:
        result: Decision = decide(value)
    except PolicyError as exc:
        return f"PolicyError: {str(exc).split(':', 1)[0]}"
    return result


@pytest.mark.parametrize("agreements", AGREEMENT_SETS, ids=lambda s: f"{len(s)}-agreements")
def test_compiled_and_interpreter_decide_the_same(agreements: list[dict[str, Any]]) -> None:
    engine = PolicyEngine(read_policy_sources(BUNDLED_POLICY_DIR, include_tests=False), agreements)
    assert engine.evaluator == "compiled"
    inputs = rego_test_samples() + generated_inputs()
    kinds: Counter[str] = Counter()
    for value in inputs:
        compiled = outcome(engine.decide, value)
        reference = outcome(engine.decide_interpreted, value)
        assert compiled == reference, json.dumps(value)
        if isinstance(reference, str):
            kinds["error"] += 1
        else:
            kinds["allow" if reference.allow else "deny"] += 1
    # The sets exercise allows, denials and (for the odd times) errors alike.
    assert kinds["allow"] > 0 and kinds["deny"] > 0
    assert kinds["error"] > 0 or not agreements


def test_the_compiled_path_answers_plain_requests_itself() -> None:
    engine = PolicyEngine.from_paths(BUNDLED_POLICY_DIR, bundled_example_agreements_dir())
    answered = [engine._execute(v) for v in generated_inputs() if v.get("now") in NOWS]
    assert all(a is not None for a in answered)


def test_odd_agreement_times_leave_the_compiled_path_out() -> None:
    odd = _agreement("odd", valid_from="2026-01-01")
    engine = PolicyEngine(read_policy_sources(BUNDLED_POLICY_DIR, include_tests=False), [odd])
    assert engine.evaluator == "interpreter"


def test_interpreter_only_engine() -> None:
    engine = PolicyEngine.from_paths(BUNDLED_POLICY_DIR, None)
    reference = PolicyEngine(
        read_policy_sources(BUNDLED_POLICY_DIR, include_tests=False), evaluator="interpreter"
    )
    assert reference.evaluator == "interpreter"
    value = _request("pirmasens", "suedwest", "open", "research")
    assert reference.decide(value) == engine.decide(value)
    with pytest.raises(PolicyError, match="unknown policy evaluator"):
        PolicyEngine(
            read_policy_sources(BUNDLED_POLICY_DIR, include_tests=False),
            evaluator="fast",  # type: ignore[arg-type]
        )


OWN_RULE = """package allmende.agreements

import rego.v1

grants contains "kaiserslautern logs every query of its permits" if {
	input.resource.dataset == "parking-permits"
}
"""


def _general_rules_only(sources: dict[str, str]) -> dict[str, str]:
    """The policies without decision.rego's first branch (the usual request written out)."""
    source = sources["decision.rego"]
    start = source.index("\ndecision := {")
    end = source.index("} else := {", start)
    assert "[a] := data.allmende.agreements.matching" in source[start:end]
    return {**sources, "decision.rego": source[:start] + "\ndecision := {" + source[end + 11 :]}


@pytest.mark.parametrize("agreements", AGREEMENT_SETS, ids=lambda s: f"{len(s)}-agreements")
def test_the_usual_request_written_out_decides_as_the_general_rules(
    agreements: list[dict[str, Any]],
) -> None:
    # With a module of the owner's own that adds a grant message, which both must give.
    sources = {**read_policy_sources(POLICY_DIR, include_tests=False), "owner.rego": OWN_RULE}
    written_out = PolicyEngine(sources, agreements)
    general = PolicyEngine(_general_rules_only(sources), agreements)
    assert written_out.policy_version != general.policy_version  # two policies, not one
    taken = 0
    for value in rego_test_samples() + generated_inputs():
        ours, theirs = outcome(written_out.decide, value), outcome(general.decide, value)
        if isinstance(ours, Decision) and isinstance(theirs, Decision):
            ours_doc, their_doc = ours.to_dict(), theirs.to_dict()
            ours_doc.pop("policy_version"), their_doc.pop("policy_version")
            assert ours_doc == their_doc, json.dumps(value)
            taken += ours.allow and len(ours.agreements) == 1 and ours.way_in == "agreement"
        else:
            assert ours == theirs, json.dumps(value)
    if agreements is EXAMPLES or agreements is POOL:
        assert taken > 0  # the written-out branch decided some of them
        noted = written_out.decide(
            _request("pirmasens", "suedwest", "internal", "traffic-planning")
        )
        assert "kaiserslautern logs every query of its permits" in noted.reasons


def test_the_gateway_s_sealed_text_is_decided_like_the_input() -> None:
    """The Enforcer hands the engine each input's sealed text (the audit log's canonical
    JSON) instead of letting it encode the input again: the same decisions."""
    engine = PolicyEngine.from_paths(BUNDLED_POLICY_DIR, bundled_example_agreements_dir())
    handed = 0
    for value in rego_test_samples() + generated_inputs():
        document = seal(copy.deepcopy(value))
        text = sealed_text(document)
        if text is None:
            continue  # not plain values (a float, say): the gateway lets the engine encode
        handed += 1
        ours = outcome(lambda v, t=text: engine.decide(v, input_json=t), document)
        assert ours == outcome(engine.decide_interpreted, value), text
    assert handed > 100


def test_only_documents_of_plain_values_give_their_text() -> None:
    plain = {"request": {"limit": 10, "fields": ["a"]}, "now": "2026-12-02T01:00:00+00:00"}
    assert sealed_text(seal(plain)) == canonical_json(plain)
    assert sealed_text({"not": "sealed"}) is None
    assert sealed_text(seal({"limit": 1.5})) is None  # a float: json's spelling, not orjson's
    assert sealed_text(seal({"kind": _Name("query")})) is None  # a str subclass


class _Name(str):
    pass
