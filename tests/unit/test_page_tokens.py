"""Page and resume tokens are bound to the query and the caller and cannot be altered."""

from __future__ import annotations

import base64

import pytest

from allmende.errors import InvalidRequest
from allmende.identity import Identity
from allmende.v1 import query_pb2
from allmende_gateway.authentication import Caller
from allmende_gateway.page_tokens import TokenSigner
from allmende_gateway.serving import binding


def test_token_round_trip_and_binding() -> None:
    signer = TokenSigner()
    token = signer.issue(b"query-1", {"after": "p-17", "served": 100})
    assert signer.open(token, b"query-1") == {"after": "p-17", "served": 100}
    with pytest.raises(InvalidRequest, match="another query"):
        signer.open(token, b"query-2")
    with pytest.raises(InvalidRequest):
        TokenSigner().open(token, b"query-1")  # another gateway (or a restart)


def test_altered_token_is_refused() -> None:
    signer = TokenSigner()
    raw = base64.urlsafe_b64decode(signer.issue(b"q", {"after": "a", "served": 1}) + "==")
    forged = raw.replace(b'"served":1', b'"served":0')
    token = base64.urlsafe_b64encode(forged).decode().rstrip("=")
    with pytest.raises(InvalidRequest, match="altered"):
        signer.open(token, b"q")
    with pytest.raises(InvalidRequest):
        signer.open("!!!not-base64!!!", b"q")


@pytest.mark.parametrize(
    "state",
    [
        {"after": "p-1", "served": 3, "key": [1.5, 1e16, -0.0, None, "ä", True]},
        {"after": "p-1", "served": 3, "key": [float("inf"), float("-inf")]},
        {"after": "p-1", "served": 3, "key": [2**70, -(2**65)]},
    ],
)
def test_token_states_come_back_unchanged(state: dict[str, object]) -> None:
    signer = TokenSigner()
    assert signer.open(signer.issue(b"q", state), b"q") == state


def test_a_long_key_still_signs() -> None:
    signer = TokenSigner(b"k" * 100)
    assert signer.open(signer.issue(b"q", {"after": "a"}), b"q") == {"after": "a"}
    with pytest.raises(InvalidRequest):
        TokenSigner(b"k" * 101).open(signer.issue(b"q", {"after": "a"}), b"q")


def test_binding_ignores_only_the_token() -> None:
    caller = Caller(Identity("sw", "ps", "app"), via_gateway=False)
    req = query_pb2.QueryRequest(owner="kl", dataset="d", purpose="p", page_size=10)
    first = binding(caller, "query", req)
    req.page_token = "abc"
    assert binding(caller, "query", req) == first
    req.page_size = 11
    assert binding(caller, "query", req) != first
    other = Caller(Identity("sw", "ps", "other"), via_gateway=False)
    assert binding(other, "query", query_pb2.QueryRequest(owner="kl", dataset="d")) != binding(
        caller, "query", query_pb2.QueryRequest(owner="kl", dataset="d")
    )
    sub = query_pb2.SubscribeRequest(owner="kl", dataset="d", purpose="p")
    plain = binding(caller, "subscribe", sub)
    sub.resume_token, sub.max_batch = "t", 5
    sub.start = query_pb2.START_FROM_BEGINNING
    assert binding(caller, "subscribe", sub) == plain
