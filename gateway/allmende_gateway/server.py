"""The gateway server: mutual TLS, health, reflection, the Catalog and Query services, and the
revocations it re-reads from its town's store every ``trust_poll_s``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from allmende.config import GatewayConfig, Peer
from allmende.errors import AllmendeError, DatasetNotFound, StoreError
from allmende.store import StoreReader
from allmende.v1 import catalog_pb2, catalog_pb2_grpc, query_pb2, query_pb2_grpc
from allmende_gateway.authentication import Revocations
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
        self.revocations = Revocations()
        self._trust_task: asyncio.Task | None = None
        self._trust_problem = ""

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

    def refresh_revocations(self) -> list[str]:
        """Re-read the revoked members from the store (the node's trust follower writes them);
        end the calls and streams of the newly revoked. Returns those; raises nothing: while
        the store cannot be read, the last known revocations stay in force."""
        try:
            revoked = self._store.revoked_members()
        except StoreError as exc:
            if str(exc) != self._trust_problem:
                log.warning("gateway of %s cannot read revocations: %s", self.config.member, exc)
                self._trust_problem = str(exc)
            return []
        self._trust_problem = ""
        open_streams = self.revocations.open_streams
        newly = self.revocations.update(revoked)
        for member in newly:
            log.warning(
                "gateway of %s: the cluster CA revoked %s (%s); refusing its calls and ending "
                "its streams (%d open)",
                self.config.member,
                member,
                revoked[member],
                open_streams,
            )
        return newly

    async def _watch_trust(self) -> None:
        # On the loop, not per call: a call only looks the caller up in a dict.
        while True:
            await asyncio.sleep(self.config.trust_poll_s)
            self.refresh_revocations()

    def _trust_task_ended(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            # A bug: revocations would no longer take effect, so say so loudly.
            log.error(
                "gateway of %s stopped watching revocations",
                self.config.member,
                exc_info=task.exception(),
            )

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
            revocations=self.revocations,
        )
        catalog_pb2_grpc.add_CatalogServiceServicer_to_server(
            CatalogServicer(self._store, self.config.cluster, self.revocations), server
        )
        query_pb2_grpc.add_QueryServiceServicer_to_server(
            QueryServicer(
                owner_service,
                self._forwarder,
                member=self.config.member,
                cluster=self.config.cluster,
                revocations=self.revocations,
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
        self.refresh_revocations()  # before the first call is answered
        await server.start()
        self._trust_task = asyncio.get_running_loop().create_task(self._watch_trust())
        self._trust_task.add_done_callback(self._trust_task_ended)
        for name in ("", *SERVICE_NAMES[:2]):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._server = server
        log.info("gateway of %s serving on %s", self.config.member, self.address)
        return self.port

    async def stop(self, grace_s: float = 1.0) -> None:
        if self._trust_task is not None:
            self._trust_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._trust_task
            self._trust_task = None
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
