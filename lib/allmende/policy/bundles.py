"""Signed policy bundles: build, seal and verify them, keep them in the store, read the active pair.

Two kinds travel on ``<prefix>.policy`` (PROTOCOL.md, "Policy bundles"). The cluster's
bundle (key ``cluster``, signed by the CA as ``@ca``) carries the Rego library and baseline
and the settings; an owner's bundle (key ``owner/<member>``, signed by that member) carries
its sharing agreements, each naming it as provider, and any Rego rules of its own. A gateway
decides only with one of each: the newest accepted cluster bundle and the newest accepted
bundle of its own member. The node's policy follower checks every bundle once
(:func:`verify_bundle`, then the version and whether the pair compiles) and records it,
accepted or refused with the reason, in the store's ``policy_bundles`` table
(:class:`BundleStore`); the gateway and ``allmende policy explain`` read the active pair
back with :func:`active_policy`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from google.protobuf.timestamp_pb2 import Timestamp

from allmende.backbone import Signer, open_envelope, seal
from allmende.errors import BackboneError, PolicyError, StoreError
from allmende.identity import NAME_PATTERN
from allmende.signing import CA_AUTHOR, SignatureInvalid, verify_ca, verify_member
from allmende.trust import TrustStore, UnknownMember
from allmende.v1 import backbone_pb2

__all__ = [
    "CLUSTER_KEY",
    "REFUSAL_KINDS",
    "ActivePolicy",
    "BundleContent",
    "BundleRecord",
    "BundleRefused",
    "BundleStore",
    "active_policy",
    "build_cluster_bundle",
    "build_owner_bundle",
    "bundle_key",
    "bundle_signer",
    "bundled_baseline",
    "check_compiles",
    "combine",
    "read_bundle",
    "seal_bundle",
    "verify_bundle",
]

CLUSTER_KEY = b"cluster"
_SETTINGS = ("default_max_rows",)

# What a refused bundle is counted as; the recorded reason starts with the kind.
REFUSAL_KINDS = (
    "undecodable",
    "foreign-cluster",
    "wrong-key",
    "wrong-signer",
    "unsigned",
    "bad-signature",
    "unknown-member",
    "revoked-member",
    "invalid",
    "foreign-agreement",
    "replayed",
    "does-not-compile",
)


class BundleRefused(PolicyError):
    """A policy bundle failed a check; ``kind`` is one of REFUSAL_KINDS."""

    reason = "BUNDLE_REFUSED"

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def bundle_key(owner: str) -> bytes:
    """The topic key of a bundle: ``cluster``, or ``owner/<member>`` for an owner's."""
    return f"owner/{owner}".encode() if owner else CLUSTER_KEY


def bundle_signer(bundle: backbone_pb2.PolicyBundle) -> str:
    """Who must sign ``bundle``: the CA (``@ca``) for the cluster's, else its owner."""
    return bundle.owner or CA_AUTHOR


def _timestamp(when: dt.datetime | None) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when or dt.datetime.now(dt.UTC))
    return stamp


def _check_settings(settings: Mapping[str, Any], where: str) -> dict[str, Any]:
    problems = [f"unknown setting {k!r}" for k in settings if k not in _SETTINGS]
    rows = settings.get("default_max_rows")
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 1):
        problems.append(f"default_max_rows must be a positive whole number, not {rows!r}")
    if problems:
        raise PolicyError(f"{where}: " + "; ".join(problems))
    return dict(settings)


def _modules(sources: Mapping[str, str]) -> list[backbone_pb2.PolicyModule]:
    return [backbone_pb2.PolicyModule(name=n, source=s) for n, s in sorted(sources.items())]


