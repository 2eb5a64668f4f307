"""Member identities: exact parsing of SPIFFE-style IDs and reading a peer's identity from TLS."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from allmende.errors import IdentityError

__all__ = [
    "NAME_PATTERN",
    "Identity",
    "TlsFiles",
    "check_name",
    "gateway_server_name",
    "parse_spiffe_id",
]

# Cluster, member and service names: lowercase letters, digits and inner hyphens. Nothing
# else is accepted, so two spellings can never name the same member.
NAME_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_SCHEME = "spiffe://"


def check_name(kind: str, name: str) -> str:
    """Return ``name`` if it is a valid cluster/member/service name; raise IdentityError if not."""
    if not NAME_PATTERN.fullmatch(name):
        raise IdentityError(
            f"{kind} name {name!r} is not allowed: use lowercase letters, digits and inner hyphens"
        )
    return name


def gateway_server_name(cluster: str, member: str) -> str:
    """The DNS name in a member gateway's certificate, ``<member>.<cluster>.allmende``.

    A gateway that forwards to an owner sets this as the TLS target name, so the handshake
    itself proves it reached the owner's gateway and not some other member's.
    """
    return f"{member}.{cluster}.allmende"


@dataclass(frozen=True, order=True)
class Identity:
    """Who is calling: a member of a cluster, optionally one of its services."""

    cluster: str
    member: str
    service: str = ""

    @property
    def spiffe_id(self) -> str:
        base = f"{_SCHEME}{self.cluster}/member/{self.member}"
        return f"{base}/service/{self.service}" if self.service else base

    def __str__(self) -> str:
        return self.spiffe_id


def parse_spiffe_id(text: str) -> Identity:
    """Parse ``spiffe://<cluster>/member/<member>[/service/<service>]`` exactly.

    No normalisation happens: upper case, percent-encoding, dot segments, empty segments,
    trailing slashes, queries, fragments, ports and user info are all refused, so an ID has
    one spelling only. Raises IdentityError naming the problem.
    """
    if not text.startswith(_SCHEME):
        raise IdentityError(f"{text!r} is not a SPIFFE ID (must start with {_SCHEME})")
    rest = text[len(_SCHEME) :]
    for bad, why in (
        ("%", "percent-encoding"),
        ("?", "a query"),
        ("#", "a fragment"),
        ("@", "user info"),
        (":", "a port"),
        ("\\", "a backslash"),
    ):
        if bad in rest:
            raise IdentityError(f"SPIFFE ID {text!r} contains {why}")
    parts = rest.split("/")
    if (
        len(parts) not in (3, 5)
        or parts[1] != "member"
        or (len(parts) == 5 and parts[3] != "service")
    ):
        raise IdentityError(
            f"SPIFFE ID {text!r} must be spiffe://<cluster>/member/<member>[/service/<service>]"
        )
    cluster, member = parts[0], parts[2]
    service = parts[4] if len(parts) == 5 else ""
    for kind, name in (("cluster", cluster), ("member", member), ("service", service)):
        if kind == "service" and len(parts) == 3:
            continue
        if name in (".", "..") or not NAME_PATTERN.fullmatch(name):
            raise IdentityError(f"SPIFFE ID {text!r} has an invalid {kind} segment {name!r}")
    return Identity(cluster=cluster, member=member, service=service)


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files one party needs for mutual TLS: the trusted CA bundle, its cert, its key."""

    ca: Path
    cert: Path
    key: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        """Return (ca, cert, key) bytes; raises IdentityError naming an unreadable file."""
        out = []
        for label, path in (("CA bundle", self.ca), ("certificate", self.cert), ("key", self.key)):
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise IdentityError(f"cannot read {label} {path}: {exc.strerror}") from exc
            if b"-----BEGIN" not in data:
                raise IdentityError(f"{label} {path} is not a PEM file")
            out.append(data)
        return out[0], out[1], out[2]
