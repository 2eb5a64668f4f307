"""Decisions of the bundled policy with the example agreements, through PolicyEngine.

Every well-formed input used here is checked against policies/allmende/input.schema.json
(with the structural checker of test_policy_schemas: jsonschema is not installed).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import regorus
from test_policy_schemas import AGREEMENT_SCHEMA, INPUT_SCHEMA, schema_errors

from allmende.errors import PolicyError
from allmende.policy import (
    BUNDLED_POLICY_DIR,
    Decision,
    PolicyEngine,
    bundled_example_agreements_dir,
    read_policy_sources,
)

REQUEST: dict[str, Any] = {
    "subject": {"member": "pirmasens", "cluster": "suedwest", "service": "traffic-dashboard"},
    "action": "query",
    "resource": {
        "owner": "kaiserslautern",
        "cluster": "suedwest",
        "dataset": "parking-permits",
        "classification": "internal",
        "fields": ["lot", "free", "plate", "holder", "district", "geom"],
    },
    "request": {"purpose": "traffic-planning", "fields": ["lot", "free"], "limit": 500},
    "now": "2026-11-22T10:00:00+00:00",
}


def request(**changes: Any) -> dict[str, Any]:
    """REQUEST with parts replaced: request(subject={"member": "x"}) merges into subject."""
    result = copy.deepcopy(REQUEST)
    for key, value in changes.items():
        if isinstance(value, dict):
            result[key].update(value)
        else:
            result[key] = value
    return result


def check_input(value: dict[str, Any]) -> dict[str, Any]:
    assert schema_errors(value, INPUT_SCHEMA, INPUT_SCHEMA) == []
    return value


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine.from_paths(BUNDLED_POLICY_DIR, bundled_example_agreements_dir())


def decide(engine: PolicyEngine, value: dict[str, Any]) -> Decision:
    return engine.decide(check_input(value))


# --- decisions -------------------------------------------------------------------------------


def test_internal_under_agreement_masked_and_limited(engine: PolicyEngine) -> None:
    d = decide(engine, REQUEST)
    assert d.allow is True
    assert d.reasons == (
        "agreement ka-ps-permits-2026 grants pirmasens access for traffic-planning",
    )
    assert dict(d.mask) == {"holder": "redact", "plate": "redact"}
    assert dict(d.row_filter) == {}
    assert d.max_rows == 500
    assert d.policy_version == engine.policy_version


def test_row_filter_from_agreement(engine: PolicyEngine) -> None:
    d = decide(engine, request(subject={"member": "sankt-wendel"}, request={"purpose": "research"}))
    assert d.allow is True
    assert d.reasons == ("agreement ka-wnd-permits-2026 grants sankt-wendel access for research",)
    assert dict(d.mask) == {"plate": "redact"}
    assert d.to_dict()["row_filter"] == {"district": {"in": ["Innenstadt"]}}
    assert d.max_rows == 10_000


def test_open_dataset_any_member(engine: PolicyEngine) -> None:
    d = decide(engine, request(subject={"member": "homburg"}, resource={"classification": "open"}))
    assert d.allow is True
    assert d.reasons == ("open dataset: any member of cluster suedwest may read it",)
    assert dict(d.mask) == {}
    assert d.max_rows == 10_000


def test_owner_reads_its_own_dataset(engine: PolicyEngine) -> None:
    d = decide(engine, request(subject={"member": "kaiserslautern"}))
    assert d.allow is True
    assert d.reasons == ("owner reads its own dataset",)
    assert dict(d.mask) == {}


def test_non_member_denied(engine: PolicyEngine) -> None:
    d = decide(engine, request(subject={"member": "luzern", "cluster": "zentralschweiz"}))
    assert d.to_dict() == {
        "allow": False,
        "reasons": ["luzern is not a member of cluster suedwest"],
        "mask": {},
        "row_filter": {},
        "max_rows": 0,
        "policy_version": engine.policy_version,
        "way_in": "",
        "agreements": [],
        "min_group_size": 0,
        "requests_per_minute": 0,
    }


def test_internal_without_agreement_denied(engine: PolicyEngine) -> None:
    d = decide(engine, request(subject={"member": "zweibruecken"}))
    assert d.allow is False
    assert d.reasons == (
        "no agreement covers zweibruecken for dataset kaiserslautern/parking-permits",
    )


def test_wrong_purpose_denied(engine: PolicyEngine) -> None:
    d = decide(engine, request(request={"purpose": "marketing"}))
    assert d.allow is False
    assert d.reasons == (
        "purpose marketing is not among the purposes of agreement ka-permit-statistics-2026: "
        "[statistics]",
        "purpose marketing is not among the purposes of agreement ka-ps-permits-2026: "
        "[traffic-planning]",
    )


def test_expired_agreement_denied(engine: PolicyEngine) -> None:
    d = decide(engine, request(now="2028-01-15T08:00:00+00:00"))
    assert d.allow is False
    # pirmasens' statistics agreement (aggregate-only, another purpose) is explained too.
    assert d.reasons == (
        "agreement ka-permit-statistics-2026 expired at 2028-01-01T00:00:00+00:00",
        "agreement ka-ps-permits-2026 expired at 2028-01-01T00:00:00+00:00",
        "purpose traffic-planning is not among the purposes of agreement "
        "ka-permit-statistics-2026: [statistics]",
    )
    assert d.max_rows == 0
    assert dict(d.mask) == {}


def test_not_yet_valid_agreement_denied(engine: PolicyEngine) -> None:
    d = decide(engine, request(now="2025-12-31T22:00:00+00:00"))
    assert (
        "agreement ka-ps-permits-2026 is not yet valid: it starts at 2026-01-01T00:00:00+00:00"
        in d.reasons
    )
    assert d.allow is False


def test_unknown_classification_denied(engine: PolicyEngine) -> None:
    value = request(resource={"classification": "secret"})
    assert schema_errors(value, INPUT_SCHEMA, INPUT_SCHEMA)  # the gateway never sends it
    d = engine.decide(value)
    assert d.allow is False
    assert d.reasons == (
        "dataset kaiserslautern/parking-permits has unknown classification secret "
        "(known: internal, open, restricted)",
    )


def test_several_agreements_combine(tmp_path: Path) -> None:
    extra = tmp_path / "ka-ps-extra.yaml"
    extra.write_text(
        "agreement: ka-ps-extra\nprovider: kaiserslautern\ndatasets: [parking-permits]\n"
        "consumers: [pirmasens]\npurposes: [traffic-planning]\n"
        "mask: {geom: redact, plate: redact, lot: redact}\n"
        "row_filter: {district: {eq: Innenstadt}}\nvalid_from: 2026-01-01\nmax_rows: 200\n"
    )
    shutil.copy(bundled_example_agreements_dir() / "ka-ps-permits-2026.yaml", tmp_path)
    engine = PolicyEngine.from_paths(BUNDLED_POLICY_DIR, tmp_path, {"default_max_rows": 1000})
    d = decide(engine, REQUEST)
    assert d.allow is True
    assert len(d.reasons) == 2
    assert dict(d.mask) == {
        "holder": "redact",
        "plate": "redact",
        "geom": "redact",
        "lot": "redact",
    }
    assert dict(d.row_filter) == {}  # ka-ps-permits-2026 masks fewer fields and has none
    assert d.max_rows == 200


def test_default_max_rows_setting(engine: PolicyEngine) -> None:
    small = PolicyEngine.from_paths(
        BUNDLED_POLICY_DIR, bundled_example_agreements_dir(), {"default_max_rows": 100}
    )
    assert decide(small, REQUEST).max_rows == 100
    assert small.policy_version != engine.policy_version


# --- the engine itself -----------------------------------------------------------------------


def test_policy_version_changes_with_an_agreement(tmp_path: Path) -> None:
    agreements = tmp_path / "agreements"
    shutil.copytree(bundled_example_agreements_dir(), agreements)
    before = PolicyEngine.from_paths(BUNDLED_POLICY_DIR, agreements).policy_version
    again = PolicyEngine.from_paths(BUNDLED_POLICY_DIR, agreements).policy_version
    path = agreements / "ka-ps-permits-2026.yaml"
    path.write_text(path.read_text().replace("max_rows: 500", "max_rows: 400"))
    after = PolicyEngine.from_paths(BUNDLED_POLICY_DIR, agreements).policy_version
    assert before == again
    assert after != before
    assert re.fullmatch(r"sha256:[0-9a-f]{12}", after)


def test_policy_version_changes_with_the_rego(tmp_path: Path) -> None:
    shutil.copytree(BUNDLED_POLICY_DIR / "allmende", tmp_path / "allmende")
    before = PolicyEngine.from_paths(tmp_path).policy_version
    with (tmp_path / "allmende" / "baseline.rego").open("a") as f:
        f.write("\n# a comment changes the version too\n")
    assert PolicyEngine.from_paths(tmp_path).policy_version != before


def test_test_files_are_not_loaded(engine: PolicyEngine) -> None:
    assert engine.policy_names == (
        "allmende/agreements.rego",
        "allmende/baseline.rego",
        "allmende/decision.rego",
    )
    assert engine.agreement_ids == (
        "ka-permit-statistics-2026",
        "ka-ps-permits-2026",
        "ka-wnd-permits-2026",
    )


def test_undefined_decision_denies() -> None:
    policy = "package allmende.decision\n\nimport rego.v1\n\ndecision := {} if input.never\n"
    engine = PolicyEngine({"p.rego": policy})
    d = engine.decide(REQUEST)
    assert d.allow is False
    assert d.reasons == ("policy produced no decision",)


def test_regorus_failure_is_policy_error(engine: PolicyEngine) -> None:
    with pytest.raises(PolicyError, match="policy evaluation failed") as caught:
        engine.decide(request(now="yesterday"))
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert "Stack backtrace" not in str(caught.value)
    assert engine.decide(REQUEST).allow  # the engine is still usable


def test_malformed_decision_is_policy_error() -> None:
    policy = 'package allmende.decision\n\nimport rego.v1\n\ndecision := {"allow": "yes"}\n'
    with pytest.raises(PolicyError, match="malformed"):
        PolicyEngine({"p.rego": policy})


def test_input_must_be_json(engine: PolicyEngine) -> None:
    with pytest.raises(PolicyError, match="not plain JSON"):
        engine.decide({"now": object()})


def test_compile_error_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.rego").write_text("package allmende.decision\n\ndecision := {\n")
    with pytest.raises(PolicyError, match=r"broken\.rego"):
        PolicyEngine.from_paths(tmp_path)


def test_policies_without_decision_package(tmp_path: Path) -> None:
    (tmp_path / "other.rego").write_text("package other\n\nx := 1\n")
    with pytest.raises(PolicyError, match=r"no package allmende\.decision"):
        PolicyEngine.from_paths(tmp_path)


def test_missing_or_empty_policy_dir(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="does not exist"):
        PolicyEngine.from_paths(tmp_path / "nowhere")
    with pytest.raises(PolicyError, match=r"holds no \.rego files"):
        PolicyEngine.from_paths(tmp_path)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"default_max_rows": 0}, "positive whole number"),
        ({"default_max_rows": True}, "positive whole number"),
        ({"max_rows": 10}, "unknown policy setting 'max_rows'"),
    ],
)
def test_bad_settings(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        PolicyEngine.from_paths(BUNDLED_POLICY_DIR, None, settings)


def test_decision_is_read_only(engine: PolicyEngine) -> None:
    d = decide(engine, REQUEST)
    with pytest.raises(TypeError):
        d.mask["lot"] = "redact"  # type: ignore[index]
    with pytest.raises(AttributeError):
        d.allow = False  # type: ignore[misc]
    assert json.loads(json.dumps(d.to_dict())) == d.to_dict()


def test_sources_and_engine_agree_on_what_is_a_test() -> None:
    with_tests = read_policy_sources(BUNDLED_POLICY_DIR, include_tests=True)
    without = read_policy_sources(BUNDLED_POLICY_DIR, include_tests=False)
    assert set(with_tests) - set(without) == {
        "allmende/agreements_test.rego",
        "allmende/baseline_test.rego",
        "allmende/decision_test.rego",
        "allmende/fixtures_test.rego",
    }


# --- schemas ---------------------------------------------------------------------------------


def test_input_schema_rejects_what_the_gateway_must_not_send() -> None:
    assert schema_errors(REQUEST, INPUT_SCHEMA, INPUT_SCHEMA) == []
    broken = request(action="delete", subject={"member": "Pirmasens"})
    del broken["now"]
    errors = schema_errors(broken, INPUT_SCHEMA, INPUT_SCHEMA)
    assert any(e.startswith("/action") for e in errors)
    assert any(e.startswith("/subject/member") for e in errors)
    assert "/now: required" in errors


def test_agreement_schema_rejects_unknown_keys_and_mask_kinds() -> None:
    document = {
        "agreement": "x",
        "provider": "kaiserslautern",
        "datasets": ["a"],
        "consumers": ["b"],
        "purposes": ["c"],
        "valid_from": "2026-01-01",
        "consumer": ["b"],
        "mask": {"plate": "shuffle"},
    }
    errors = schema_errors(document, AGREEMENT_SCHEMA, AGREEMENT_SCHEMA)
    assert "/consumer: not allowed" in errors
    assert any(e.startswith("/mask/plate") for e in errors)


# --- latency: printed, not asserted (a timed test fails on a busy machine) --------------------


def test_decision_latency(engine: PolicyEngine) -> None:
    cases = {
        "agreement (allow, masked)": REQUEST,
        "open dataset (allow)": request(resource={"classification": "open"}),
        "wrong purpose (deny)": request(request={"purpose": "marketing"}),
    }
    lock = threading.Lock()
    started = time.perf_counter_ns()
    for _ in range(10_000):
        with lock:
            pass
    lock_ns = (time.perf_counter_ns() - started) / 10_000
    print()
    for label, value in cases.items():
        # Requests that differ in their limit: the VM decides each (none from the cache).
        values = [copy.deepcopy(value) for _ in range(2200)]
        for i, v in enumerate(values):
            v["request"]["limit"] = i + 1
        for v in values[:200]:
            engine.decide(v)
        samples = []
        for v in values[200:]:
            started = time.perf_counter_ns()
            engine.decide(v)
            samples.append(time.perf_counter_ns() - started)
        samples.sort()
        p50, p90 = statistics.median(samples) / 1000, samples[int(len(samples) * 0.9)] / 1000
        print(f"decision latency, {label}: p50 {p50:.1f} µs, p90 {p90:.1f} µs")
    print(f"lock acquire+release (uncontended): {lock_ns:.0f} ns per decision")


# --- the decision document's newer fields -------------------------------------------------


def test_aggregate_under_the_example_statistics_agreement(engine: PolicyEngine) -> None:
    value = request(action="aggregate", request={"purpose": "statistics"})
    d = decide(engine, value)
    assert d.allow is True
    assert d.way_in == "agreement"
    assert d.agreements == ("ka-permit-statistics-2026",)
    assert d.min_group_size == 5
    assert d.requests_per_minute == 30
    assert dict(d.mask) == {"holder": "redact", "plate": "hash:ka-permit-statistics-2026"}
    assert d.to_dict()["row_filter"] == {"kind": {"ne": "care"}}
    # sankt-wendel is in the group suedwest-partners too.
    other = decide(
        engine,
        request(
            action="aggregate",
            subject={"member": "sankt-wendel"},
            request={"purpose": "statistics"},
        ),
    )
    assert other.agreements == ("ka-permit-statistics-2026",)


def test_way_in_of_owner_and_open(engine: PolicyEngine) -> None:
    assert decide(engine, request(subject={"member": "kaiserslautern"})).way_in == "owner"
    opened = decide(engine, request(resource={"classification": "open"}))
    assert (opened.way_in, opened.agreements, opened.min_group_size) == ("open", (), 0)


def test_version_label_comes_before_the_digest() -> None:
    sources = read_policy_sources(BUNDLED_POLICY_DIR, include_tests=False)
    plain = PolicyEngine(sources)
    labelled = PolicyEngine(sources, version_label="cluster-v3+kaiserslautern-v5")
    assert labelled.policy_version == "cluster-v3+kaiserslautern-v5:" + plain.policy_version
    assert labelled.decide(REQUEST).policy_version == labelled.policy_version
    assert labelled.decide_interpreted(REQUEST).policy_version == labelled.policy_version
    for bad in ("has space", "a:b", "x" * 101):
        with pytest.raises(PolicyError, match="version label"):
            PolicyEngine(sources, version_label=bad)


def test_probe_time_is_readable_by_both_engines() -> None:
    from allmende.policy.engine import _PROBE_INPUT

    assert _PROBE_INPUT["now"].endswith("+00:00")  # regopy cannot read "Z"


def test_agreements_must_come_from_the_loader() -> None:
    sources = read_policy_sources(BUNDLED_POLICY_DIR, include_tests=False)
    written = {
        "agreement": "ka-ps",
        "provider": "kaiserslautern",
        "datasets": ["parking-permits"],
        "consumers": ["pirmasens"],
        "purposes": ["traffic-planning"],
        "valid_from": "2026-01-01T00:00:00+00:00",
    }
    with pytest.raises(
        PolicyError, match=r"ka-ps \(missing members, valid_from_ns, valid_until_ns\)"
    ):
        PolicyEngine(sources, [written])


def test_written_out_sets_are_the_named_ones() -> None:
    """baseline.rego writes `actions` and `agreement_classifications` out where every
    request passes (a rule reference costs regorus' VM a call); the copies must stay the
    sets that the refusals name."""
    source = (BUNDLED_POLICY_DIR / "allmende" / "baseline.rego").read_text(encoding="utf-8")
    reference = regorus.Engine()
    reference.add_policy("baseline.rego", source)
    for name, pattern in [
        ("actions", r"input\.action in (\{[^}]*\})"),
        ("agreement_classifications", r"input\.resource\.classification in (\{[^}]*\})"),
    ]:
        copies = re.findall(pattern, source)
        assert copies, name
        named = set(reference.eval_rule(f"data.allmende.baseline.{name}"))
        assert all(set(json.loads(f"[{copy[1:-1]}]")) == named for copy in copies), name
