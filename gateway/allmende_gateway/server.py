"""The gateway server: mutual TLS, health, reflection, the Catalog and Query services, the audit
log, the revocations it re-reads from its town's store every ``trust_poll_s`` and the policy
bundles it looks for there every ``policy_poll_s``.

Policy: before any bundle is there the gateway decides with its local policy (``policy_dir``
and ``agreements_dir``). Once the node's policy follower has accepted both a cluster bundle
and one of this member's own, the gateway builds an engine from the newest pair and swaps
it in between two calls; a newer accepted pair replaces it the same way. A pair that does
not build is logged and the engine in use stays. With only one of the two bundles the
gateway keeps what it decides with and says so in its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from allmende.config import GatewayConfig, Peer
from allmende.errors import AllmendeError, ConfigError, DatasetNotFound, PolicyError, StoreError
from allmende.event_loops import new_event_loop
from allmende.metrics import GatewayMetrics, MetricsServer
from allmende.policy.bundles import ActivePolicy, BundleRecord, BundleStore
from allmende.store import StoreReader, connect
from allmende.v1 import catalog_pb2, catalog_pb2_grpc, query_pb2
from allmende_gateway.authentication import Revocations
from allmende_gateway.enforcement import Enforcer, PolicyLike
from allmende_gateway.forwarding import Forwarder
from allmende_gateway.masks import mask_key
from allmende_gateway.page_tokens import TokenSigner
from allmende_gateway.servicers import CatalogServicer, QueryServicer, add_query_service
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
    """The owner's local policy: the configured (or bundled) Rego and agreements, decided by
    the embedded engine or, with ``policy_engine = "opa"``, by the OPA server at ``opa_url``.

    Raises PolicyError (AgreementError) naming what is wrong, or naming the OPA URL when
    OPA cannot be reached or refuses a module.
    """
    from allmende.policy import (
        BUNDLED_POLICY_DIR,
        PolicyEngine,
        load_agreements,
        read_policy_sources,
    )

    settings = {"default_max_rows": config.default_max_rows}
    if config.policy_engine != "opa":
        return PolicyEngine.from_paths(
            config.policy_dir or BUNDLED_POLICY_DIR, config.agreements_dir, settings
        )
    from allmende.policy.remote import RemotePolicy

    sources = read_policy_sources(config.policy_dir or BUNDLED_POLICY_DIR, include_tests=False)
    agreements = load_agreements(config.agreements_dir) if config.agreements_dir else []
    return RemotePolicy(config.opa_url, sources, agreements, settings)


def bundle_policy(config: GatewayConfig, active: ActivePolicy) -> PolicyLike:
    """The policy of a verified bundle pair, by the configured engine; its policy_version
    starts with ``active.label``. Raises PolicyError when it does not build."""
    if config.policy_engine == "opa":
        from allmende.policy.remote import RemotePolicy

        return RemotePolicy(
            config.opa_url,
            active.sources,
            active.agreements,
            active.settings,
            version_label=active.label,
        )
    from allmende.policy import PolicyEngine

    return PolicyEngine(
        active.sources,
        active.agreements,
        active.settings,
        origin=active.label,
        version_label=active.label,
    )


def _bundle_name(record: BundleRecord) -> str:
    return f"{record.owner or 'the cluster'}'s bundle v{record.version}"


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
        # What the gateway decides with: "local" or the bundle pair's label; ``policy_note``
        # says why a newer bundle is not used (only one of the pair, or it did not build).
        self.policy_label = "local"
        self.policy_note = ""
        self.policy_switches = 0
        self._policy_task: asyncio.Task | None = None
        self._bundle_conn: sqlite3.Connection | None = None
        self._bundle_ids: tuple[int, int] | None = None
        self._policy_problem = ""
        self._active: ActivePolicy | None = None  # the pair decided with; None: local
        self._audit: Any = None  # an allmende.audit.AuditLog when config.audit_log is set
        # Counted whether or not anyone scrapes; served on config.metrics_listen when set.
        self.metrics = GatewayMetrics(config.member)
        self._metrics_server: MetricsServer | None = None

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

    def _task_ended(self, what: str) -> Any:
        def ended(task: asyncio.Task) -> None:
            if not task.cancelled() and task.exception() is not None:
                # A bug: changes would no longer take effect, so say so loudly.
                log.error(
                    "gateway of %s stopped watching %s",
                    self.config.member,
                    what,
                    exc_info=task.exception(),
                )

        return ended

    # -- policy bundles ------------------------------------------------------------------

    def _bundles(self) -> BundleStore:
        if self._bundle_conn is None:
            self._bundle_conn = connect(self.config.store_path, readonly=True)
        return BundleStore(self._bundle_conn)

    def _close_bundles(self) -> None:
        conn, self._bundle_conn = self._bundle_conn, None
        if conn is not None:
            conn.close()

    def _store_problem(self, exc: StoreError) -> None:
        if str(exc) != self._policy_problem:
            log.warning(
                "gateway of %s cannot read policy bundles (keeping %s): %s",
                self.config.member,
                self.policy_label,
                exc,
            )
            self._policy_problem = str(exc)
        self._close_bundles()

    async def refresh_policy(self) -> bool:
        """Switch to the newest verified bundle pair in the store if it changed; True when
        switched. On this gateway's event loop only (regorus engines are thread-bound).

        Raises nothing: an unreadable store, a missing half of the pair or a pair that
        does not build is logged once, and the policy in use stays.
        """
        try:
            bundles = self._bundles()
            cluster, own = bundles.pair(self.config.member)
            ids = (cluster.id if cluster else 0, own.id if own else 0)
            if ids == self._bundle_ids:
                return False
            active = None
            if cluster is not None and own is not None:
                active = bundles.active(self.config.member)
        except StoreError as exc:
            self._store_problem(exc)
            return False
        self._policy_problem = ""
        self._bundle_ids = ids
        if active is None:
            have = cluster or own
            if have is not None:
                missing = f"{self.config.member}'s bundle" if own is None else "the cluster's"
                self.policy_note = (
                    f"{_bundle_name(have)} is verified, but a decision needs both the "
                    f"cluster's and {self.config.member}'s bundle; {missing} is missing"
                )
                log.warning(
                    "gateway of %s keeps deciding with the %s policy: %s",
                    self.config.member,
                    self.policy_label,
                    self.policy_note,
                )
            return False
        return await self._switch(active)

    async def _switch(self, active: ActivePolicy) -> bool:
        # Built here, on the loop, even for OPA (an HTTP push): no call is decided while the
        # modules on the OPA server are half replaced, and regorus engines are thread-bound.
        started = time.monotonic()
        try:
            new = bundle_policy(self.config, active)
        except PolicyError as exc:
            self.policy_note = f"{active.label} does not build: {exc}"
            log.error(
                "gateway of %s keeps deciding with the %s policy: %s",
                self.config.member,
                self.policy_label,
                self.policy_note,
            )
            if self.config.policy_engine == "opa":
                self._restore_opa()
            return False
        # One assignment between two calls: every decision is made by the old or the new.
        old, self.policy = self.policy, new
        if self._enforcer is not None:
            self._enforcer.policy = new
        previous, self.policy_label = self.policy_label, active.label
        self._active = active
        self.policy_note = ""
        self.policy_switches += 1
        close = getattr(old, "close", None)  # a RemotePolicy's HTTP connections
        if callable(close):
            close()
        log.info(
            "gateway of %s switched from the %s policy to %s (built in %.0f ms)",
            self.config.member,
            previous,
            active.label,
            (time.monotonic() - started) * 1000,
        )
        return True

    def _restore_opa(self) -> None:
        """After a failed push, push what the gateway decides with again: OPA's Policy API
        has no transactions, so the server may hold part of the refused pair."""
        try:
            again = (
                load_policy(self.config)
                if self._active is None
                else bundle_policy(self.config, self._active)
            )
        except PolicyError as exc:
            log.error(
                "gateway of %s could not restore the %s policy on OPA: %s",
                self.config.member,
                self.policy_label,
                exc,
            )
            return
        close = getattr(again, "close", None)
        if callable(close):
            close()

    def _close_audit(self) -> None:
        audit, self._audit = self._audit, None
        if audit is not None:
            try:
                audit.close()  # its final signed checkpoint
            except AllmendeError as exc:
                log.error(
                    "gateway of %s could not close its audit log: %s", self.config.member, exc
                )

    async def _watch_policy(self) -> None:
        while True:
            await asyncio.sleep(self.config.policy_poll_s)
            await self.refresh_policy()

    def _open_audit(self) -> Any:
        """The audit log of ``config.audit_log``, signed with the member's key; None without
        one. Raises ConfigError when there is a log but no signing key."""
        if self.config.audit_log is None:
            return None
        if self.config.keys is None:
            raise ConfigError(
                f"gateway of {self.config.member}",
                [f"audit_log {self.config.audit_log} needs [keys] signing_key to sign checkpoints"],
            )
        from allmende.audit import AuditLog
        from allmende.signing import MemberSigner

        signer = MemberSigner.from_file(self.config.member, self.config.keys.signing_key)
        return AuditLog(self.config.audit_log, signer)

    async def start(self) -> int:
        """Bind the configured address (port 0 picks a free one) and serve; returns the port.

        Raises IdentityError when the TLS files are unusable, AllmendeError when it cannot bind,
        PolicyError when the local policy does not build, ConfigError for an audit log
        without a signing key.
        """
        ca, cert, key = self.config.tls.read()
        if self.policy is None:
            self.policy = load_policy(self.config)
        self._audit = self._open_audit()
        try:
            return await self._serve(self.policy, ca, cert, key)
        except BaseException:
            self._close_audit()
            if self._metrics_server is not None:
                self._metrics_server.stop()
                self._metrics_server = None
            raise

    async def _serve(self, policy: PolicyLike, ca: bytes, cert: bytes, key: bytes) -> int:
        server_creds = grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=True
        )
        channel_creds = grpc.ssl_channel_credentials(ca, key, cert)
        self._forwarder = Forwarder(channel_creds, self.config.peers, self._catalog_peer)
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        # Services are registered through the registrar, which wraps each handler once to
        # measure it: an interceptor would add an await and a handler lookup to every call.
        registrar = self.metrics.registrar(server)
        # One Enforcer for the gateway's life: a policy swap keeps its cached hash salts.
        enforcer = self._enforcer = Enforcer(
            policy,
            owner=self.config.member,
            cluster=self.config.cluster,
            mask_key=mask_key(self.config),
        )
        if self._owns_policy:
            await self.refresh_policy()  # a verified bundle pair already there: decide with it
        owner_service = OwnerService(
            self._store,
            enforcer,
            TokenSigner(),
            owner=self.config.member,
            max_page_size=self.config.max_page_size,
            poll_s=self.config.subscribe_poll_s,
            revocations=self.revocations,
            # Every decision is counted on its way into the audit log (if there is one).
            auditor=self.metrics.audit_sink(self._audit),
        )
        catalog_pb2_grpc.add_CatalogServiceServicer_to_server(
            CatalogServicer(self._store, self.config.cluster, self.revocations), registrar
        )
        add_query_service(
            QueryServicer(
                owner_service,
                self._forwarder,
                member=self.config.member,
                cluster=self.config.cluster,
                revocations=self.revocations,
            ),
            registrar,
        )
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, registrar)
        reflection.enable_server_reflection(SERVICE_NAMES, registrar)
        try:
            self.port = server.add_secure_port(self.config.listen, server_creds)
        except RuntimeError as exc:
            raise AllmendeError(f"gateway cannot listen on {self.config.listen}: {exc}") from exc
        if not self.port:
            raise AllmendeError(f"gateway cannot listen on {self.config.listen}")
        self.refresh_revocations()  # before the first call is answered
        if self.config.metrics_listen:
            self._metrics_server = MetricsServer(self.metrics.registry, self.config.metrics_listen)
        await server.start()
        loop = asyncio.get_running_loop()
        self._trust_task = loop.create_task(self._watch_trust())
        self._trust_task.add_done_callback(self._task_ended("revocations"))
        if self._owns_policy:
            self._policy_task = loop.create_task(self._watch_policy())
            self._policy_task.add_done_callback(self._task_ended("policy bundles"))
        for name in ("", *SERVICE_NAMES[:2]):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._server = server
        log.info("gateway of %s serving on %s", self.config.member, self.address)
        return self.port

    async def stop(self, grace_s: float = 1.0) -> None:
        for task in (self._trust_task, self._policy_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._trust_task = self._policy_task = None
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None
        if self._forwarder is not None:
            await self._forwarder.close()
        if self._metrics_server is not None:
            self._metrics_server.stop()
            self._metrics_server = None
        self._store.close()
        self._close_bundles()
        self._close_audit()
        if self._owns_policy:
            # Drop the engine here, on the loop's thread: regorus engines are thread-bound.
            close = getattr(self.policy, "close", None)  # a RemotePolicy's HTTP connections
            if callable(close):
                close()
            self.policy = None
            if self._enforcer is not None:
                self._enforcer.policy = None  # type: ignore[assignment]

    @property
    def metrics_url(self) -> str:
        """http://host:port/metrics, or "" when the gateway serves no metrics."""
        return self._metrics_server.url if self._metrics_server is not None else ""

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


class GatewayThread:
    """Runs a Gateway on its own event loop in a background thread (tests, demo, CLI)."""

    def __init__(self, config: GatewayConfig, **kwargs: Any) -> None:
        self.gateway = Gateway(config, **kwargs)
        self._loop = new_event_loop(config.event_loop)
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