def build_cluster_bundle(
    cluster: str,
    version: int,
    sources: Mapping[str, str],
    settings: Mapping[str, Any] | None = None,
    *,
    comment: str = "",
    rollback_of: int = 0,
    published_at: dt.datetime | None = None,
) -> backbone_pb2.PolicyBundle:
    """The cluster's bundle: Rego ``sources`` (name → text) and ``settings``.

    Raises PolicyError when there is no Rego, the version is below 1 or a setting is wrong.
    """
    if version < 1:
        raise PolicyError(f"a bundle's version starts at 1, not {version}")
    if not sources:
        raise PolicyError("the cluster's bundle needs Rego policies; none given")
    return backbone_pb2.PolicyBundle(
        cluster=cluster,
        version=version,
        modules=_modules(sources),
        settings_json=json.dumps(
            _check_settings(settings or {}, "cluster bundle settings"), sort_keys=True
        ),
        published_at=_timestamp(published_at),
        comment=comment,
        rollback_of=rollback_of,
    )


def build_owner_bundle(
    cluster: str,
    owner: str,
    version: int,
    agreements: Sequence[Mapping[str, Any]],
    sources: Mapping[str, str] | None = None,
    *,
    comment: str = "",
    rollback_of: int = 0,
    published_at: dt.datetime | None = None,
) -> backbone_pb2.PolicyBundle:
    """An owner's bundle: its ``agreements`` (as ``load_agreements`` returns them) and any
    extra Rego ``sources``.

    Raises PolicyError when the version is below 1 or an agreement names another provider
    (an owner may only sign rules for its own datasets).
    """
    if version < 1:
        raise PolicyError(f"a bundle's version starts at 1, not {version}")
    foreign = [
        f"{a.get('agreement')} (provider {a.get('provider')})"
        for a in agreements
        if a.get("provider") != owner
    ]
    if foreign:
        raise PolicyError(
            f"{owner} can only publish agreements for its own datasets; "
            f"these name another provider: {', '.join(foreign)}"
        )
    try:
        text = json.dumps(list(agreements), sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise PolicyError(f"agreements are not plain JSON values: {exc}") from exc
    return backbone_pb2.PolicyBundle(
        cluster=cluster,
        owner=owner,
        version=version,
        modules=_modules(sources or {}),
        agreements_json=text,
        published_at=_timestamp(published_at),
        comment=comment,
        rollback_of=rollback_of,
    )


def seal_bundle(bundle: backbone_pb2.PolicyBundle, signer: Signer) -> bytes:
    """The bundle in an Envelope authored by its signer (``@ca`` or the owner), signed.

    Raises IdentityError when ``signer`` is not that author.
    """
    return seal(bundle_signer(bundle), bundle.cluster, bundle, signer=signer)


@dataclass(frozen=True)
class BundleContent:
    """A bundle's checked content: ``kind`` is "cluster" or "owner"."""

    kind: str
    signer: str
    owner: str
    cluster: str
    version: int
    modules: dict[str, str]
    agreements: list[dict[str, Any]]
    settings: dict[str, Any]
    comment: str
    rollback_of: int
    published_at: str
    sha256: str


def _published_at(bundle: backbone_pb2.PolicyBundle) -> str:
    if not bundle.HasField("published_at"):
        return ""
    moment = bundle.published_at.ToDatetime(tzinfo=dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def read_bundle(env: backbone_pb2.Envelope, bundle: backbone_pb2.PolicyBundle) -> BundleContent:
    """Check what a bundle holds (not who signed it). Raises BundleRefused: ``invalid``
    (bad version, duplicate or empty module names, malformed JSON, agreements in the cluster's
    bundle or settings in an owner's) or ``foreign-agreement`` (an owner's agreement naming
    another provider)."""
    owner = bundle.owner
    what = f"{owner or 'cluster'} bundle v{bundle.version}"
    if bundle.version < 1:
        raise BundleRefused("invalid", f"{what}: version must be 1 or higher")
    modules: dict[str, str] = {}
    for module in bundle.modules:
        if not module.name or module.name in modules:
            raise BundleRefused(
                "invalid", f"{what}: module name {module.name!r} is empty or used twice"
            )
        modules[module.name] = module.source
    agreements: list[dict[str, Any]] = []
    settings: dict[str, Any] = {}
    if owner:
        if bundle.settings_json:
            raise BundleRefused("invalid", f"{what}: only the cluster's bundle carries settings")
        try:
            agreements = json.loads(bundle.agreements_json or "[]")
        except ValueError as exc:
            raise BundleRefused("invalid", f"{what}: agreements are not JSON: {exc}") from exc
        if not (isinstance(agreements, list) and all(isinstance(a, dict) for a in agreements)):
            raise BundleRefused("invalid", f"{what}: agreements must be a JSON list of objects")
        for a in agreements:
            if a.get("provider") != owner:
                raise BundleRefused(
                    "foreign-agreement",
                    f"{what}: agreement {a.get('agreement')!r} names provider "
                    f"{a.get('provider')!r}; {owner} may only sign rules for its own datasets",
                )
    else:
        if bundle.agreements_json:
            raise BundleRefused(
                "invalid", f"{what}: agreements belong in owners' bundles, not the cluster's"
            )
        if not modules:
            raise BundleRefused("invalid", f"{what}: the cluster's bundle holds no Rego")
        try:
            settings = json.loads(bundle.settings_json or "{}")
            if not isinstance(settings, dict):
                raise ValueError("not a JSON object")
            settings = _check_settings(settings, what)
        except (ValueError, PolicyError) as exc:
            raise BundleRefused("invalid", f"{what}: bad settings: {exc}") from exc
    return BundleContent(
        kind="owner" if owner else "cluster",
        signer=bundle_signer(bundle),
        owner=owner,
        cluster=bundle.cluster,
        version=int(bundle.version),
        modules=modules,
        agreements=agreements,
        settings=settings,
        comment=bundle.comment,
        rollback_of=int(bundle.rollback_of),
        published_at=_published_at(bundle),
        sha256=hashlib.sha256(env.payload).hexdigest(),
    )


def verify_bundle(
    raw: bytes,
    *,
    cluster: str,
    ca_certificate: x509.Certificate,
    trust: TrustStore | None,
    key: bytes | None = None,
) -> BundleContent:
    """Verify one bundle message as read from ``<prefix>.policy`` (``key`` its topic key).

    Checks, in order: it decodes; the key fits the bundle; the author is the bundle's signer
    (``@ca`` for the cluster's, the owner for an owner's); the signature verifies with the
    CA certificate or with the key the CA registered for the owner in ``trust`` (not
    revoked), so nothing unsigned is believed; it is of our ``cluster``; the content
    (:func:`read_bundle`). Not checked here: the version against what was accepted, and
    compiling. Raises BundleRefused naming the kind of failure; StoreError when the trust
    table cannot be read.
    """
    try:
        env, bundle = open_envelope(raw, backbone_pb2.PolicyBundle)
    except BackboneError as exc:
        raise BundleRefused("undecodable", str(exc)) from exc
    what = f"{bundle.owner or 'cluster'} bundle v{bundle.version}"
    if bundle.owner and not NAME_PATTERN.fullmatch(bundle.owner):
        raise BundleRefused("invalid", f"bundle owner {bundle.owner!r} is not a member name")
    if key is not None and key != bundle_key(bundle.owner):
        raise BundleRefused(
            "wrong-key",
            f"{what} was sent under key {key.decode(errors='replace')!r}, "
            f"expected {bundle_key(bundle.owner).decode()!r}",
        )
    signer = bundle_signer(bundle)
    if env.author != signer:
        raise BundleRefused(
            "wrong-signer",
            f"{what} is signed by {env.author!r}; only {signer!r} may sign it",
        )
    if not env.signature:
        raise BundleRefused("unsigned", f"{what} by {signer} is not signed")
    try:
        if signer == CA_AUTHOR:
            verify_ca(env, ca_certificate)
        else:
            if trust is None:
                raise UnknownMember(f"no trust table to look up {signer}'s key")
            keys = trust.member(signer)
            if keys.revoked:
                raise BundleRefused(
                    "revoked-member",
                    f"{what} is signed by revoked member {signer} ({keys.revoked})",
                )
            verify_member(env, keys.signing_public_key)
    except UnknownMember as exc:
        raise BundleRefused("unknown-member", f"{what}: {exc}") from exc
    except SignatureInvalid as exc:
        raise BundleRefused(
            "bad-signature",
            f"{what}: the signature does not verify with {signer}'s key "
            "(forged, or altered after signing)",
        ) from exc
    if env.cluster != cluster or bundle.cluster != cluster:
        raise BundleRefused(
            "foreign-cluster",
            f"{what} is for cluster {bundle.cluster or env.cluster!r}; this is {cluster!r}",
        )
    return read_bundle(env, bundle)


@dataclass(frozen=True)
class ActivePolicy:
    """What a gateway decides with: one cluster bundle and one owner's bundle, combined.

    ``sources`` are the cluster's Rego modules and the owner's (as ``owners/<member>/<name>``),
    ``label`` names the pair (``cluster-v3+kaiserslautern-v5``).
    """

    sources: dict[str, str]
    agreements: list[dict[str, Any]]
    settings: dict[str, Any]
    label: str
    owner: str = ""
    cluster_version: int = 0
    owner_version: int = 0
    record_ids: tuple[int, int] = (0, 0)


def combine(
    cluster: BundleContent,
    owner: BundleContent | None,
    *,
    record_ids: tuple[int, int] = (0, 0),
) -> ActivePolicy:
    """The cluster's bundle and an owner's (None: no agreements, no owner rules) as one
    policy."""
    sources = dict(cluster.modules)
    agreements: list[dict[str, Any]] = []
    label = f"cluster-v{cluster.version}"
    if owner is not None:
        sources.update({f"owners/{owner.owner}/{n}": s for n, s in owner.modules.items()})
        agreements = list(owner.agreements)
        label += f"+{owner.owner}-v{owner.version}"
    return ActivePolicy(
        sources=sources,
        agreements=agreements,
        settings=dict(cluster.settings),
        label=label,
        owner=owner.owner if owner is not None else "",
        cluster_version=cluster.version,
        owner_version=owner.version if owner is not None else 0,
        record_ids=record_ids,
    )


@dataclass(frozen=True)
class BundleRecord:
    """One row of ``policy_bundles``: a bundle the policy follower checked."""

    id: int
    kind: str
    signer: str
    owner: str
    version: int
    status: str
    reason: str
    sha256: str
    rollback_of: int
    comment: str
    published_at: str
    received_at: str

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


_COLUMNS = (
    "id, kind, signer, owner, version, status, reason, sha256, rollback_of, comment, "
    "published_at, received_at"
)


class BundleStore:
    """The store's ``policy_bundles`` table over one connection (writer or read-only)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def add(
        self,
        raw: bytes,
        status: str,
        reason: str,
        content: BundleContent | None,
        *,
        received_at: str,
        env: backbone_pb2.Envelope | None = None,
        bundle: backbone_pb2.PolicyBundle | None = None,
    ) -> int:
        """Record a checked bundle (``content`` when it was readable, else what ``env`` and
        ``bundle`` tell). Joins the caller's transaction. Raises StoreError."""
        if content is not None:
            kind, signer, owner, version = (
                content.kind,
                content.signer,
                content.owner,
                content.version,
            )
            extra = (content.sha256, content.rollback_of, content.comment, content.published_at)
        else:
            kind = "" if bundle is None else ("owner" if bundle.owner else "cluster")
            signer = "" if env is None else env.author
            owner = "" if bundle is None else bundle.owner
            version = 0 if bundle is None else int(bundle.version)
            extra = (hashlib.sha256(raw).hexdigest(), 0, "", "")
        try:
            cur = self.conn.execute(
                "INSERT INTO policy_bundles (kind, signer, owner, version, status, reason, "
                "sha256, rollback_of, comment, published_at, envelope, received_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (kind, signer, owner, version, status, reason, *extra, raw, received_at),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot record a policy bundle: {exc}") from exc
        return int(cur.lastrowid or 0)

    def _select(self, where: str, args: Sequence[Any]) -> list[BundleRecord]:
        try:
            rows = self.conn.execute(
                f"SELECT {_COLUMNS} FROM policy_bundles {where}", tuple(args)
            ).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the policy bundles: {exc}") from exc
        return [BundleRecord(*r) for r in rows]

    def records(self) -> list[BundleRecord]:
        """Every recorded bundle, oldest first. Raises StoreError."""
        return self._select("ORDER BY id", ())

    def newest(self, kind: str, owner: str = "") -> BundleRecord | None:
        """The accepted bundle of the highest version of the cluster (``kind`` "cluster") or
        of ``owner``; None when there is none. Raises StoreError."""
        found = self._select(
            "WHERE kind = ? AND owner = ? AND status = 'accepted' ORDER BY version DESC LIMIT 1",
            (kind, owner),
        )
        return found[0] if found else None

    def owners(self) -> list[str]:
        """The owners with an accepted bundle. Raises StoreError."""
        try:
            rows = self.conn.execute(
                "SELECT DISTINCT owner FROM policy_bundles "
                "WHERE kind = 'owner' AND status = 'accepted' ORDER BY owner"
            ).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the policy bundles: {exc}") from exc
        return [r[0] for r in rows]

    def content(self, record: BundleRecord) -> BundleContent:
        """The content of a recorded, accepted bundle. Raises StoreError when its row is gone
        or no longer readable."""
        try:
            row = self.conn.execute(
                "SELECT envelope FROM policy_bundles WHERE id = ?", (record.id,)
            ).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the policy bundles: {exc}") from exc
        if row is None:
            raise StoreError(f"policy bundle {record.id} is no longer in the store")
        try:
            env, bundle = open_envelope(row[0], backbone_pb2.PolicyBundle)
            return read_bundle(env, bundle)
        except (BackboneError, BundleRefused) as exc:
            raise StoreError(f"stored policy bundle {record.id} is unreadable: {exc}") from exc

    def pair(self, owner: str) -> tuple[BundleRecord | None, BundleRecord | None]:
        """The newest accepted cluster bundle and the newest accepted bundle of ``owner``."""
        return self.newest("cluster"), self.newest("owner", owner)

    def active(self, owner: str) -> ActivePolicy | None:
        """The policy a gateway of ``owner`` decides with; None unless both bundles are
        there. Raises StoreError."""
        cluster, own = self.pair(owner)
        if cluster is None or own is None:
            return None
        return combine(self.content(cluster), self.content(own), record_ids=(cluster.id, own.id))


def bundled_baseline(cluster: str) -> BundleContent:
    """The policies that ship with allmende as a cluster bundle of version 0: what an owner's
    bundle is checked with before the cluster published one. Raises PolicyError."""
    from allmende.policy.bundled import bundled_policy_dir
    from allmende.policy.engine import read_policy_sources

    sources = read_policy_sources(bundled_policy_dir(), include_tests=False)
    return BundleContent("cluster", CA_AUTHOR, "", cluster, 0, sources, [], {}, "", 0, "", "")


def check_compiles(active: ActivePolicy) -> None:
    """Raise PolicyError unless ``active`` compiles and decides a sample request, as a
    gateway would need it to."""
    from allmende.policy.engine import PolicyEngine

    PolicyEngine(
        active.sources,
        active.agreements,
        active.settings,
        origin=active.label,
        evaluator="interpreter",
    )


def active_policy(store_path: str | Path, owner: str | None = None) -> ActivePolicy | None:
    """What the gateway of the town whose store is at ``store_path`` decides with.

    ``owner`` defaults to the one member whose bundles the store holds (a node records only
    its own). None when the store does not exist or lacks the cluster's or the owner's
    bundle (the gateway then decides with its local policy). Raises StoreError when the
    store cannot be read.
    """
    from allmende.store.schema import connect

    path = Path(store_path)
    if not path.exists():
        return None
    conn = connect(path, readonly=True)
    try:
        store = BundleStore(conn)
        if owner is None:
            owners = store.owners()
            if not owners:
                return None
            owner = owners[0]
        return store.active(owner)
    finally:
        conn.close()
