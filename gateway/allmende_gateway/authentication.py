"""Who is calling: the member identity taken from the caller's TLS certificate, and nothing else;
and whether the cluster CA has revoked that member since (which cuts off its calls and streams).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

import grpc

from allmende.errors import AllmendeError, IdentityError
from allmende.identity import Identity, check_name, parse_spiffe_id

__all__ = [
    "SERVICE_HEADER",
    "Caller",
    "MemberRevoked",
    "Revocations",
    "StreamGuard",
    "authenticate",
]

log = logging.getLogger(__name__)

_Event = TypeVar("_Event")

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


# Parsed SPIFFE IDs by the URI SAN's bytes: a certificate's ID is parsed once, not per call.
# Only IDs that parsed are kept (a bad one raises each time); bounded by clearing.
_IDENTITIES: dict[bytes, Caller] = {}
_IDENTITY_CACHE_SIZE = 1024


def _certificate_caller(uri: bytes) -> Caller:
    caller = _IDENTITIES.get(uri)
    if caller is None:
        identity = parse_spiffe_id(uri.decode("utf-8", errors="replace"))
        caller = Caller(identity, via_gateway=not identity.service)
        if len(_IDENTITIES) >= _IDENTITY_CACHE_SIZE:
            _IDENTITIES.clear()
        _IDENTITIES[uri] = caller
    return caller


def authenticate(context: grpc.aio.ServicerContext) -> Caller:
    """Read the SPIFFE ID from the peer certificate; raises IdentityError if there is none.

    gRPC only verifies that the certificate chains to a trusted CA; this decides who it is.
    A certificate with no or several URI SANs is refused: the identity must be unambiguous.
    """
    # The SAN types matter (a DNS name may spell a SPIFFE ID): read the URIs, every call.
    uris = context.auth_context().get("peer_uri", [])
    if len(uris) != 1:
        raise IdentityError(
            f"the client certificate must carry exactly one SPIFFE ID URI SAN (found {len(uris)})"
        )
    caller = _certificate_caller(uris[0])
    if not caller.via_gateway:
        return caller
    identity = caller.identity
    service = ""
    for key, value in context.invocation_metadata() or ():
        if key == SERVICE_HEADER and isinstance(value, str) and value:
            service = check_name("service", value)
    return Caller(Identity(identity.cluster, identity.member, service), via_gateway=True)


class MemberRevoked(AllmendeError):
    """The cluster CA revoked the member: its calls are refused, its streams are ended."""

    grpc_code = "PERMISSION_DENIED"
    reason = "MEMBER_REVOKED"

    def __init__(self, member: str, why: str) -> None:
        self.member = member
        self.why = why
        super().__init__(f"member {member} is revoked by the cluster CA: {why}")


class Revocations:
    """The revoked members as the gateway last read them from its store, and the open streams.

    Used on the event loop only. ``update`` takes the revoked set (the gateway polls its store
    every ``trust_poll_s``) and ends the open streams of every newly revoked member through
    their StreamGuards.
    """

    def __init__(self) -> None:
        self._revoked: dict[str, str] = {}
        self._guards: set[StreamGuard] = set()

    @property
    def revoked(self) -> Mapping[str, str]:
        return dict(self._revoked)

    def check(self, *members: str) -> None:
        """Raise MemberRevoked if any of ``members`` is revoked."""
        for member in members:
            why = self._revoked.get(member)
            if why is not None:
                raise MemberRevoked(member, why)

    def update(self, revoked: Mapping[str, str]) -> list[str]:
        """Take the current revoked set; end the streams of the newly revoked members.

        Returns the newly revoked members. A member no longer in ``revoked`` (re-admitted by
        the CA) may call again.
        """
        newly = sorted(set(revoked) - set(self._revoked))
        self._revoked = dict(revoked)
        if newly:
            for guard in list(self._guards):
                guard.cut(self._revoked)
        return newly

    def guard(self, *members: str) -> StreamGuard:
        """A guard for one stream on behalf of ``members``; raises MemberRevoked right away."""
        self.check(*members)
        return StreamGuard(self, members)

    @property
    def open_streams(self) -> int:
        return len(self._guards)


class StreamGuard:
    """Relays one stream until one of its members is revoked, then raises MemberRevoked.

    A stream spends most of its time awaiting its next event (the owner's store poll, or the
    upstream gateway's next message); the guard cancels exactly that await, so the stream
    ends within one trust poll however quiet it is. While the event is being written to the
    caller nothing is cancelled; the guard raises before it awaits the next one.
    """

    def __init__(self, revocations: Revocations, members: tuple[str, ...]) -> None:
        self._revocations = revocations
        self.members = members
        self._task: asyncio.Task | None = None
        self._waiting = False
        self._cut: MemberRevoked | None = None

    def cut(self, revoked: Mapping[str, str]) -> None:
        """End the stream if one of its members is in ``revoked``."""
        for member in self.members:
            if member in revoked and self._cut is None:
                self._cut = MemberRevoked(member, revoked[member])
                if self._waiting and self._task is not None:
                    self._task.cancel()

    def _raise_if_cut(self) -> None:
        if self._cut is not None:
            raise self._cut

    async def relay(self, stream: AsyncIterable[_Event]) -> AsyncIterator[_Event]:
        """Yield ``stream``'s events; raises MemberRevoked when a member is revoked."""
        self._task = asyncio.current_task()
        self._revocations._guards.add(self)
        it = aiter(stream)
        try:
            while True:
                self._raise_if_cut()
                self._waiting = True
                try:
                    event = await anext(it)
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    if self._cut is None:
                        raise  # the caller went away, or the server stops
                    if self._task is not None:
                        self._task.uncancel()  # we cancelled it; the handler goes on to abort
                    log.info("ending a stream of %s: %s", "/".join(self.members), self._cut)
                    raise self._cut from None
                finally:
                    self._waiting = False
                yield event
        finally:
            self._revocations._guards.discard(self)
