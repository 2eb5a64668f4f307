"""Who is calling: the member identity taken from the caller's TLS certificate, and nothing else."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from allmende.errors import IdentityError
from allmende.identity import Identity, check_name, parse_spiffe_id

__all__ = ["SERVICE_HEADER", "Caller", "authenticate"]

# A member's gateway forwards on behalf of one of its services and names it in this header.
# It is informational (the policy may use it); the member itself comes from the certificate.
SERVICE_HEADER = "x-allmende-service"


@dataclass(frozen=True)
class Caller:
    """The authenticated caller. ``via_gateway`` is true when a member's gateway forwarded."""

    identity: Identity
    via_gateway: bool

    @property
    def member(self) -> str:
        return self.identity.member

    @property
    def cluster(self) -> str:
        return self.identity.cluster

    @property
    def service(self) -> str:
        return self.identity.service


def authenticate(context: grpc.aio.ServicerContext) -> Caller:
    """Read the SPIFFE ID from the peer certificate; raises IdentityError if there is none.

    gRPC only verifies that the certificate chains to a trusted CA; this decides who it is.
    A certificate with no or several URI SANs is refused: the identity must be unambiguous.
    """
    auth = context.auth_context()
    uris = auth.get("peer_uri", [])
    if len(uris) != 1:
        raise IdentityError(
            f"the client certificate must carry exactly one SPIFFE ID URI SAN (found {len(uris)})"
        )
    identity = parse_spiffe_id(uris[0].decode("utf-8", errors="replace"))
    if identity.service:
        return Caller(identity, via_gateway=False)
    service = ""
    for key, value in context.invocation_metadata() or ():
        if key == SERVICE_HEADER and isinstance(value, str) and value:
            service = check_name("service", value)
    return Caller(Identity(identity.cluster, identity.member, service), via_gateway=True)
