"""The gRPC services of a gateway: Catalog (federated catalog) and Query (own data or forwarded)."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import aclosing
from typing import TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.message import Message
from grpc._cython.cygrpc import ExecuteBatchError  # what a write to a closed call raises

from allmende.errors import AllmendeError, NotOwner, PolicyDenied
from allmende.store import StoreReader
from allmende.v1 import catalog_pb2, catalog_pb2_grpc, query_pb2, query_pb2_grpc
from allmende_gateway.authentication import Caller, MemberRevoked, Revocations, authenticate
from allmende_gateway.forwarding import Forwarder, UpstreamError
from allmende_gateway.serving import OwnerService
from allmende_gateway.status import abort, relay_upstream_error
from allmende_gateway.streaming import batch_stream, event_stream

__all__ = ["CatalogServicer", "QueryServicer", "add_query_service"]

# A stream's messages as wire bytes, a few at a time (a chunk of the owner's change log).
Messages = AsyncGenerator[Sequence[bytes], None]

log = logging.getLogger(__name__)


class CatalogServicer(catalog_pb2_grpc.CatalogServiceServicer):
    """The federated catalog as this town's node keeps it; for members of this cluster."""

    def __init__(
        self, store: StoreReader, cluster: str, revocations: Revocations | None = None
    ) -> None:
        self.store = store
        self.cluster = cluster
        self.revocations = revocations or Revocations()

    def _check(self, context: grpc.aio.ServicerContext) -> Caller:
        caller = authenticate(context)
        self.revocations.check(caller.member)
        if caller.cluster != self.cluster:
            raise PolicyDenied(
                [
                    f"{caller.member} is not a member of cluster {self.cluster}; "
                    "the catalog is shared with members only"
                ],
                subject_member=caller.member,
            )
        return caller

    async def ListDatasets(
        self, request: catalog_pb2.ListDatasetsRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.ListDatasetsResponse:
        try:
            self._check(context)
            # A revoked member's datasets leave the catalog with it: nobody may reach them.
            revoked = self.revocations.revoked
            datasets = [
                d
                for d in self.store.catalog(owner=request.owner, keyword=request.keyword)
                if d.owner not in revoked
            ]
        except AllmendeError as err:
            await abort(context, err)
        return catalog_pb2.ListDatasetsResponse(datasets=datasets)

    async def GetDataset(
        self, request: catalog_pb2.GetDatasetRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.DatasetDescriptor:
        try:
            self._check(context)
            self.revocations.check(request.owner)
            return self.store.catalog_entry(request.owner, request.dataset)
        except AllmendeError as err:
            await abort(context, err)
            raise  # unreachable: abort raises


_Req = TypeVar("_Req", query_pb2.QueryRequest, query_pb2.AggregateRequest)
_Resp = TypeVar("_Resp", query_pb2.QueryResponse, query_pb2.AggregateResponse)


class QueryServicer(query_pb2_grpc.QueryServiceServicer):
    """Answers for own datasets (OwnerService) and forwards our own services' other requests.

    A revoked caller is refused, on the owner's side and on the forwarding side, and so is a
    request to forward to a revoked owner; their open streams end when the revocation arrives.
    """

    def __init__(
        self,
        owner_service: OwnerService,
        forwarder: Forwarder,
        *,
        member: str,
        cluster: str,
        revocations: Revocations | None = None,
    ) -> None:
        self.owner_service = owner_service
        self.forwarder = forwarder
        self.member = member
        self.cluster = cluster
        self.revocations = revocations or Revocations()

    def _parties(self, caller: Caller, owner: str, here: bool) -> tuple[str, ...]:
        """The members whose revocation ends this call: the caller, and the owner we forward to."""
        return (caller.member,) if here else (caller.member, owner)

    def _route(self, caller: Caller, owner: str, dataset: str) -> bool:
        """True to answer here, False to forward; raises NotOwner for third-party requests."""
        if owner == self.member:
            return True
        if caller.member == self.member and caller.cluster == self.cluster:
            return False
        raise NotOwner(
            f"the gateway of {self.member} answers only for its own datasets; "
            f"{caller.member} asked for {owner}/{dataset} — ask its owner's gateway"
        )

    def _admit(
        self,
        caller: Caller,
        action: str,
        request: query_pb2.QueryRequest | query_pb2.AggregateRequest | query_pb2.SubscribeRequest,
        *,
        check_parties: bool = True,
    ) -> bool:
        """Route the call (True: answer here) and refuse it when a party is revoked. The owner
        records its refusal of a revoked caller in its audit log, as any other refusal.
        Raises MemberRevoked, NotOwner, AuditUnavailable."""
        try:
            self.revocations.check(caller.member)
        except MemberRevoked as err:
            if request.owner == self.member:
                self.owner_service.audit_refusal(caller, action, request, err)
            raise
        here = self._route(caller, request.owner, request.dataset)
        if check_parties:
            self.revocations.check(*self._parties(caller, request.owner, here))
        return here

    async def Query(
        self, request: query_pb2.QueryRequest, context: grpc.aio.ServicerContext
    ) -> query_pb2.QueryResponse | bytes:
        """A page: serialized here for own datasets (see ``add_query_service``), the owner's
        answer when forwarded."""
        return await self._unary(
            "query", request, context, self.owner_service.query_wire, self.forwarder.query
        )

    async def Aggregate(
        self, request: query_pb2.AggregateRequest, context: grpc.aio.ServicerContext
    ) -> query_pb2.AggregateResponse | bytes:
        return await self._unary(
            "aggregate", request, context, self.owner_service.aggregate, self.forwarder.aggregate
        )

    async def _unary(
        self,
        action: str,
        request: _Req,
        context: grpc.aio.ServicerContext,
        owned: Callable[[Caller, _Req], _Resp | bytes],
        forwarded: Callable[[Caller, _Req], Awaitable[_Resp]],
    ) -> _Resp | bytes:
        """Answer one call here (own dataset) or forward it; errors become statuses."""
        try:
            caller = authenticate(context)
            if self._admit(caller, action, request):
                return owned(caller, request)
            return await forwarded(caller, request)
        except UpstreamError as up:
            await relay_upstream_error(context, up.rpc_error)
        except AllmendeError as err:
            await abort(context, err)
        raise AssertionError("unreachable: abort raises")

    async def Subscribe(
        self, request: query_pb2.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> None:
        """Change events, written as wire bytes (see ``add_query_service``)."""
        await self._stream(request, context, event_stream, self.forwarder.subscribe)

    async def SubscribeBatches(
        self, request: query_pb2.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> None:
        """Change batches, written as wire bytes (see ``add_query_service``)."""
        await self._stream(request, context, batch_stream, self.forwarder.subscribe_batches)

    async def _stream(
        self,
        request: query_pb2.SubscribeRequest,
        context: grpc.aio.ServicerContext,
        owned: Callable[[OwnerService, Caller, query_pb2.SubscribeRequest], Messages],
        forwarded: Callable[[Caller, query_pb2.SubscribeRequest], Messages],
    ) -> None:
        """Answer or forward one stream; each write awaits the caller's flow control, and
        the next messages are produced only after it, so a slow caller is never buffered for."""
        try:
            caller = authenticate(context)
            here = self._admit(caller, "subscribe", request, check_parties=False)
            guard = self.revocations.guard(*self._parties(caller, request.owner, here))
            if here:
                stream = owned(self.owner_service, caller, request)
            else:
                stream = forwarded(caller, request)
            async with aclosing(stream):  # its end is audited now, not when collected
                async for messages in guard.relay(stream):
                    for message in messages:
                        await context.write(message)
        except ExecuteBatchError:
            # The caller went away during a write, before grpc told this handler so (it
            # would log that as an error): nobody is left to answer.
            log.debug("a stream's caller went away during a write")
        except UpstreamError as up:
            await relay_upstream_error(context, up.rpc_error)
        except AllmendeError as err:
            await abort(context, err)


def _wire(response: Message | bytes) -> bytes:
    """A response as it goes on the wire: bytes as they are, a message serialized."""
    if isinstance(response, bytes):
        return response
    return response.SerializeToString()


def add_query_service(servicer: QueryServicer, server: grpc.aio.Server) -> None:
    """Register ``servicer`` as QueryService on ``server``.

    As ``query_pb2_grpc.add_QueryServiceServicer_to_server`` does, except that the streams
    have no response serializer (their servicer methods write the bytes they built) and the
    unary methods' serializer passes bytes (a page spliced from stored rows) through as they
    are.
    """
    service = query_pb2.DESCRIPTOR.services_by_name["QueryService"]
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        behaviour = getattr(servicer, method.name)
        parse = message_factory.GetMessageClass(method.input_type).FromString
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                behaviour, request_deserializer=parse
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                behaviour, request_deserializer=parse, response_serializer=_wire
            )
    # Generic only: grpc.aio serves a registered method handler with more work per call
    # (see MeteredRegistrar.add_registered_method_handlers).
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
