"""The compiled path (regorus VM) decides exactly like regorus' interpreter, the reference.

Inputs: every sample input of the Rego tests (data.allmende.fixtures_test) plus generated
combinations of member, cluster, classification, action, purpose, time and agreement sets,
generated deterministically (hypothesis is not installed). Each is decided by
``PolicyEngine.decide`` (compiled) and ``PolicyEngine.decide_interpreted``; a PolicyError
must happen on both sides. regopy (rego-cpp) is cross-checked where it can evaluate.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections import Counter
from typing import Any

import pytest
import regorus

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
        "valid_from": "2026-01-01T00:00:00Z",
    }
    base.update(changes)
    return base


# A pool of agreements that overlap in every way the policy distinguishes.
POOL = [
    *EXAMPLES,
    _agreement(
        "ka-ps-extra",
        mask={"geom": "redact", "plate": "redact", "lot": "redact"},
        row_filter={"district": {"eq": "Innenstadt"}},
        max_rows=200,
    ),
    _agreement("ka-ps-hash", mask={"plate": "hash"}, valid_until="2026-12-01T00:00:00+01:00"),
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
]

MEMBERS = ["pirmasens", "sankt-wendel", "kaiserslautern", "zweibruecken"]
CLUSTERS = ["suedwest", "zentralschweiz"]
CLASSIFICATIONS = ["internal", "open", "restricted", "secret"]
PURPOSES = ["traffic-planning", "research", "marketing"]
DATASETS = ["parking-permits", "parking-occupancy"]
ACTIONS = ["query", "subscribe", "delete"]
NOWS: list[Any] = [
    "2026-11-22T10:00:00Z",
    "2025-06-01T00:00:00Z",
    "2027-06-01T00:00:00Z",
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
    """The inputs the Rego tests share (fixtures_test.rego), evaluated by regorus."""
    engine = regorus.Engine()
    for name, source in read_policy_sources(POLICY_DIR, include_tests=True).items():
        engine.add_policy(name, source)
    samples: list[dict[str, Any]] = []
    for rule in ("samples", "request", "wnd_request"):
        value = engine.eval_rule(f"data.allmende.fixtures_test.{rule}")
        samples.extend(value if rule == "samples" else [value])
    return samples


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


# --- regopy (rego-cpp) as a second opinion, where it can evaluate --------------------------


def test_regopy_agrees_where_it_can_evaluate() -> None:
    """regopy decides requests that do not need the agreements package like regorus.

    Where it cannot: with agreements it denies requests regorus allows
    (time.parse_rfc3339_ns), and its Output cannot read strings holding quotes (the JSON
    it prints is not escaped), so those are counted, not compared.
    """
    regopy = pytest.importorskip("regopy")
    engine = PolicyEngine.from_paths(BUNDLED_POLICY_DIR, bundled_example_agreements_dir())
    interpreter = regopy.Interpreter()
    for name, source in engine._sources.items():
        interpreter.add_module(name, source)
    data = {
        "allmende": {
            "sharing": {"agreements": engine._agreements},
            "settings": {"default_max_rows": 10_000, "policy_version": engine.policy_version},
        }
    }
    interpreter.add_data_json(json.dumps(data))
    compared = unreadable = 0
    for value in rego_test_samples() + generated_inputs():
        reference = outcome(engine.decide_interpreted, value)
        if isinstance(reference, str) or any(
            "agreement" in r or "input.now" in r for r in reference.reasons
        ):
            continue  # the agreements package decides: regopy cannot
        interpreter.set_input(regopy.Input(value))
        try:
            output = interpreter.query("data.allmende.decision.decision")
            result = json.loads(str(output))["expressions"][0]
        except (ValueError, KeyError, IndexError, TypeError):
            unreadable += 1
            continue
        assert result == reference.to_dict(), json.dumps(value)
        compared += 1
    print(f"\nregopy: {compared} decisions compared, {unreadable} it could not report")
    assert compared > 0
