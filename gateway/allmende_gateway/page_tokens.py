"""Opaque page and resume tokens, bound to the query and the caller by an HMAC."""

from __future__ import annotations

import base64
import hmac
import json
import secrets
from typing import Any

from allmende.errors import InvalidRequest

__all__ = ["TokenSigner"]

_ENCODE = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode


class TokenSigner:
    """Signs small JSON states; a token only verifies for the same ``binding`` (query + caller).

    The key lives in the gateway process, so tokens do not survive a restart of the gateway:
    callers then start the page again, or resume a stream by a fresh Subscribe.
    """

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    def issue(self, binding: bytes, state: dict[str, Any]) -> str:
        body = _ENCODE(state).encode()
        mac = hmac.digest(self._key, binding + b"\x00" + body, "sha256")[:16]
        return base64.urlsafe_b64encode(mac + body).decode().rstrip("=")

    def open(self, token: str, binding: bytes, what: str = "page_token") -> dict[str, Any]:
        """The state inside ``token``; raises InvalidRequest if it was altered or is for another query."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (ValueError, TypeError) as exc:
            raise InvalidRequest(f"{what} is not a token this gateway issued", field=what) from exc
        mac, body = raw[:16], raw[16:]
        want = hmac.digest(self._key, binding + b"\x00" + body, "sha256")[:16]
        if len(mac) != 16 or not hmac.compare_digest(mac, want):
            raise InvalidRequest(
                f"{what} was altered, expired with a gateway restart, or belongs to another query",
                field=what,
            )
        state = json.loads(body)
        if not isinstance(state, dict):
            raise InvalidRequest(f"{what} is malformed", field=what)
        return state
