"""Page and resume tokens are bound to the query and the caller and cannot be altered."""

from __future__ import annotations

import base64

import pytest

from allmende.errors import InvalidRequest
from allmende_gateway.page_tokens import TokenSigner


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
