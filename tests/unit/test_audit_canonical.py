"""canonical_json writes exactly the bytes of the reference json encoder (PROTOCOL.md "Audit
trail"), whichever encoder it uses, and a sealed document is spliced as that same text."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allmende.audit.chain import _spliced, canonical_json, seal

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
