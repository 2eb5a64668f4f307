"""`allmende ca init|issue`: the cluster operator's certificate authority."""

from __future__ import annotations

import argparse
from pathlib import Path

from allmende.ca import CertificateAuthority

__all__ = ["register"]


def _init(args: argparse.Namespace) -> int:
    ca = CertificateAuthority.init(Path(args.dir), args.cluster)
    print(f"created CA for cluster {ca.cluster} in {args.dir} (keep ca-key.pem offline)")
    return 0


def _issue(args: argparse.Namespace) -> int:
    ca = CertificateAuthority.load(Path(args.dir))
    dns = tuple(d for d in (args.dns or "").split(",") if d) or ("localhost",)
    issued = ca.issue(Path(args.out), args.member, args.service or "", dns_names=dns)
    print(f"issued {issued.identity.spiffe_id}")
    print(
        f"  certificate {issued.tls.cert}\n  key         {issued.tls.key}\n  CA          {issued.tls.ca}"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    ca = sub.add_parser("ca", help="the cluster's certificate authority").add_subparsers(
        dest="action", required=True
    )
    p = ca.add_parser("init", help="create a cluster CA")
    p.add_argument("--cluster", required=True)
    p.add_argument("--dir", default="ca", help="where the CA keeps its files (default ./ca)")
    p.set_defaults(run=_init)
    p = ca.add_parser(
        "issue", help="issue a member's gateway certificate or a service's certificate"
    )
    p.add_argument("--member", required=True)
    p.add_argument("--service", help="issue for this service of the member instead of its gateway")
    p.add_argument("--dir", default="ca")
    p.add_argument("--out", required=True, help="folder to write the certificate and key into")
    p.add_argument("--dns", help="comma-separated DNS names for the gateway (default localhost)")
    p.set_defaults(run=_issue)
