"""`allmende ca init|issue|revoke|list|publish`: the cluster operator's certificate authority."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from allmende.ca import CertificateAuthority, publish_registry, read_public_key
from allmende.config import BackboneConfig
from allmende.errors import ConfigError
from allmende_cli.tables import render_table

__all__ = ["register"]


def _init(args: argparse.Namespace) -> int:
    ca = CertificateAuthority.init(Path(args.dir), args.cluster)
    print(f"created CA for cluster {ca.cluster} in {args.dir} (keep ca-key.pem offline)")
    return 0


def _issue(args: argparse.Namespace) -> int:
    problems = []
    if args.days <= 0:
        problems.append(f"--days must be positive, not {args.days}")
    if (args.signing_public or args.encryption_public) and not args.csr:
        problems.append("--signing-public and --encryption-public go with --csr")
    if args.csr and not args.service and not (args.signing_public and args.encryption_public):
        problems.append(
            "a member's CSR needs --signing-public and --encryption-public "
            "(made by `allmende member keygen`)"
        )
    if args.csr and args.service and (args.signing_public or args.encryption_public):
        problems.append("a service has no signing or encryption keys; drop those options")
    if problems:
        raise ConfigError("allmende ca issue", problems)
    ca = CertificateAuthority.load(Path(args.dir))
    dns = tuple(d for d in (args.dns or "").split(",") if d) or ("localhost",)
    if args.csr:
        signing = (
            read_public_key(Path(args.signing_public), "signing") if args.signing_public else b""
        )
        encryption = (
            read_public_key(Path(args.encryption_public), "encryption")
            if args.encryption_public
            else b""
        )
        cert = ca.issue_from_csr(
            Path(args.out),
            args.member,
            Path(args.csr),
            service=args.service or "",
            signing_public_key=signing,
            encryption_public_key=encryption,
            dns_names=dns,
            days=args.days,
        )
        print(f"issued {cert.identity.spiffe_id} from {args.csr} (serial {cert.serial})")
        print(f"  certificate {cert.certificate}\n  CA          {cert.ca}")
        print(f"  valid until {cert.not_after:%Y-%m-%d}; send both files back to the member")
        return 0
    issued = ca.issue(
        Path(args.out), args.member, args.service or "", dns_names=dns, days=args.days
    )
    print(f"issued {issued.identity.spiffe_id} (serial {issued.serial})")
    print(
        f"  certificate {issued.tls.cert}\n  key         {issued.tls.key}\n  CA          {issued.tls.ca}"
    )
    if issued.signing_key is not None:
        print(f"  signing     {issued.signing_key}\n  encryption  {issued.encryption_key}")
    return 0


def _backbone(args: argparse.Namespace, command: str) -> BackboneConfig:
    servers = tuple(s.strip() for s in (args.bootstrap or "").split(",") if s.strip())
    if not servers:
        raise ConfigError(f"allmende ca {command}", ["--bootstrap HOST:PORT is required"])
    return BackboneConfig(bootstrap_servers=servers, topic_prefix=args.topic_prefix)


def _publish_and_report(
    ca: CertificateAuthority, backbone: BackboneConfig, members: list[str] | None
) -> None:
    published = publish_registry(ca, backbone, members)
    registry = ca.registry()
    for member in published:
        entry = registry[member]
        what = "revocation" if entry["revoked"] else "member record"
        print(f"  published {what} of {member} (version {entry['version']})")
    print(f"published {len(published)} statement(s) to {backbone.topic_prefix}.trust")


def _revoke(args: argparse.Namespace) -> int:
    backbone = _backbone(args, "revoke") if args.publish else None
    ca = CertificateAuthority.load(Path(args.dir))
    entry, changed = ca.revoke(args.member, args.reason)
    if changed:
        print(f"revoked {args.member}: {entry['reason']} (version {entry['version']})")
    else:
        print(
            f"{args.member} was revoked already, at {entry.get('revoked_at', '?')}: {entry['reason']}"
        )
    if backbone is not None:
        _publish_and_report(ca, backbone, [args.member])
    else:
        print("  not yet on the backbone: run `allmende ca publish --bootstrap …`")
    return 0


def _rows(registry: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for member, entry in sorted(registry.items()):
        certs = entry.get("certificates", {})
        rows.append(
            {
                "member": member,
                "status": "revoked" if entry["revoked"] else "active",
                "reason": entry.get("reason", ""),
                "serials": entry["certificate_serials"],
                "not_after": max((c["not_after"] for c in certs.values()), default=""),
                "version": entry["version"],
                "signing_public_key": entry.get("signing_public_key", ""),
                "encryption_public_key": entry.get("encryption_public_key", ""),
            }
        )
    return rows


def _list(args: argparse.Namespace) -> int:
    ca = CertificateAuthority.load(Path(args.dir))
    rows = _rows(ca.registry())
    if args.json:
        print(json.dumps({"cluster": ca.cluster, "members": rows}, indent=2))
        return 0
    if not rows:
        print(f"the CA of {ca.cluster} has issued no certificates yet")
        return 0
    print(f"members of cluster {ca.cluster}:")
    print(
        render_table(
            ("member", "status", "serials", "not after", "version"),
            [
                (
                    r["member"],
                    r["status"] + (f" ({r['reason']})" if r["reason"] else ""),
                    ",".join(s[:8] for s in r["serials"]),
                    r["not_after"],
                    r["version"],
                )
                for r in rows
            ],
        )
    )
    return 0


def _publish(args: argparse.Namespace) -> int:
    backbone = _backbone(args, "publish")
    ca = CertificateAuthority.load(Path(args.dir))
    _publish_and_report(ca, backbone, args.member or None)
    return 0


def _backbone_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", help="the backbone's bootstrap servers, HOST:PORT[,HOST:PORT]")
    p.add_argument(
        "--topic-prefix", default="allmende", help="topic prefix of the cluster (default allmende)"
    )


def register(sub: argparse._SubParsersAction) -> None:
    ca = sub.add_parser("ca", help="the cluster's certificate authority").add_subparsers(
        dest="action", required=True
    )
    p = ca.add_parser("init", help="create a cluster CA")
    p.add_argument("--cluster", required=True)
    p.add_argument("--dir", default="ca", help="where the CA keeps its files (default ./ca)")
    p.set_defaults(run=_init)

    p = ca.add_parser(
        "issue",
        help="issue a member's gateway certificate or a service's certificate "
        "(with --csr: sign the member's own request)",
    )
    p.add_argument("--member", required=True)
    p.add_argument("--service", help="issue for this service of the member instead of its gateway")
    p.add_argument("--dir", default="ca")
    p.add_argument("--out", required=True, help="folder to write the certificate (and keys) into")
    p.add_argument("--dns", help="comma-separated DNS names for the gateway (default localhost)")
    p.add_argument("--days", type=int, default=397, help="validity in days (default 397)")
    p.add_argument("--csr", help="sign this CSR (PEM or DER); no private key is made or seen")
    p.add_argument("--signing-public", help="the member's Ed25519 public key (PEM, raw or hex)")
    p.add_argument("--encryption-public", help="the member's X25519 public key (PEM, raw or hex)")
    p.set_defaults(run=_issue)

    p = ca.add_parser("revoke", help="revoke a member: its calls and streams are cut off")
    p.add_argument("--member", required=True)
    p.add_argument("--reason", required=True)
    p.add_argument("--dir", default="ca")
    p.add_argument("--publish", action="store_true", help="publish the revocation right away")
    _backbone_options(p)
    p.set_defaults(run=_revoke)

    p = ca.add_parser("list", help="the member registry: status, serials, expiry, version")
    p.add_argument("--dir", default="ca")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=_list)

    p = ca.add_parser(
        "publish", help="publish the registry as CA-signed statements on <prefix>.trust"
    )
    p.add_argument("--dir", default="ca")
    p.add_argument("--member", action="append", help="only this member (repeatable)")
    _backbone_options(p)
    p.set_defaults(run=_publish)
