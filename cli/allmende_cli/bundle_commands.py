"""`allmende policy publish|rollback|versions`: signed policy bundles on ``<prefix>.policy``.

An owner (``--config town.toml``) signs its sharing agreements and any Rego of its own with
its member key; the cluster operator (``--cluster --ca-dir DIR --bootstrap HOST:PORT``)
signs the Rego library, the baseline and the settings with the CA key. Each publication
takes the next version of its signer (the highest one on the topic that verifies with the
signer's key, plus one); a rollback republishes an earlier version's content under such a
new version. Before anything is sent the bundle is compiled here, so a steward's mistake is
reported at the desk, not only by every node refusing it.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from allmende.backbone import BackboneProducer, OutgoingMessage, Signer, Topics, open_envelope
from allmende.config import BackboneConfig, TownConfig, load_town_config
from allmende.errors import BackboneError, ConfigError, PolicyError
from allmende.policy.bundles import (
    BundleContent,
    BundleRefused,
    BundleStore,
    build_cluster_bundle,
    build_owner_bundle,
    bundle_key,
    bundled_baseline,
    check_compiles,
    combine,
    read_bundle,
    seal_bundle,
)
from allmende.signing import CA_AUTHOR, SignatureInvalid, verify_ca, verify_member
from allmende.v1 import backbone_pb2
from allmende_cli.tables import render_table
from allmende_node.signing_keys import load_ca_certificate

__all__ = ["TopicBundle", "add_commands", "read_policy_topic"]


@dataclass
class _Author:
    """Who publishes: the cluster (``owner`` empty, the CA) or an owner, and where to."""

    cluster: str
    owner: str
    backbone: BackboneConfig
    signer: Signer
    verify: Callable[[backbone_pb2.Envelope], None]  # raises SignatureInvalid
    ca_certificate: x509.Certificate
    town: TownConfig | None = None

    @property
    def name(self) -> str:
        return f"{self.owner}'s" if self.owner else "the cluster's"


def _backbone(args: argparse.Namespace, command: str) -> BackboneConfig:
    servers = tuple(s.strip() for s in (args.bootstrap or "").split(",") if s.strip())
    if not servers:
        raise ConfigError(f"allmende policy {command}", ["--bootstrap HOST:PORT is required"])
    return BackboneConfig(bootstrap_servers=servers, topic_prefix=args.topic_prefix)


def _author(args: argparse.Namespace, command: str) -> _Author:
    """The signer the options name; raises ConfigError when they name none or both."""
    if args.cluster == bool(args.config):
        raise ConfigError(
            f"allmende policy {command}",
            [
                "name the signer: --config town.toml (an owner's bundle) or "
                "--cluster --ca-dir DIR --bootstrap HOST:PORT (the cluster's bundle)"
            ],
        )
    if args.cluster:
        from allmende.ca import CertificateAuthority

        if not args.ca_dir:
            raise ConfigError(f"allmende policy {command}", ["--cluster needs --ca-dir DIR"])
        ca = CertificateAuthority.load(Path(args.ca_dir))
        return _Author(
            ca.cluster,
            "",
            _backbone(args, command),
            ca.signer,
            lambda e: verify_ca(e, ca.cert),
            ca.cert,
        )
    from allmende.signing import MemberSigner

    town = load_town_config(args.config)
    node = town.node
    if node.keys is None:  # load_town_config requires [keys]; kept for the type checker
        raise ConfigError(str(args.config), ["[keys] signing_key is required to sign a bundle"])
    signer = MemberSigner.from_file(node.member, node.keys.signing_key)
    return _Author(
        node.cluster,
        node.member,
        town.node.backbone,
        signer,
        lambda e: verify_member(e, signer.public_key),
        load_ca_certificate(node.keys.cluster_ca),
        town,
    )


# -- reading the topic -------------------------------------------------------------------


@dataclass(frozen=True)
class TopicBundle:
    """One message of the policy topic as read back; ``content`` None when unreadable."""

    partition: int
    offset: int
    key: str
    envelope: backbone_pb2.Envelope | None
    content: BundleContent | None
    problem: str

    @property
    def author(self) -> str:
        return self.envelope.author if self.envelope is not None else ""


def _topic_bundle(
    partition: int, offset: int, key: bytes | None, value: bytes | None
) -> TopicBundle:
    text = (key or b"").decode(errors="replace")
    try:
        env, bundle = open_envelope(value or b"", backbone_pb2.PolicyBundle)
    except BackboneError as exc:
        return TopicBundle(partition, offset, text, None, None, str(exc))
    try:
        return TopicBundle(partition, offset, text, env, read_bundle(env, bundle), "")
    except BundleRefused as exc:
        return TopicBundle(partition, offset, text, env, None, str(exc))


def read_policy_topic(backbone: BackboneConfig, timeout_s: float = 10.0) -> list[TopicBundle]:
    """Every message on ``<prefix>.policy``, in order, its content read (not verified).

    Creates the topic when missing. Raises BackboneError when the backbone cannot be read.
    """
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    from allmende_node.backbone_link import TopicAdmin

    topic = Topics(backbone.topic_prefix).policy
    admin = TopicAdmin(backbone)
    try:
        _, partitions = admin.ensure([topic])[topic]
    finally:
        admin.close()
    ms = int(timeout_s * 1000)
    try:
        consumer: Any = KafkaConsumer(
            **backbone.kafka_options(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            allow_auto_create_topics=False,
            bootstrap_timeout_ms=ms,
            request_timeout_ms=max(ms, 1000),
        )
    except (KafkaError, OSError) as exc:
        raise BackboneError(f"cannot reach the backbone to read {topic}: {exc}") from exc
    found: list[TopicBundle] = []
    try:
        parts = [TopicPartition(topic, p) for p in range(max(partitions, 1))]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in parts):
            if time.monotonic() > deadline:
                raise BackboneError(f"reading {topic} did not finish in {timeout_s} s")
            for tp, messages in consumer.poll(timeout_ms=200).items():
                found += [_topic_bundle(tp.partition, m.offset, m.key, m.value) for m in messages]
    except KafkaError as exc:
        raise BackboneError(f"reading {topic} failed: {exc}") from exc
    finally:
        consumer.close()
    return sorted(found, key=lambda b: (b.partition, b.offset))


def _published(
    items: list[TopicBundle],
    cluster: str,
    owner: str,
    verify: Callable[[backbone_pb2.Envelope], None],
) -> dict[int, BundleContent]:
    """The bundles of ``owner`` ("" for the cluster's) among ``items`` whose signature
    ``verify`` accepts, by version."""
    contents: dict[int, BundleContent] = {}
    for item in items:
        content, env = item.content, item.envelope
        if content is None or env is None or item.key != bundle_key(owner).decode():
            continue
        if content.owner != owner or content.cluster != cluster:
            continue
        if env.author != (owner or CA_AUTHOR):
            continue
        try:
            verify(env)
        except SignatureInvalid:
            continue  # someone else's forgery: not ours, not counted
        # The first bundle of a version is the one nodes accepted; a later one is a replay.
        contents.setdefault(content.version, content)
    return contents


# -- building and sending ----------------------------------------------------------------


def _settings(pairs: list[str] | None) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError("allmende policy publish", [f"--settings {pair!r}: use KEY=VALUE"])
        try:
            settings[key.strip()] = json.loads(value)
        except ValueError:
            settings[key.strip()] = value
    return settings


def _check_compiles(author: _Author, content: BundleContent, items: list[TopicBundle]) -> str:
    """Compile the bundle as a node would (an owner's with the newest cluster bundle on the
    topic, or the bundled policies); returns what it was compiled with. Raises PolicyError."""
    if content.kind == "cluster":
        active, partner = combine(content, None), "alone"
    else:
        ca_cert = author.ca_certificate
        cluster_bundles = _published(items, author.cluster, "", lambda e: verify_ca(e, ca_cert))
        if cluster_bundles:
            base = cluster_bundles[max(cluster_bundles)]
            partner = f"with the cluster's bundle v{base.version} on the topic"
        else:
            base = bundled_baseline(content.cluster)
            partner = "with the bundled policies (no cluster bundle on the topic yet)"
        active = combine(base, content)
    try:
        check_compiles(active)
    except PolicyError as exc:
        raise PolicyError(f"not published: the bundle does not compile {partner}: {exc}") from exc
    return partner


def _send(author: _Author, bundle: backbone_pb2.PolicyBundle) -> None:
    topic = Topics(author.backbone.topic_prefix).policy
    raw = seal_bundle(bundle, author.signer)
    producer = BackboneProducer(author.backbone)
    try:
        producer.send_all([OutgoingMessage(topic, bundle_key(bundle.owner), raw)])
    finally:
        producer.close()


def _owner_sources(args: argparse.Namespace) -> dict[str, str]:
    from allmende.policy import read_policy_sources

    return read_policy_sources(args.policy_dir, include_tests=False) if args.policy_dir else {}


def _publish(args: argparse.Namespace) -> int:
    author = _author(args, "publish")
    items = read_policy_topic(author.backbone)
    published = _published(items, author.cluster, author.owner, author.verify)
    version = max(published, default=0) + 1
    if author.owner:
        from allmende.policy import load_agreements

        folder = args.agreements or (author.town.gateway.agreements_dir if author.town else None)
        if args.settings:
            raise ConfigError(
                "allmende policy publish", ["--settings belong to the cluster's bundle"]
            )
        if folder is None:
            raise ConfigError(
                "allmende policy publish",
                ["no agreements: give --agreements DIR or set [gateway] agreements_dir"],
            )
        bundle = build_owner_bundle(
            author.cluster,
            author.owner,
            version,
            load_agreements(folder),
            _owner_sources(args),
            comment=args.comment,
        )
    else:
        from allmende.policy import BUNDLED_POLICY_DIR, read_policy_sources

        if args.agreements:
            raise ConfigError(
                "allmende policy publish", ["--agreements belong to an owner's bundle"]
            )
        sources = read_policy_sources(args.policy_dir or BUNDLED_POLICY_DIR, include_tests=False)
        bundle = build_cluster_bundle(
            author.cluster, version, sources, _settings(args.settings), comment=args.comment
        )
    content = read_bundle(backbone_pb2.Envelope(payload=bundle.SerializeToString()), bundle)
    checked = _check_compiles(author, content, items)
    _send(author, bundle)
    print(
        f"published {author.name} policy bundle version {version} "
        f"({len(content.modules)} Rego module(s), {len(content.agreements)} agreement(s)) "
        f"to {Topics(author.backbone.topic_prefix).policy}; compiled {checked}"
    )
    return 0


def _rollback(args: argparse.Namespace) -> int:
    author = _author(args, "rollback")
    items = read_policy_topic(author.backbone)
    published = _published(items, author.cluster, author.owner, author.verify)
    target = published.get(args.to)
    if target is None:
        have = ", ".join(str(v) for v in sorted(published)) or "none"
        raise PolicyError(
            f"{author.name} bundle version {args.to} is not on the topic (versions: {have})"
        )
    version = max(published) + 1
    comment = args.comment or f"rollback to version {args.to}"
    if target.kind == "owner":
        bundle = build_owner_bundle(
            target.cluster,
            target.owner,
            version,
            target.agreements,
            target.modules,
            comment=comment,
            rollback_of=args.to,
        )
    else:
        bundle = build_cluster_bundle(
            target.cluster,
            version,
            target.modules,
            target.settings,
            comment=comment,
            rollback_of=args.to,
        )
    _send(author, bundle)
    print(
        f"published {author.name} policy bundle version {version}: "
        f"the content of version {args.to} again"
    )
    return 0


# -- listing -------------------------------------------------------------------------------


def _versions(args: argparse.Namespace) -> int:
    if args.config and not args.topic:
        return _store_versions(args)
    backbone = load_town_config(args.config).node.backbone if args.config else None
    if backbone is None:
        backbone = _backbone(args, "versions")
    rows: list[dict[str, Any]] = []
    for item in read_policy_topic(backbone):
        c = item.content
        rows.append(
            {
                "place": f"{item.partition}:{item.offset}",
                "key": item.key,
                "signer": item.author,
                "version": c.version if c else None,
                "rollback_of": c.rollback_of if c else 0,
                "published_at": c.published_at if c else "",
                "modules": len(c.modules) if c else 0,
                "agreements": len(c.agreements) if c else 0,
                "comment": c.comment if c else item.problem,
                "sha256": c.sha256 if c else "",
            }
        )
    if args.json:
        print(
            json.dumps({"topic": Topics(backbone.topic_prefix).policy, "bundles": rows}, indent=2)
        )
        return 0
    print(f"bundles on {Topics(backbone.topic_prefix).policy} (not verified here; a node checks):")
    headers = ("at", "key", "signer", "version", "published", "rego", "agreements", "comment")
    cells = [
        (
            r["place"],
            r["key"],
            r["signer"],
            r["version"] if r["version"] is not None else "?",
            r["published_at"],
            r["modules"],
            r["agreements"],
            (f"rollback to v{r['rollback_of']}; " if r["rollback_of"] else "") + str(r["comment"]),
        )
        for r in rows
    ]
    print(render_table(headers, cells) if cells else "  none")
    return 0


def _store_versions(args: argparse.Namespace) -> int:
    from allmende.policy.bundles import active_policy
    from allmende.store import connect

    town = load_town_config(args.config)
    path = town.node.store_path
    if not path.exists():
        raise ConfigError(str(args.config), [f"store {path} does not exist yet (start the node)"])
    conn = connect(path, readonly=True)
    try:
        records = BundleStore(conn).records()
    finally:
        conn.close()
    active = active_policy(path, town.node.member)
    label = active.label if active else "the local policy (no verified pair of bundles yet)"
    if args.json:
        print(
            json.dumps(
                {
                    "active": active.label if active else None,
                    "bundles": [r.to_dict() for r in records],
                },
                indent=2,
            )
        )
        return 0
    print(f"policy bundles checked by {town.node.member}'s node; the gateway decides with {label}")
    cells = [
        (
            r.received_at,
            r.owner or ("cluster" if r.kind == "cluster" else "?"),
            r.version,
            r.status,
            r.reason or (f"rollback to v{r.rollback_of}" if r.rollback_of else r.comment),
        )
        for r in records
    ]
    headers = ("received", "bundle", "version", "status", "reason / comment")
    print(render_table(headers, cells) if cells else "  none yet")
    return 0


def _signer_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="the owner's town.toml: sign as this member")
    p.add_argument("--cluster", action="store_true", help="sign the cluster's bundle with the CA")
    p.add_argument("--ca-dir", help="the CA's folder (with --cluster)")
    p.add_argument("--bootstrap", help="the backbone, HOST:PORT[,HOST:PORT] (with --cluster)")
    p.add_argument("--topic-prefix", default="allmende", help="topic prefix (default allmende)")
    p.add_argument("--comment", default="", help="what changed, kept with the bundle")


def add_commands(policy: argparse._SubParsersAction) -> None:
    """Add publish, rollback and versions to the ``allmende policy`` sub-commands."""
    p = policy.add_parser(
        "publish", help="sign a policy bundle (an owner's or the cluster's) and send it"
    )
    _signer_options(p)
    p.add_argument(
        "--agreements", help="owner: agreements folder (default: [gateway] agreements_dir)"
    )
    p.add_argument("--policy-dir", help="extra Rego (owner) or the Rego library (cluster)")
    p.add_argument(
        "--settings",
        action="append",
        metavar="KEY=VALUE",
        help="cluster: a policy setting, e.g. default_max_rows=5000 (repeatable)",
    )
    p.set_defaults(run=_publish)

    p = policy.add_parser(
        "rollback", help="republish an earlier bundle version's content as a new version"
    )
    _signer_options(p)
    p.add_argument("--to", type=int, required=True, metavar="N", help="the version to return to")
    p.set_defaults(run=_rollback)

    p = policy.add_parser(
        "versions",
        help="the bundles a town's node checked (accepted/refused), or those on the topic",
    )
    p.add_argument("--config", help="the town.toml whose store to list")
    p.add_argument("--topic", action="store_true", help="with --config: list the topic instead")
    p.add_argument("--bootstrap", help="list the topic of this backbone, HOST:PORT")
    p.add_argument("--topic-prefix", default="allmende", help="topic prefix (default allmende)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=_versions)
