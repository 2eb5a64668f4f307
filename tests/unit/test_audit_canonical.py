"""canonical_json writes exactly the bytes of the reference json encoder (PROTOCOL.md "Audit
trail"), whichever encoder it uses, and a sealed document is spliced as that same text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allmende.audit.chain import EntryTemplate, TemplatedRecord, _spliced, canonical_json, seal
from allmende.audit.log import AuditLog

REFERENCE = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode

# Every character, lone surrogates and control characters included.
TEXT = st.text(st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF), max_size=12)
# What orjson writes (no floats: they are left to json) ...
PLAIN_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | TEXT
    | st.sampled_from(["", "ä", "€", "\u2028", "\x7f", "\x00", "\ud800", '"\\/'])
)
# ... and what entries may hold besides.
LEAVES = PLAIN_LEAVES | st.floats()


def _values(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.lists(inner, max_size=3).map(tuple)
            | st.dictionaries(TEXT, inner, max_size=4)
        ),
        max_leaves=20,
    )


VALUES = _values(LEAVES)
OBJECTS = st.dictionaries(TEXT, VALUES, max_size=6)
PLAIN_OBJECTS = st.dictionaries(TEXT, _values(PLAIN_LEAVES), max_size=6)


def _outcome(encode: Any, value: Any) -> tuple[str, str]:
    try:
        return ("ok", encode(value))
    except (TypeError, ValueError) as exc:
        return ("error", type(exc).__name__)


@settings(max_examples=400, deadline=None)
@given(PLAIN_OBJECTS)
def test_orjson_writes_the_reference_bytes(value: dict[str, Any]) -> None:
    assert _spliced(value) is value  # the orjson path, unless orjson refuses (then json)
    assert _outcome(canonical_json, value) == _outcome(REFERENCE, value)


@settings(max_examples=300, deadline=None)
@given(OBJECTS)
def test_same_bytes_as_the_reference(value: dict[str, Any]) -> None:
    assert _outcome(canonical_json, value) == _outcome(REFERENCE, value)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(TEXT, VALUES, min_size=1, max_size=4), OBJECTS)
def test_a_sealed_document_is_spliced_as_its_own_text(
    document: dict[str, Any], entry: dict[str, Any]
) -> None:
    assert seal(document) is document  # not JSON (NaN): left unsealed, refused below
    entry["input"] = document
    assert _outcome(canonical_json, entry) == _outcome(REFERENCE, entry)


@pytest.mark.parametrize(
    "value",
    [
        {"f": 1e16},
        {"f": 1e-7},
        {"f": 0.1},
        {"f": -0.0},
        {"big": 2**64},
        {"big": -(2**63) - 1},
        {"s": '\x00\x1f\u2028\x7f"\\ä'},
        {"nested": [{"b": 1, "a": [True, None]}], "a": ()},
        {2: "int key"},
    ],
)
def test_edge_values(value: dict[Any, Any]) -> None:
    assert canonical_json(value) == REFERENCE(value)


@pytest.mark.parametrize("value", [{"nan": float("nan")}, {"inf": float("inf")}, {"x": object()}])
def test_what_json_refuses_stays_refused(value: dict[str, Any]) -> None:
    with pytest.raises((TypeError, ValueError)):
        canonical_json(value)


class _Str(str):
    pass


def test_subclasses_are_left_to_json() -> None:
    value = {"s": _Str("x"), "d": {"k": 1.5}}
    assert canonical_json(value) == REFERENCE(value)


def test_an_entry_with_a_policy_input() -> None:
    document = seal(
        {
            "subject": {"member": "pirmasens", "cluster": "suedwest", "service": "bench"},
            "action": "query",
            "request": {"purpose": "traffic-planning", "fields": [], "limit": 10},
            "now": "2026-12-02T00:52:39+00:00",
        }
    )
    entry = {"seq": 1, "prev": "0" * 64, "allow": True, "rows": 10, "input": document}
    assert canonical_json(entry) == REFERENCE(entry)


# -- entry templates: the gateway's entries, joined from text encoded once -------------------

VARYING = ("time", "rows", "request_sha256", "seq", "prev")
VARYING_VALUES = st.fixed_dictionaries(
    {
        "time": TEXT,
        "rows": st.integers(min_value=-(2**63), max_value=2**63 - 1),
        "request_sha256": TEXT,
        "seq": st.integers(min_value=0, max_value=2**63 - 1),
        "prev": TEXT,
    }
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(TEXT.filter(lambda k: k not in VARYING), VALUES, max_size=6), VARYING_VALUES)
def test_a_template_renders_the_reference_bytes(
    static: dict[str, Any], values: dict[str, Any]
) -> None:
    try:
        template = EntryTemplate(static, VARYING)
    except (TypeError, ValueError):
        assert _outcome(REFERENCE, static)[0] == "error"  # refused only what json refuses
        return
    rendered = template.render(values)
    if rendered is None:  # left to the usual encoder: only for a text orjson refuses
        assert any(_outcome(orjson.dumps, v)[0] == "error" for v in values.values())
    else:
        assert rendered == REFERENCE({**static, **values})


@pytest.mark.parametrize("odd", [True, 1.5, None, [1], "x"])
def test_a_template_leaves_values_other_than_str_and_int_to_the_encoder(odd: Any) -> None:
    template = EntryTemplate({"allow": True}, ("rows",))
    rendered = template.render({"rows": odd})
    if type(odd) in (str, int):
        assert rendered == REFERENCE({"allow": True, "rows": odd})
    else:
        assert rendered is None


def test_a_key_cannot_be_both_static_and_variable() -> None:
    with pytest.raises(ValueError, match="rows"):
        EntryTemplate({"rows": 1}, ("rows",))


def test_a_templated_record_is_logged_exactly_as_the_same_dict(tmp_path: Path) -> None:
    class Signer:
        member = "kaiserslautern"

        def sign(self, env: Any) -> None:
            env.signature = b"s" * 64

    document = seal({"subject": {"member": "pirmasens"}, "now": "2026-12-02T01:00:00+00:00"})
    static = {"action": "query", "allow": True, "reasons": ["ä grant"], "input": document}
    template = EntryTemplate(static, VARYING)
    plain, templated = tmp_path / "plain.log", tmp_path / "templated.log"
    fixed = "2026-12-02T01:00:00.000000Z"
    with (
        AuditLog(plain, Signer(), background=False, now=lambda: fixed) as a,
        AuditLog(templated, Signer(), background=False, now=lambda: fixed) as b,
    ):
        for i in range(5):
            values = {"time": f"2026-12-02T01:00:0{i}.000+00:00", "rows": i, "request_sha256": "ab"}
            a.append({**static, **values})
            record = TemplatedRecord(template, values)
            assert dict(record) == {**static, **values}  # any other sink sees the plain record
            b.append(record)
        odd = TemplatedRecord(template, {"time": "t", "rows": True, "request_sha256": "ab"})
        a.append({**static, "time": "t", "rows": True, "request_sha256": "ab"})
        b.append(odd)  # a bool is not an int here: encoded the usual way, the same bytes
    assert templated.read_bytes() == plain.read_bytes()
