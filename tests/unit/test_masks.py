"""Every mask kind applied exactly, and everything the gateway cannot apply exactly redacted."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from typing import Any

import pytest

from allmende.errors import PolicyDenied
from allmende.identity import Identity
from allmende.policy import PolicyEngine
from allmende.v1 import catalog_pb2
from allmende_gateway.authentication import Caller
from allmende_gateway.enforcement import Enforcer
from allmende_gateway.masks import compile_mask, hash_salt, redact

KEY = b"k" * 32
GEOM = {"type": "Point", "coordinates": [7.765432, 49.443219]}


def salts(agreement: str) -> bytes:
    return hash_salt(KEY, agreement)


def apply(spec: str, ftype: str, value: Any) -> Any:
    return compile_mask(spec, ftype, salts)(value)


def expected_hash(agreement: str, value: Any) -> str:
    salt = hmac.new(KEY, b"allmende mask salt v1\0" + agreement.encode(), hashlib.sha256).digest()
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hmac.new(salt, text.encode(), hashlib.sha256).hexdigest()


def test_redact_replaces_every_value_with_null() -> None:
    for ftype, value in (("string", "KL-AB 3"), ("integer", 7), ("geometry", GEOM)):
        assert apply("redact", ftype, value) is None


def test_hash_is_the_contract_hmac_stable_and_per_agreement() -> None:
    assert apply("hash:ka-ps", "string", "KL-AB 3") == expected_hash("ka-ps", "KL-AB 3")
    assert apply("hash:ka-ps", "integer", 42) == expected_hash("ka-ps", 42)
    assert apply("hash:ka-ps", "string", "KL-AB 3") == apply("hash:ka-ps", "string", "KL-AB 3")
    assert apply("hash:ka-ps", "string", "x") != apply("hash:ka-wnd", "string", "x")
    # Without the owner's key (or with another one) nobody computes the same hash.
    other = compile_mask("hash:ka-ps", "string", lambda a: hash_salt(b"x" * 32, a))("KL-AB 3")
    assert other != expected_hash("ka-ps", "KL-AB 3")
    assert apply("hash:ka-ps", "string", None) is None


def test_hash_without_a_key_is_redact() -> None:
    assert compile_mask("hash:ka-ps", "string", lambda a: None) is redact


@pytest.mark.parametrize(
    ("spec", "ftype", "value", "masked"),
    [
        ("coarsen:2", "number", 7.765432, 7.77),
        ("coarsen:0", "number", 7.5, 8.0),
        ("coarsen:1", "integer", 17, 17),
        ("coarsen:2", "number", None, None),
        ("bucket:50", "integer", 123, 100),
        ("bucket:50", "integer", -1, -50),
        ("bucket:0.5", "number", 1.7, 1.5),
        ("bucket:10", "number", 25.5, 20.0),
        ("bucket:50", "integer", None, None),
    ],
)
def test_numbers_are_coarsened_and_bucketed(spec: str, ftype: str, value: Any, masked: Any) -> None:
    got = apply(spec, ftype, value)
    assert got == masked and type(got) is type(masked)


def test_geometries_are_coarsened_coordinate_by_coordinate() -> None:
    assert apply("coarsen:2", "geometry", GEOM) == {"type": "Point", "coordinates": [7.77, 49.44]}
    poly = {
        "type": "Polygon",
        "coordinates": [[[7.123, 49.456], [7.789, 49.012], [7.123, 49.456]]],
        "bbox": [7.123, 49.012, 7.789, 49.456],
    }
    assert apply("coarsen:1", "geometry", poly) == {
        "type": "Polygon",
        "coordinates": [[[7.1, 49.5], [7.8, 49.0], [7.1, 49.5]]],
    }
    both = {"type": "GeometryCollection", "geometries": [GEOM, GEOM]}
    assert apply("coarsen:0", "geometry", both)["geometries"][1]["coordinates"] == [8, 49]
    # Not a geometry after all: hidden, not passed on.
    assert apply("coarsen:2", "geometry", {"type": "Point", "coordinates": ["x", 1]}) is None
    assert apply("coarsen:2", "geometry", "POINT (7 49)") is None


@pytest.mark.parametrize(
    ("spec", "ftype", "value"),
    [
        ("scramble", "string", "KL-AB 3"),  # unknown kind
        ("hash:", "string", "KL-AB 3"),  # no agreement
        ("coarsen:x", "number", 7.5),
        ("coarsen:11", "number", 7.5),
        ("coarsen:-1", "number", 7.5),
        ("coarsen:2", "string", "Innenstadt"),  # wrong field type
        ("bucket:0", "integer", 7),
        ("bucket:-5", "integer", 7),
        ("bucket:wide", "integer", 7),
        ("bucket:inf", "number", 7.5),
        ("bucket:50", "string", "Innenstadt"),
        ("bucket:50", "geometry", GEOM),
        ("bucket:50", "timestamp", "2026-01-01T00:00:00Z"),
    ],
)
def test_what_cannot_be_applied_exactly_is_redacted(spec: str, ftype: str, value: Any) -> None:
    assert compile_mask(spec, ftype, salts) is redact
    assert apply(spec, ftype, value) is None


def test_a_value_of_the_wrong_type_is_redacted() -> None:
    assert apply("bucket:50", "integer", "many") is None
    assert apply("coarsen:1", "number", True) is None
    assert apply("bucket:50", "number", float("nan")) is None


# -- through the Enforcer, with a real policy -----------------------------------------------

DESC = catalog_pb2.DatasetDescriptor(
    owner="kaiserslautern",
    id="permits",
    classification=catalog_pb2.CLASSIFICATION_INTERNAL,
    fields=[
        catalog_pb2.Field(name="plate", type=catalog_pb2.FIELD_TYPE_STRING),
        catalog_pb2.Field(name="capacity", type=catalog_pb2.FIELD_TYPE_INTEGER),
        catalog_pb2.Field(name="geom", type=catalog_pb2.FIELD_TYPE_GEOMETRY),
        catalog_pb2.Field(name="district", type=catalog_pb2.FIELD_TYPE_STRING),
        catalog_pb2.Field(name="holder", type=catalog_pb2.FIELD_TYPE_STRING),
    ],
)
CALLER = Caller(Identity("suedwest", "pirmasens", "dash"), via_gateway=False)
MASK = {
    "plate": "hash:ka-ps",
    "capacity": "bucket:50",
    "geom": "coarsen:2",
    "district": "bucket:10",  # a string: redacted, and reported so
    "holder": "scramble",
}


def decision_policy(decision: dict[str, Any]) -> PolicyEngine:
    """A real Rego policy whose decision document is ``decision`` for every request."""
    source = (
        "package allmende.decision\n\nimport rego.v1\n\n"
        f'decision := {json.dumps(decision)} if input.request.purpose != "probe"\n'
    )
    return PolicyEngine({"decision.rego": source})


def allow(**extra: Any) -> dict[str, Any]:
    return {
        "allow": True,
        "reasons": ["agreement ka-ps grants it"],
        "policy_version": "test-v1",
        "mask": {},
        "row_filter": {},
        "max_rows": 100,
        "way_in": "agreement",
        "agreements": ["ka-ps"],
        **extra,
    }


def test_grant_shapes_rows_with_every_mask_and_reports_what_it_applied() -> None:
    enforcer = Enforcer(
        decision_policy(allow(mask=MASK)), owner="kaiserslautern", cluster="suedwest", mask_key=KEY
    )
    _, decision = enforcer.decide(CALLER, "query", DESC, "planning", [], 10)
    grant = enforcer.grant(CALLER, "query", DESC, decision, [])
    stored = {
        "plate": "KL-AB 3",
        "capacity": 123,
        "geom": GEOM,
        "district": "Innenstadt",
        "holder": "Holder 3",
    }
    row = json.loads(grant.shape(json.dumps(stored)))
    assert row == {
        "plate": expected_hash("ka-ps", "KL-AB 3"),
        "capacity": 100,
        "geom": {"type": "Point", "coordinates": [7.77, 49.44]},
        "district": None,
        "holder": None,
    }
    assert dict(grant.summary.masked_fields) == {
        "plate": "hash:ka-ps",
        "capacity": "bucket:50",
        "geom": "coarsen:2",
        "district": "redact",
        "holder": "redact",
    }
    assert list(grant.summary.agreements) == ["ka-ps"] and grant.summary.way_in == "agreement"
    # Projection keeps the masks of the fields asked for only.
    narrow = enforcer.grant(CALLER, "query", DESC, decision, ["capacity"])
    assert json.loads(narrow.shape(json.dumps(stored))) == {"capacity": 100}
    assert dict(narrow.summary.masked_fields) == {"capacity": "bucket:50"}


def test_without_a_mask_key_hash_is_redact_and_reported_so() -> None:
    enforcer = Enforcer(
        decision_policy(allow(mask={"plate": "hash:ka-ps"})),
        owner="kaiserslautern",
        cluster="suedwest",
    )
    _, decision = enforcer.decide(CALLER, "query", DESC, "planning", [], 10)
    grant = enforcer.grant(CALLER, "query", DESC, decision, ["plate"])
    assert grant.shape('{"plate": "KL-AB 3"}') == '{"plate":null}'
    assert dict(grant.summary.masked_fields) == {"plate": "redact"}


def test_unmasked_rows_are_passed_through_untouched() -> None:
    enforcer = Enforcer(decision_policy(allow()), owner="kaiserslautern", cluster="suedwest")
    _, decision = enforcer.decide(CALLER, "query", DESC, "planning", [], 10)
    grant = enforcer.grant(CALLER, "query", DESC, decision, [])
    stored = '{"capacity": 1,   "plate": "x"}'
    assert not grant.reshapes and grant.shape(stored) is stored


@pytest.mark.parametrize("use", ["filter", "group_by", "measure"])
def test_masked_fields_cannot_be_filtered_grouped_or_measured(use: str) -> None:
    enforcer = Enforcer(
        decision_policy(allow(mask={"capacity": "bucket:50"})),
        owner="kaiserslautern",
        cluster="suedwest",
    )
    _, decision = enforcer.decide(CALLER, "aggregate", DESC, "planning", [], 0)
    with pytest.raises(PolicyDenied, match=rf"'capacity' is masked .* in a {use}") as err:
        enforcer.grant(CALLER, "aggregate", DESC, decision, [], {"capacity": use})
    assert err.value.policy_version == "test-v1"


def test_now_is_written_with_an_explicit_utc_offset() -> None:
    enforcer = Enforcer(decision_policy(allow()), owner="kaiserslautern", cluster="suedwest")
    doc = enforcer.policy_input(CALLER, "query", DESC, "planning", [], 10)
    assert doc["now"].endswith("+00:00") and len(doc["now"]) == 25


def test_a_swapped_policy_decides_the_next_request_even_within_the_second() -> None:
    """The Enforcer keeps the decision on each input document (the same request within the
    same second); a policy bundle swapped in must decide the very next request."""
    fixed = dt.datetime(2026, 12, 2, 1, 0, 0, tzinfo=dt.UTC)
    enforcer = Enforcer(
        decision_policy(allow(mask={"plate": "redact"})),
        owner="kaiserslautern",
        cluster="suedwest",
        clock=lambda: fixed,
    )
    first_input, first = enforcer.decide(CALLER, "query", DESC, "planning", [], 10)
    again_input, again = enforcer.decide(CALLER, "query", DESC, "planning", [], 10)
    assert again_input is first_input and again is first  # one document, one decision
    enforcer.policy = decision_policy(allow(mask={"plate": "hash:ka-ps"}))
    swapped_input, swapped = enforcer.decide(CALLER, "query", DESC, "planning", [], 10)
    assert swapped_input is first_input  # still the same request, the same second
    assert dict(swapped.mask) == {"plate": "hash:ka-ps"}
    enforcer.policy = decision_policy(
        {**allow(), "allow": False, "reasons": ["the steward withdrew it"]}
    )
    _, denied = enforcer.decide(CALLER, "query", DESC, "planning", [], 10)
    assert not denied.allow and list(denied.reasons) == ["the steward withdrew it"]
