"""Field masks as the owner's policy names them: redact, hash, coarsen and bucket.

A mask SPEC is a string from the decision document (``"redact"``, ``"hash:<agreement>"``,
``"coarsen:<N>"``, ``"bucket:<W>"``). ``compile_mask`` turns a spec and the field's type into
a function applied to every value of that field. Anything this gateway cannot apply exactly
(an unknown spec, a malformed one, coarsen or bucket on a field that is not a number or a
geometry, a value of the wrong type) is redacted: a mask never leaks the value it was meant
to hide.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from allmende.config import GatewayConfig
from allmende.errors import IdentityError

__all__ = ["MaskFn", "compile_mask", "hash_salt", "mask_key", "redact"]

MaskFn = Callable[[Any], Any]

_SALT_LABEL = b"allmende mask salt v1\0"
_NUMBER_TYPES = frozenset({"integer", "number"})
_MAX_DECIMALS = 10


def redact(_value: Any) -> None:
    """The value as nobody may see it: null."""
    return None


def mask_key(config: GatewayConfig) -> bytes:
    """The secret the hash salts derive from: the owner's raw Ed25519 signing key.

    A gateway without [keys] (bare test gateways) uses its TLS private key's PEM bytes.
    Raises IdentityError naming the file when it cannot be read.
    """
    if config.keys is not None:
        from cryptography.hazmat.primitives import serialization

        from allmende.signing import load_ed25519_private

        key = load_ed25519_private(config.keys.signing_key)
        return key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
    path = Path(config.tls.key)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise IdentityError(f"cannot read the TLS key {path} for mask salts: {exc}") from exc


def hash_salt(key: bytes, agreement: str) -> bytes:
    """The salt of one agreement's hash mask: HMAC-SHA256(key, label + agreement id).

    Stable across restarts, different per agreement, and not computable without the owner's
    key, so a consumer cannot hash guesses to find a value.
    """
    return hmac.new(key, _SALT_LABEL + agreement.encode("utf-8"), hashlib.sha256).digest()


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _hasher(salt: bytes) -> MaskFn:
    def apply(value: Any) -> Any:
        if value is None:
            return None
        return hmac.new(salt, _canonical(value), hashlib.sha256).hexdigest()

    return apply


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _round_coordinates(coords: Any, decimals: int) -> Any:
    """Every number in a (nested) coordinate array rounded; raises TypeError on anything else."""
    if isinstance(coords, list):
        return [_round_coordinates(c, decimals) for c in coords]
    if _is_number(coords):
        return round(coords, decimals)
    raise TypeError("not a coordinate")


def _coarsen_geometry(geom: Any, decimals: int) -> Any:
    kind = geom.get("type") if isinstance(geom, dict) else None
    if kind == "GeometryCollection":
        parts = geom.get("geometries")
        if not isinstance(parts, list):
            raise TypeError("geometries is not a list")
        return {"type": kind, "geometries": [_coarsen_geometry(g, decimals) for g in parts]}
    if not isinstance(kind, str) or "coordinates" not in geom:
        raise TypeError("not a GeoJSON geometry")
    # Only type and coordinates: any other member (bbox, crs) could hold exact positions.
    return {"type": kind, "coordinates": _round_coordinates(geom["coordinates"], decimals)}


def _coarsener(decimals: int, ftype: str) -> MaskFn:
    if ftype in _NUMBER_TYPES:

        def number(value: Any) -> Any:
            if value is None:
                return None
            return round(value, decimals) if _is_number(value) else None

        return number

    def geometry(value: Any) -> Any:
        if value is None:
            return None
        try:
            return _coarsen_geometry(value, decimals)
        except (TypeError, AttributeError, RecursionError):
            return None  # not what the schema says: hide it rather than pass it on

    return geometry


def _bucketer(width: int | float) -> MaskFn:
    def apply(value: Any) -> Any:
        if value is None or not _is_number(value):
            return None
        edge = math.floor(value / width) * width
        if isinstance(value, int) and isinstance(width, int):
            return int(edge)
        return float(edge)

    return apply


def _parse_width(text: str) -> int | float | None:
    try:
        width: int | float = int(text)
    except ValueError:
        try:
            width = float(text)
        except ValueError:
            return None
    return width if math.isfinite(width) and width > 0 else None


def compile_mask(spec: str, ftype: str, salt: Callable[[str], bytes | None]) -> MaskFn:
    """The function that masks one value of a field of type ``ftype`` as ``spec`` says.

    ``salt(agreement)`` gives the hash salt of an agreement (None when the gateway has no
    key to derive it from). Never raises: what cannot be applied exactly is redacted.
    """
    kind, _, arg = spec.partition(":")
    if kind == "hash" and arg:
        key = salt(arg)
        return _hasher(key) if key is not None else redact
    decimals = int(arg) if arg.isascii() and arg.isdigit() else -1
    coarsenable = ftype in _NUMBER_TYPES or ftype == "geometry"
    if kind == "coarsen" and coarsenable and 0 <= decimals <= _MAX_DECIMALS:
        return _coarsener(decimals, ftype)
    if kind == "bucket" and ftype in _NUMBER_TYPES:
        width = _parse_width(arg)
        if width is not None:
            return _bucketer(width)
    return redact
