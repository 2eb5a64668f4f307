"""The gateway server: mutual TLS, health, reflection, and the Catalog and Query services."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from allmende.config import GatewayConfig, Peer
from allmende.errors import AllmendeError, DatasetNotFound
from allmende.store import StoreReader
from allmende.v1 import catalog_pb2, catalog_pb2_grpc, query_pb2, query_pb2_grpc
from allmende_gateway.enforcement import Enforcer, PolicyLike
from allmende_gateway.forwarding import Forwarder
from allmende_gateway.page_tokens import TokenSigner
from allmende_gateway.servicers import CatalogServicer, QueryServicer
from allmende_gateway.serving import OwnerService

__all__ = ["Gateway", "GatewayThread", "load_policy"]

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"].full_name,
    query_pb2.DESCRIPTOR.services_by_name["QueryService"].full_name,
    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
    reflection.SERVICE_NAME,
)


def load_policy(config: GatewayConfig) -> PolicyLike:
    """The owner's policy engine from the configured (or bundled) Rego and agreements."""
    from allmende.policy import BUNDLED_POLICY_DIR, PolicyEngine

    return PolicyEngine.from_paths(
        config.policy_dir or BUNDLED_POLICY_DIR,
        config.agreements_dir,
        {"default_max_rows": config.default_max_rows},
    )


class Gateway:
    """One town's gateway. ``start`` binds and serves; ``stop`` drains within a grace period."""

    def __init__(self, config: GatewayConfig, *, policy: PolicyLike | None = None) -> None:
        self.config = config
        # A regorus engine may only be used on the thread that created it, so the default
        # policy is loaded in start(), on the event loop's thread.
        self.policy = policy
        self._owns_policy = policy is None
        self._enforcer: Enforcer | None = None
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._forwarder: Forwarder | None = None
        self._store = StoreReader(config.store_path)

    @property
    def address(self) -> str:
        host = self.config.listen.rpartition(":")[0] or "127.0.0.1"
        return f"{host}:{self.port}"

    def _catalog_peer(self, owner: str, dataset: str) -> Peer | None:
        try:
            desc = self._store.catalog_entry(owner, dataset)
        except DatasetNotFound:
            return None
        return Peer(address=desc.gateway_address, cluster=desc.cluster or self.config.cluster)

    async def start(self) -> int:
        """Bind the configured address (port 0 picks a free one) and serve; returns the port.

        Raises IdentityError when the TLS files are unusable, AllmendeError when it cannot bind.
        """
        ca, cert, key = self.config.tls.read()
        if self.policy is None:
            self.policy = load_policy(self.config)
        server_creds = grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=True
        )
        channel_creds = grpc.ssl_channel_credentials(ca, key, cert)
        self._forwarder = Forwarder(channel_creds, self.config.peers, self._catalog_peer)
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        enforcer = self._enforcer = Enforcer(
            self.policy, owner=self.config.member, cluster=self.config.cluster
        )
        owner_service = OwnerService(
            self._store,
            enforcer,
            TokenSigner(),
            owner=self.config.member,
            max_page_size=self.config.max_page_size,
            poll_s=self.config.subscribe_poll_s,
        )
        catalog_pb2_grpc.add_CatalogServiceServicer_to_server(
            CatalogServicer(self._store, self.config.cluster), server
        )
        query_pb2_grpc.add_QueryServiceServicer_to_server(
            QueryServicer(
                owner_service,
                self._forwarder,
                member=self.config.member,
                cluster=self.config.cluster,
            ),
            server,
        )
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(SERVICE_NAMES, server)
        try:
            self.port = server.add_secure_port(self.config.listen, server_creds)
        except RuntimeError as exc:
            raise AllmendeError(f"gateway cannot listen on {self.config.listen}: {exc}") from exc
        if not self.port:
            raise AllmendeError(f"gateway cannot listen on {self.config.listen}")
        await server.start()
        for name in ("", *SERVICE_NAMES[:2]):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._server = server
        log.info("gateway of %s serving on %s", self.config.member, self.address)
        return self.port

    async def stop(self, grace_s: float = 1.0) -> None:
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None
        if self._forwarder is not None:
            await self._forwarder.close()
        self._store.close()
        if self._owns_policy:
            # Drop the engine here, on the loop's thread: regorus engines are thread-bound.
            self.policy = None
            if self._enforcer is not None:
                self._enforcer.policy = None  # type: ignore[assignment]

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


class GatewayThread:
    """Runs a Gateway on its own event loop in a background thread (tests, demo, CLI)."""

    def __init__(self, config: GatewayConfig, **kwargs: Any) -> None:
        self.gateway = Gateway(config, **kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, daemon=True, name=f"gateway-{config.member}"
        )

    @property
    def address(self) -> str:
        return self.gateway.address

    def start(self, timeout_s: float = 10.0) -> GatewayThread:
        """Start serving; raises what Gateway.start raises."""
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self.gateway.start(), self._loop)
        fut.result(timeout_s)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._thread.is_alive():
            fut = asyncio.run_coroutine_threadsafe(self.gateway.stop(), self._loop)
            try:
                fut.result(timeout_s)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(timeout_s)
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> GatewayThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
