"""The JSON Schemas of policies/ describe what the loader and the gateway accept.

jsonschema is not installed, so ``schema_errors`` below reads the subset of JSON Schema
that the two schemas use; test_policy_engine imports it to check its inputs.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest
import yaml

from allmende.policy import (
    AGREEMENT_KEYS,
    BUNDLED_POLICY_DIR,
    AgreementError,
    bundled_example_agreements_dir,
    load_agreements,
    parse_agreement,
)

INPUT_SCHEMA = json.loads((BUNDLED_POLICY_DIR / "allmende" / "input.schema.json").read_text())
AGREEMENT_SCHEMA = json.loads((BUNDLED_POLICY_DIR / "agreements.schema.json").read_text())


def _is_type(value: Any, name: str) -> bool:
    if name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    names = {"object": dict, "array": list, "string": str, "boolean": bool}
    return isinstance(value, names[name])


def schema_errors(
    value: Any, schema: dict[str, Any], root: dict[str, Any], at: str = ""
) -> list[str]:
    """What is wrong with ``value`` under ``schema`` (a part of ``root``); [] when it fits."""
    where = at or "/"
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return schema_errors(value, target, root, at)
    errors: list[str] = []
    if "oneOf" in schema:
        fits = [s for s in schema["oneOf"] if not schema_errors(value, s, root, at)]
        if len(fits) != 1:
            errors.append(f"{where}: matches {len(fits)} of oneOf")
    types = schema.get("type")
    names = [types] if isinstance(types, str) else types or []
    if names and not any(_is_type(value, t) for t in names):
        return [f"{where}: {value!r} is not of type {types}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} not in {schema['enum']}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{where}: too short")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if _is_type(value, "number"):
        if value < schema.get("minimum", -math.inf) or value > schema.get("maximum", math.inf):
            errors.append(f"{where}: {value} out of range")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            errors.append(f"{where}: {value} <= {schema['exclusiveMinimum']}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{where}: fewer than {schema['minItems']} items")
        if schema.get("uniqueItems") and len({json.dumps(v) for v in value}) != len(value):
            errors.append(f"{where}: items are not unique")
        for i, item in enumerate(value):
            errors += schema_errors(item, schema.get("items", {}), root, f"{at}/{i}")
    if isinstance(value, dict):
        if not schema.get("minProperties", 0) <= len(value) <= schema.get("maxProperties", 1e9):
            errors.append(f"{where}: {len(value)} properties")
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


def as_editors_read_it(text: str) -> Any:
    """A YAML document as a schema-aware editor sees it: unquoted dates stay text."""

    class Loader(yaml.SafeLoader):
        pass

    # Drop the timestamp resolver: dates and times stay strings, numbers stay numbers.
    Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    return yaml.load(text, Loader=Loader)


def agreement_errors(text: str) -> list[str]:
    return schema_errors(as_editors_read_it(text), AGREEMENT_SCHEMA, AGREEMENT_SCHEMA)


# --- the agreement schema and the loader agree ------------------------------------------------


def test_schema_keys_are_the_loaders_keys() -> None:
    assert set(AGREEMENT_SCHEMA["properties"]) == set(AGREEMENT_KEYS)
    required = ("agreement", "provider", "datasets", "consumers", "purposes", "valid_from")
    assert set(AGREEMENT_SCHEMA["required"]) == set(required)


def test_every_example_fits_the_schema_and_loads() -> None:
    folder = bundled_example_agreements_dir()
    paths = sorted(p for p in folder.glob("*.yaml") if p.name != "groups.yaml")
    assert len(paths) >= 3
    for path in paths:
        assert agreement_errors(path.read_text()) == [], path
    loaded = load_agreements(folder)
    assert [a["agreement"] for a in loaded] == [
        "ka-permit-statistics-2026",
        "ka-ps-permits-2026",
        "ka-wnd-permits-2026",
    ]


# A document that uses every key and every kind of mask and condition.
FULL = """\
agreement: ka-all
provider: kaiserslautern
datasets: [parking-permits]
consumers: [pirmasens, group:partners]
purposes: [statistics]
mask: {holder: redact, plate: hash, geom: {coarsen: 2}, free: {bucket: 50}, rate: {bucket: 0.5}}
row_filter:
  a: {eq: x}
  b: {ne: 2}
  c: {lt: 10}
  d: {le: 2.5}
  e: {gt: "2026-01-01"}
  f: {ge: 0}
  g: {in: [x, 7, true]}
valid_from: 2026-01-01
valid_until: 2027-01-01T06:00:00+01:00
max_rows: 500
requests_per_minute: 60
aggregate_only: {min_group_size: 5}
"""


def test_a_document_using_every_key_fits_and_loads() -> None:
    assert agreement_errors(FULL) == []
    loaded = parse_agreement(FULL, "full.yaml", groups={"partners": ["sankt-wendel"]})
    assert set(as_editors_read_it(FULL)) == set(AGREEMENT_KEYS) - {"replicate"}
    assert loaded["members"] == ["pirmasens", "sankt-wendel"]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("holder: redact", "holder: shuffle"),
        ("{coarsen: 2}", "{coarsen: 11}"),
        ("{coarsen: 2}", "{coarsen: 1.5}"),
        ("{bucket: 50}", "{bucket: 0}"),
        ("{bucket: 50}", "{bucket: wide}"),
        ("{bucket: 50}", "{bucket: 5, coarsen: 1}"),
        ("a: {eq: x}", "a: {like: x}"),
        ("a: {eq: x}", "a: {eq: x, ne: y}"),
        ("a: {eq: x}", "a: {}"),
        ("g: {in: [x, 7, true]}", "g: {in: []}"),
        ("c: {lt: 10}", "c: {lt: true}"),
        ("requests_per_minute: 60", "requests_per_minute: 0"),
        ("{min_group_size: 5}", "{min_group_size: 1}"),
        ("{min_group_size: 5}", "{min_group_size: 5, k: 2}"),
        ("group:partners", "team:partners"),
        ("consumers: [", "consumer: ["),
    ],
)
def test_schema_and_loader_both_refuse(old: str, new: str) -> None:
    assert old in FULL
    text = FULL.replace(old, new, 1)
    assert agreement_errors(text), "the schema accepts it"
    with pytest.raises(AgreementError):
        parse_agreement(text, "x.yaml", groups={"partners": ["sankt-wendel"]})


# --- the input schema ---------------------------------------------------------------------------


def test_input_schema_accepts_aggregate_and_utc_offsets() -> None:
    value = {
        "subject": {"member": "pirmasens", "cluster": "suedwest"},
        "action": "aggregate",
        "resource": {
            "owner": "kaiserslautern",
            "cluster": "suedwest",
            "dataset": "parking-permits",
            "classification": "internal",
        },
        "request": {"purpose": "statistics"},
        "now": "2026-11-22T10:00:00+00:00",
    }
    assert schema_errors(value, INPUT_SCHEMA, INPUT_SCHEMA) == []
    value["action"] = "delete"
    assert schema_errors(value, INPUT_SCHEMA, INPUT_SCHEMA)


def test_groups_file_of_the_examples_is_what_the_fixtures_say() -> None:
    groups = yaml.safe_load((bundled_example_agreements_dir() / "groups.yaml").read_text())
    assert groups == {"groups": {"suedwest-partners": ["pirmasens", "sankt-wendel"]}}
