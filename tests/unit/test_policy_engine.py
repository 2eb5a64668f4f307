"""Decisions of the bundled policy with the example agreements, through PolicyEngine.

Every well-formed input used here is checked against policies/allmende/input.schema.json
(jsonschema is not installed, so a small structural checker below reads the schema).
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

from allmende.errors import PolicyError
from allmende.policy import (
    BUNDLED_POLICY_DIR,
    Decision,
    PolicyEngine,
    bundled_example_agreements_dir,
    load_agreements,
    read_policy_sources,
)

INPUT_SCHEMA = json.loads((BUNDLED_POLICY_DIR / "allmende" / "input.schema.json").read_text())
AGREEMENT_SCHEMA = json.loads((BUNDLED_POLICY_DIR / "agreements.schema.json").read_text())

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
    "now": "2026-11-22T10:00:00Z",
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


# --- a structural JSON Schema checker, enough for the two schemas of policies/ ---------------


def schema_errors(
    value: Any, schema: dict[str, Any], root: dict[str, Any], at: str = ""
) -> list[str]:
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return schema_errors(value, target, root, at)
    errors: list[str] = []
    if "oneOf" in schema:
        fits = [s for s in schema["oneOf"] if not schema_errors(value, s, root, at)]
        if len(fits) != 1:
            errors.append(f"{at or '/'}: matches {len(fits)} of oneOf")
    types = schema.get("type")
    if types is not None:
        names = {"object": dict, "array": list, "string": str, "boolean": bool}
        ok = any(
            (isinstance(value, int | float) and not isinstance(value, bool))
            if t == "number"
            else (isinstance(value, int) and not isinstance(value, bool))
            if t == "integer"
            else isinstance(value, names[t])
            for t in ([types] if isinstance(types, str) else types)
        )
        if not ok:
            return [f"{at or '/'}: {value!r} is not of type {types}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{at or '/'}: {value!r} not in {schema['enum']}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{at}: too short")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{at}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, int | float) and "minimum" in schema and value < schema["minimum"]:
        errors.append(f"{at}: {value} < {schema['minimum']}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{at}: fewer than {schema['minItems']} items")
        if schema.get("uniqueItems") and len({json.dumps(v) for v in value}) != len(value):
            errors.append(f"{at}: items are not unique")
        for i, item in enumerate(value):
            errors += schema_errors(item, schema.get("items", {}), root, f"{at}/{i}")
    if isinstance(value, dict):
        errors += [f"{at}/{k}: required" for k in schema.get("required", []) if k not in value]
        props = schema.get("properties", {})
        for key, item in value.items():
            if "propertyNames" in schema:
                errors += schema_errors(key, schema["propertyNames"], root, f"{at}/{key} (name)")
            if key in props:
                errors += schema_errors(item, props[key], root, f"{at}/{key}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{at}/{key}: not allowed")
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += schema_errors(item, schema["additionalProperties"], root, f"{at}/{key}")
    return errors


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
        "purpose marketing is not among the purposes of agreement ka-ps-permits-2026: "
        "[traffic-planning]",
    )


def test_expired_agreement_denied(engine: PolicyEngine) -> None:
    d = decide(engine, request(now="2027-01-15T08:00:00Z"))
    assert d.allow is False
    assert d.reasons == ("agreement ka-ps-permits-2026 expired at 2027-01-01T00:00:00Z",)
    assert d.max_rows == 0
    assert dict(d.mask) == {}


def test_not_yet_valid_agreement_denied(engine: PolicyEngine) -> None:
    d = decide(engine, request(now="2025-12-31T22:00:00Z"))
    assert d.reasons == (
        "agreement ka-ps-permits-2026 is not yet valid: it starts at 2026-01-01T00:00:00Z",
    )


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
    assert engine.agreement_ids == ("ka-ps-permits-2026", "ka-wnd-permits-2026")


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


def test_example_agreements_fit_their_schema() -> None:
    import yaml

    for path in sorted(bundled_example_agreements_dir().glob("*.yaml")):
        # Editors see unquoted dates as text; so does this check.
        document = yaml.load(path.read_text(), Loader=yaml.BaseLoader)
        if "max_rows" in document:
            document["max_rows"] = int(document["max_rows"])
        assert schema_errors(document, AGREEMENT_SCHEMA, AGREEMENT_SCHEMA) == [], path
    compiled = load_agreements(bundled_example_agreements_dir())
    assert [a["agreement"] for a in compiled] == ["ka-ps-permits-2026", "ka-wnd-permits-2026"]


def test_agreement_schema_rejects_unknown_keys_and_mask_kinds() -> None:
    document = {
        "agreement": "x",
        "provider": "kaiserslautern",
        "datasets": ["a"],
        "consumers": ["b"],
        "purposes": ["c"],
        "valid_from": "2026-01-01",
        "consumer": ["b"],
        "mask": {"plate": "hash"},
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
        for _ in range(200):
            engine.decide(value)
        samples = []
        for _ in range(2000):
            started = time.perf_counter_ns()
            engine.decide(value)
            samples.append(time.perf_counter_ns() - started)
        samples.sort()
        p50, p90 = statistics.median(samples) / 1000, samples[int(len(samples) * 0.9)] / 1000
        print(f"decision latency, {label}: p50 {p50:.1f} µs, p90 {p90:.1f} µs")
    print(f"lock acquire+release (uncontended): {lock_ns:.0f} ns per decision")
