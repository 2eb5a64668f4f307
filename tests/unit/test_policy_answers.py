"""How the compiled path writes the input for regorus' VM, and the decisions it keeps by input.

The input is written with orjson, after marshal has made sure it holds only built-in types;
a repeated input is answered from the engine's cache of inputs. Both must decide exactly as
regorus' interpreter does, including the inputs it refuses.
"""

from __future__ import annotations

import copy
import enum
import json
import uuid
from typing import Any

import pytest
from test_policy_engine import REQUEST  # the usual request: a partner under an agreement

from allmende.errors import PolicyError
from allmende.policy import BUNDLED_POLICY_DIR, PolicyEngine, bundled_example_agreements_dir
from allmende.policy.engine import _input_json as input_json


class Colour(enum.Enum):
    RED = "red"


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine.from_paths(BUNDLED_POLICY_DIR, bundled_example_agreements_dir())


# --- what is plain JSON --------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [uuid.UUID(int=1), Colour.RED, float("nan"), float("inf"), 2**60, {1: "a"}, {"a"}, b"x"],
    ids=["uuid", "enum", "nan", "inf", "big-int", "int-key", "set", "bytes"],
)
def test_values_json_has_no_place_for_go_to_the_interpreter(value: Any) -> None:
    assert input_json({**REQUEST, "extra": value}) is None


def test_plain_json_values_are_written_as_json() -> None:
    value = {**REQUEST, "extra": [None, True, 1.5, -0.0, 2**53 - 1, "ü", {"k": ()}]}
    text = input_json(value)
    assert text is not None
    assert json.loads(text) == {
        **value,
        "extra": [None, True, 1.5, -0.0, 2**53 - 1, "ü", {"k": []}],
    }


@pytest.mark.parametrize("value", [uuid.UUID(int=1), Colour.RED, float("nan"), 2**60])
def test_non_json_anywhere_is_decided_as_the_interpreter_decides(
    engine: PolicyEngine, value: Any
) -> None:
    """Even where the policy does not look (request.fields): regorus' interpreter refuses
    a UUID or an enum anywhere (PolicyError), and so does decide."""
    odd = copy.deepcopy(REQUEST)
    odd["request"]["fields"] = [value]
    try:
        expected: Any = engine.decide_interpreted(odd)
    except PolicyError as exc:
        expected = str(exc)
    try:
        got: Any = engine.decide(odd)
    except PolicyError as exc:
        got = str(exc)
    assert got == expected
    if isinstance(value, uuid.UUID | Colour):
        assert isinstance(got, str) and "not plain JSON" in got


# --- the decisions kept by input ----------------------------------------------------------


def test_a_repeated_input_is_answered_from_the_cache(engine: PolicyEngine) -> None:
    first = engine.decide(REQUEST)
    again = engine.decide(copy.deepcopy(REQUEST))
    assert again is first
    assert input_json(REQUEST) in engine._answers


def test_inputs_that_differ_anywhere_are_decided_apart(engine: PolicyEngine) -> None:
    """The cache is keyed by the whole input: a change the policy reads changes the answer."""
    later = {**REQUEST, "now": "2028-03-01T08:00:00+00:00"}  # ka-ps-permits-2026 expired
    other = {**REQUEST, "subject": {**REQUEST["subject"], "member": "zweibruecken"}}
    for value in (REQUEST, later, other):
        assert engine.decide(value) == engine.decide_interpreted(value)
    assert engine.decide(REQUEST).allow
    assert not engine.decide(later).allow and not engine.decide(other).allow


def test_the_cache_stays_bounded(engine: PolicyEngine) -> None:
    from allmende.policy import engine as module

    for limit in range(module._ANSWER_CACHE_SIZE + 10):
        value = copy.deepcopy(REQUEST)
        value["request"]["limit"] = limit + 1
        engine.decide(value)
    assert len(engine._answers) <= module._ANSWER_CACHE_SIZE
