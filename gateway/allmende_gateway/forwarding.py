"""Forwarding to the owner's gateway over mutual TLS, on behalf of one of this town's services."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Mapping

import grpc

from allmende.config import Peer
from allmende.errors import DatasetNotFound, PeerUnavailable
from allmende.identity import gateway_server_name
from allmende.v1 import query_pb2, query_pb2_grpc
from allmende_gateway.authentication import SERVICE_HEADER, Caller

__all__ = ["Forwarder", "UpstreamError"]

_DETAILS_KEY = "grpc-status-details-bin"
_SERVICE = "allmende.v1.QueryService"


class UpstreamError(Exception):
    """The owner's gateway answered with an error, to be relayed unchanged to our caller."""

    def __init__(self, exc: grpc.aio.AioRpcError) -> None:
        super().__init__(exc.details())
        self.rpc_error = exc


class Forwarder:
    """Keeps one channel per owner and forwards Query, Aggregate and both streams to it.

    The TLS target name is the owner's gateway name (``<member>.<cluster>.allmende``), so the
    handshake fails unless the server holds the owner's own certificate.
    """

    def __init__(
        self,
        credentials: grpc.ChannelCredentials,
        peers: Mapping[str, Peer],
        catalog_lookup: Callable[[str, str], Peer | None],
        *,
        timeout_s: float = 30.0,
    ) -> None:
        self._credentials = credentials
        self._peers = dict(peers)
        self._lookup = catalog_lookup
        self._timeout_s = timeout_s
        self._channels: dict[tuple[str, str], grpc.aio.Channel] = {}

    def _peer(self, owner: str, dataset: str) -> Peer:
        if owner in self._peers:
            return self._peers[owner]
        peer = self._lookup(owner, dataset)
        if peer is None:
            raise DatasetNotFound(owner, dataset)
        if not peer.address:
            raise PeerUnavailable(f"the catalog names no gateway address for {owner}")
        return peer

    def _channel(self, peer: Peer, owner: str) -> grpc.aio.Channel:
        key = (owner, peer.address)
        channel = self._channels.get(key)
        if channel is None:
            channel = grpc.aio.secure_channel(
                peer.address,
                self._credentials,
                options=[
                    ("grpc.ssl_target_name_override", gateway_server_name(peer.cluster, owner))
                ],
            )
            self._channels[key] = channel
        return channel

    def _stub(self, peer: Peer, owner: str) -> query_pb2_grpc.QueryServiceStub:
        return query_pb2_grpc.QueryServiceStub(self._channel(peer, owner))

    @staticmethod
    def _metadata(caller: Caller) -> tuple[tuple[str, str], ...]:
        return ((SERVICE_HEADER, caller.service),) if caller.service else ()

    def _translate(self, exc: grpc.aio.AioRpcError, owner: str, peer: Peer) -> Exception:
        has_details = any(k == _DETAILS_KEY for k, _ in (exc.trailing_metadata() or ()))
        if (
            exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            and not has_details
        ):
            return PeerUnavailable(
                f"the gateway of {owner} at {peer.address} did not answer: {exc.details()}"
            )
        return UpstreamError(exc)

    async def query(self, caller: Caller, req: query_pb2.QueryRequest) -> query_pb2.QueryResponse:
        """Forward one Query; raises PeerUnavailable, DatasetNotFound or UpstreamError."""
        peer = self._peer(req.owner, req.dataset)
        try:
            return await self._stub(peer, req.owner).Query(
                req, metadata=self._metadata(caller), timeout=self._timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            raise self._translate(exc, req.owner, peer) from exc

    async def aggregate(
        self, caller: Caller, req: query_pb2.AggregateRequest
    ) -> query_pb2.AggregateResponse:
        """Forward one Aggregate; raises PeerUnavailable, DatasetNotFound or UpstreamError."""
        peer = self._peer(req.owner, req.dataset)
        try:
            return await self._stub(peer, req.owner).Aggregate(
                req, metadata=self._metadata(caller), timeout=self._timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            raise self._translate(exc, req.owner, peer) from exc

    def subscribe(
        self, caller: Caller, req: query_pb2.SubscribeRequest
    ) -> AsyncGenerator[tuple[bytes], None]:
        """Relay the owner's Subscribe stream (see ``_relay``)."""
        return self._relay("Subscribe", caller, req)

    def subscribe_batches(
        self, caller: Caller, req: query_pb2.SubscribeRequest
    ) -> AsyncGenerator[tuple[bytes], None]:
        """Relay the owner's SubscribeBatches stream (see ``_relay``)."""
        return self._relay("SubscribeBatches", caller, req)

    async def _relay(
        self, method: str, caller: Caller, req: query_pb2.SubscribeRequest
    ) -> AsyncGenerator[tuple[bytes], None]:
        """The owner's messages as it sent them (bytes, never parsed here), one at a time.

        The next message is read from the owner only after our caller took this one, so a
        slow caller slows the owner's stream (HTTP/2 flow control) instead of filling our
        memory; cancelling our caller cancels the upstream call. Raises PeerUnavailable,
        DatasetNotFound or UpstreamError.
        """
        peer = self._peer(req.owner, req.dataset)
        call = self._channel(peer, req.owner).unary_stream(
            f"/{_SERVICE}/{method}",
            request_serializer=query_pb2.SubscribeRequest.SerializeToString,
        )(req, metadata=self._metadata(caller))
        try:
            async for raw in call:
                yield (raw,)
        except grpc.aio.AioRpcError as exc:
            raise self._translate(exc, req.owner, peer) from exc
        finally:
            call.cancel()

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
