"""The policy follower: checks the signed policy bundles on ``<prefix>.policy`` and records them.

It follows the policy topic (:class:`~allmende_node.topic_follower.TopicFollower` reads it
and resumes) and checks the cluster's bundle and this member's own bundle once, on arrival:
the signature and signer (:func:`allmende.policy.bundles.verify_bundle`), a version above
the accepted one of the same signer (an older or equal one is a replay), and that the
newest cluster bundle and own bundle together compile into a policy engine that decides a
sample request. Every checked bundle is recorded in the store's ``policy_bundles`` table,
accepted or refused with the reason; a refused one is also quarantined, logged (one line
per kind at most every 10 s) and counted. The gateway switches to the newest accepted pair
(``policy_poll_s``); a refused bundle changes nothing it decides with.

Other owners' bundles are not this gateway's to enforce: they are counted in ``ignored``
and left alone. Reading the topic again after a broker restart re-delivers the same
bundles; an equal version with the same content changes nothing.
"""

from __future__ import annotations

import logging
import threading
from typing import Unpack

from cryptography import x509

from allmende.backbone import Topics, open_envelope
from allmende.config import NodeConfig
from allmende.errors import BackboneError, PolicyError
from allmende.policy.bundles import (
    BundleContent,
    BundleRefused,
    BundleStore,
    bundled_baseline,
    check_compiles,
    combine,
    verify_bundle,
)
from allmende.trust import TrustStore
from allmende.v1 import backbone_pb2
from allmende_node.outbox import StoreSource, write_transaction
from allmende_node.quarantine import Arrival, Quarantine
from allmende_node.signing_keys import verifying_ca_certificate
from allmende_node.topic_follower import FollowerOptions, TopicFollower

__all__ = ["PolicyFollower"]

log = logging.getLogger(__name__)


class PolicyFollower(TopicFollower):
    """Follows the policy topic into one store. Use from one thread; ``run`` is its loop.

    ``rejected`` counts refused bundles by kind (``allmende.policy.bundles.REFUSAL_KINDS``),
    ``applied`` the accepted ones, ``ignored`` other owners' bundles and ``read`` every
    message read. ``caught_up`` is set once the topic was read to its end.
    """

    role = "policy follower"

    def __init__(
        self,
        config: NodeConfig,
        store: StoreSource,
        *,
        ca_certificate: x509.Certificate | None = None,
        **options: Unpack[FollowerOptions],
    ) -> None:
        """Raises IdentityError when no CA certificate is given and ``config.keys`` names
        none or an unreadable one."""
        if ca_certificate is None:
            ca_certificate = verifying_ca_certificate(config, "policy bundles")
        super().__init__(config, store, Topics(config.backbone.topic_prefix).policy, **options)
        self.ca_certificate = ca_certificate
        self.ignored = 0
        self.caught_up = threading.Event()

    def _accept(self, arrival: Arrival) -> bool:
        """Check and record one bundle; True when it was accepted. Raises StoreError."""
        raw = arrival.value or b""
        env: backbone_pb2.Envelope | None = None
        bundle: backbone_pb2.PolicyBundle | None = None
        try:
            env, bundle = open_envelope(raw, backbone_pb2.PolicyBundle)
        except BackboneError as exc:
            return self._refuse(arrival, None, None, None, BundleRefused("undecodable", str(exc)))
        if bundle.owner and bundle.owner != self.config.member:
            self.ignored += 1  # another gateway's rules: not ours to check or enforce
            return False
        bundles = BundleStore(self._conn)
        content: BundleContent | None = None
        try:
            content = verify_bundle(
                raw,
                cluster=self.config.cluster,
                ca_certificate=self.ca_certificate,
                trust=TrustStore(self._conn, self.config.cluster, self.ca_certificate),
                key=arrival.key,
            )
            if not self._is_newer(bundles, content):
                return False
            self._compiles(bundles, content)
        except BundleRefused as refusal:
            return self._refuse(arrival, env, bundle, content, refusal)
        with write_transaction(self._conn, f"recording a policy bundle of {arrival.where}"):
            bundles.add(raw, "accepted", "", content, received_at=arrival.received_at)
            self._bookkeep(self._conn, arrival)
        self.applied += 1
        log.info(
            "%s accepted the %s bundle version %d%s",
            self.what,
            content.owner or "cluster",
            content.version,
            f" (rollback to version {content.rollback_of})" if content.rollback_of else "",
        )
        return True

    def _is_newer(self, bundles: BundleStore, content: BundleContent) -> bool:
        """False for a re-delivery (same version, same content); raises BundleRefused for a
        replay (a lower version, or the accepted version with other content)."""
        newest = bundles.newest(content.kind, content.owner)
        if newest is None or content.version > newest.version:
            return True
        what = f"{content.owner or 'cluster'} bundle v{content.version}"
        if content.version == newest.version and content.sha256 == newest.sha256:
            return False
        raise BundleRefused(
            "replayed",
            f"{what} is not newer than the accepted version {newest.version}"
            + (" (same version, other content)" if content.version == newest.version else ""),
        )

    def _compiles(self, bundles: BundleStore, content: BundleContent) -> None:
        """Raise BundleRefused unless ``content`` with the newest accepted bundle of the other
        kind compiles and decides a sample request. An own bundle without a cluster bundle
        yet is compiled with the bundled policies."""
        if content.kind == "cluster":
            own = bundles.newest("owner", self.config.member)
            partner = None if own is None else bundles.content(own)
            active = combine(content, partner)
        else:
            cluster = bundles.newest("cluster")
            if cluster is not None:
                active = combine(bundles.content(cluster), content)
            else:
                active = combine(self._bundled_baseline(content), content)
        try:
            check_compiles(active)
        except PolicyError as exc:
            raise BundleRefused(
                "does-not-compile", f"{active.label} does not compile: {exc}"
            ) from exc

    def _bundled_baseline(self, content: BundleContent) -> BundleContent:
        try:
            return bundled_baseline(content.cluster)
        except PolicyError as exc:
            raise BundleRefused(
                "does-not-compile",
                f"{content.owner} bundle v{content.version} cannot be checked before the "
                f"cluster's bundle arrives: {exc}",
            ) from exc

    def _refuse(
        self,
        arrival: Arrival,
        env: backbone_pb2.Envelope | None,
        bundle: backbone_pb2.PolicyBundle | None,
        content: BundleContent | None,
        refusal: BundleRefused,
    ) -> bool:
        """Record, quarantine, count and log a refused bundle. Raises StoreError."""
        reason = f"{refusal.kind}: {refusal}"
        conn = self._conn
        with write_transaction(conn, f"refusing a policy bundle of {arrival.where}"):
            BundleStore(conn).add(
                arrival.value or b"",
                "refused",
                reason,
                content,
                received_at=arrival.received_at,
                env=env,
                bundle=bundle,
            )
            Quarantine(conn).add(arrival, env.author if env is not None else "", reason)
            self._bookkeep(conn, arrival)
        self.rejections.record(refusal.kind, arrival.where, reason)
        return False

    def _read_to_end(self) -> None:
        self.caught_up.set()
