"""The remote policy engine: the same Rego and agreements, decided by an OPA server (a sidecar).

A town that runs OPA next to its gateway sets ``[gateway] policy_engine = "opa"`` and
``opa_url``. ``RemotePolicy`` then pushes the policy modules through OPA's Policy API
(``PUT /v1/policies/<id>``) and the agreements and settings through its Data API
(``PUT /v1/data/allmende/sharing``, ``PUT /v1/data/allmende/settings``) with
opa-python-client, and asks ``POST /v1/data/allmende/decision/decision`` once per request.
The data document is the one the embedded ``PolicyEngine`` loads, ``policy_version``
included, so both engines give the same Decision for the same input.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import requests
from opa_client import OpaClient
from opa_client.errors import (
    ConnectionsError,
    DeletePolicyError,
    RegoParseError,
)

from allmende.errors import PolicyError
from allmende.policy.engine import (
    _LABEL,
    _PROBE_INPUT,
    NO_DECISION,
    Decision,
    _check_settings,
    _decision,
)

__all__ = ["MODULE_PREFIX", "RemotePolicy", "policy_data"]

# Every module allmende pushes gets an id below this prefix, so that modules a newer bundle
# no longer has are found and removed, and other tenants of the OPA server are left alone.
MODULE_PREFIX = "allmende-policy/"
_DECISION_PATH = "allmende/decision"
_DECISION_RULE = "decision"

# OPA's Data API errors that opa-python-client lets through as they are.
_CLIENT_ERRORS = (
    requests.RequestException,
    ConnectionsError,
    RegoParseError,
    DeletePolicyError,
    ValueError,
    TypeError,
)


def policy_data(
    policies: Mapping[str, str],
    agreements: Sequence[Mapping[str, Any]],
    settings: Mapping[str, Any] | None,
    version_label: str = "",
) -> tuple[dict[str, Any], str]:
    """The data document under ``data.allmende`` and the policy version, as PolicyEngine has them.

    The version is ``sha256:`` and 12 hex digits over the sources, the agreements and the
    settings, preceded by ``<version_label>:`` when a label is given. Raises PolicyError
    for wrong settings or values that are not plain JSON.
    """
    max_rows = _check_settings(settings or {})
    if version_label and not _LABEL.fullmatch(version_label):
        raise PolicyError(
            f"policy version label {version_label!r} must be letters, digits and . _ + -"
        )
    sources = dict(sorted(policies.items()))
    data: dict[str, Any] = {
        "sharing": {"agreements": [dict(a) for a in agreements]},
        "settings": {"default_max_rows": max_rows},
    }
    try:
        canonical = json.dumps(
            {"allmende": data}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
    except (TypeError, ValueError) as exc:
        raise PolicyError(f"agreements or settings are not plain JSON values: {exc}") from exc
    digest = hashlib.sha256()
    for name, source in sources.items():
        digest.update(f"{name}\0{source}\0".encode())
    digest.update(canonical.encode())
    version = "sha256:" + digest.hexdigest()[:12]
    if version_label:
        version = f"{version_label}:{version}"
    data["settings"]["policy_version"] = version
    return data, version


class RemotePolicy:
    """Decides on an OPA server what the embedded PolicyEngine decides in process.

    Construction pushes every module and the data, removes modules of an earlier push
    that this one no longer has, and decides a sample request, so that an OPA that cannot
    be reached or refuses the policy is found at start-up. ``decide`` then costs one HTTP
    round trip (the gateway calls it on its event loop's thread, as the embedded engine).
    """

    def __init__(
        self,
        opa_url: str,
        policies: Mapping[str, str],
        agreements: Sequence[Mapping[str, Any]] = (),
        settings: Mapping[str, Any] | None = None,
        *,
        version_label: str = "",
        timeout_s: float = 2.0,
        retries: int = 1,
    ) -> None:
        """Push ``policies`` (name → Rego source), ``agreements`` and ``settings`` to OPA.

        Raises PolicyError naming the URL when ``opa_url`` is not ``http(s)://host:port``,
        when OPA cannot be reached, when it refuses a module (with OPA's message), when it
        refuses the data, or when the policies decide nothing for a sample request.
        """
        if not policies:
            raise PolicyError(f"no Rego policies to push to OPA at {opa_url}")
        self.url = opa_url.rstrip("/")
        parts = urlsplit(self.url)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.path not in ("", "/")
        ):
            raise PolicyError(
                f"opa_url {opa_url!r} must be http://host:port or https://host:port "
                "(OPA's API root, no path)"
            )
        try:
            port = parts.port or (443 if parts.scheme == "https" else 8181)
        except ValueError as exc:
            raise PolicyError(f"opa_url {opa_url!r} has a bad port: {exc}") from exc
        self._sources = dict(sorted(policies.items()))
        self._data, self._version = policy_data(self._sources, agreements, settings, version_label)
        self._client = OpaClient(
            host=parts.hostname,
            port=port,
            ssl=parts.scheme == "https",
            timeout=timeout_s,
            retries=retries,
        )
        try:
            self._push()
            probe = self.decide(_PROBE_INPUT)
        except PolicyError:
            self.close()
            raise
        if probe.reasons == (NO_DECISION,):
            self.close()
            raise PolicyError(
                f"OPA at {self.url} decides nothing for a sample request: the policies define "
                f"no rule data.allmende.decision.decision"
            )

    @property
    def policy_version(self) -> str:
        """The same version the embedded engine reports for these policies and data."""
        return self._version

    @property
    def policy_names(self) -> tuple[str, ...]:
        """The names of the pushed Rego files, sorted."""
        return tuple(self._sources)

    def module_id(self, name: str) -> str:
        """The id under which the module ``name`` lives in OPA's Policy API."""
        return MODULE_PREFIX + name

    def _push(self) -> None:
        wanted = {self.module_id(name) for name in self._sources}
        try:
            present = self._client.get_policies_list()
        except _CLIENT_ERRORS as exc:
            raise self._error("cannot be reached", exc) from exc
        for stale in sorted(set(present) - wanted):
            if stale.startswith(MODULE_PREFIX):
                try:
                    self._client.delete_policy(stale)
                except _CLIENT_ERRORS as exc:
                    raise self._error(f"did not remove the old module {stale}", exc) from exc
        for name, source in self._sources.items():
            try:
                # rego_compat=False: OPA evaluates the modules as written (they are Rego v1
                # with `import rego.v1`, which OPA 0.59+ and 1.x read alike), never a
                # rewrite the client made.
                self._client.update_policy_from_string(
                    source, self.module_id(name), rego_compat=False
                )
            except _CLIENT_ERRORS as exc:
                raise self._error(f"refused the policy module {name}", exc) from exc
        for key in ("sharing", "settings"):
            try:
                self._client.update_or_create_data(self._data[key], f"allmende/{key}")
            except _CLIENT_ERRORS as exc:
                raise self._error(f"refused the data at data.allmende.{key}", exc) from exc

    def decide(self, input: Mapping[str, Any], *, input_json: str | None = None) -> Decision:
        """Ask OPA for data.allmende.decision.decision with ``input`` (``input_json``, the
        text the embedded engine may take instead, is not needed: the client encodes it).

        An undefined decision denies ("policy produced no decision"). Raises PolicyError
        naming the URL when OPA cannot be reached or fails the evaluation, and when the
        decision is malformed.
        """
        try:
            answer = self._client.query_rule(dict(input), _DECISION_PATH, _DECISION_RULE)
        except _CLIENT_ERRORS as exc:
            raise self._error("failed to decide", exc) from exc
        if not isinstance(answer, dict):
            raise PolicyError(f"OPA at {self.url} answered {answer!r}, not a JSON object")
        if "result" not in answer:
            return Decision.denied([NO_DECISION], self._version)
        try:
            return _decision(answer["result"])
        except PolicyError as exc:
            raise PolicyError(f"OPA at {self.url}: {exc}") from exc

    def close(self) -> None:
        """Close the HTTP connections (the modules stay on the OPA server)."""
        self._client.close_connection()

    def _error(self, what: str, exc: BaseException) -> PolicyError:
        return PolicyError(f"OPA at {self.url} {what}: {_describe(exc)}")


def _describe(exc: BaseException) -> str:
    """opa-python-client's and requests' errors in one line."""
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        response = exc.response
        try:
            body = response.json()
            detail = body.get("message", "") if isinstance(body, dict) else ""
        except ValueError:
            detail = response.text[:200]
        return f"HTTP {response.status_code} {detail}".strip()
    if isinstance(exc, RegoParseError):
        return str(exc).strip("()")
    if isinstance(exc, requests.ConnectionError):
        return "connection refused or lost"
    if isinstance(exc, requests.Timeout):
        return "no answer in time"
    message = getattr(exc, "message", "") or str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
