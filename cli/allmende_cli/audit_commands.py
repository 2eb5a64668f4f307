"""`allmende audit verify|report`: prove the audit log is intact; who accessed a dataset, how much."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from allmende.audit import (
    AuditError,
    iter_lines,
    parse_since,
    render_csv,
    render_json,
    summarize,
    verify,
)
from allmende.audit.report import COLUMNS
from allmende.audit.verify import VerifyReport
from allmende.ca import read_public_key
from allmende.config import load_town_config
from allmende.errors import ConfigError
from allmende.signing import load_ed25519_private
from allmende_cli.tables import render_table

__all__ = ["register"]


def _log_path(args: argparse.Namespace) -> Path:
    if args.log is not None:
        return Path(args.log)
    if args.config is None:
        raise ConfigError("allmende audit", ["give --config town.toml or --log PATH"])
    gateway = load_town_config(args.config).gateway
    if gateway.audit_log is None:
        raise ConfigError(str(args.config), ["[gateway] audit_log is not set"])
    return gateway.audit_log


def _public_key(args: argparse.Namespace) -> bytes:
    """The owner's Ed25519 public key: --public-key, else derived from the town's signing key."""
    if args.public_key is not None:
        return read_public_key(Path(args.public_key), "signing")
    if args.config is None:
        raise ConfigError(
            "allmende audit verify",
            ["--log needs --public-key FILE (the owner's signing public key), or give --config"],
        )
    keys = load_town_config(args.config).gateway.keys
    if keys is None:
        raise ConfigError(str(args.config), ["[keys] signing_key is needed to verify checkpoints"])
    private = load_ed25519_private(keys.signing_key)
    return private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def _render_verify(report: VerifyReport) -> str:
    lines = [
        f"audit log {report.path}: {report.entries} entries, {report.checkpoints} checkpoint(s), "
        f"signed up to seq {report.covered_seq} of {report.last_seq}"
    ]
    lines += [f"  {p}" for p in report.problems]
    lines += [f"  warning: {w}" for w in report.warnings]
    if report.ok:
        lines.append("OK: every entry is intact, in order and linked; checkpoints verify")
    else:
        lines.append(f"{len(report.problems)} problem(s) found")
    return "\n".join(lines)


def _verify(args: argparse.Namespace) -> int:
    path = _log_path(args)
    if not path.exists():
        raise AuditError(f"audit log {path} does not exist")
    report = verify(path, _public_key(args))
    if args.require_checkpoint:
        report.problems += report.warnings
        report.warnings = []
    print(json.dumps(report.to_dict(), indent=2) if args.json else _render_verify(report))
    return 0 if report.ok else 1


def _report(args: argparse.Namespace) -> int:
    path = _log_path(args)
    since = parse_since(args.since) if args.since else None
    entries, damaged = [], 0
    for line in iter_lines(path):
        if line.kind == "entry":
            entries.append(line.data)
        elif line.kind in ("bad", "partial"):
            damaged += 1
    rows = summarize(entries, dataset=args.dataset, member=args.member, since=since)
    if damaged:
        print(
            f"allmende: {damaged} damaged line(s) of {path} left out; see `allmende audit verify`",
            file=sys.stderr,
        )
    if args.format == "csv":
        sys.stdout.write(render_csv(rows))
    elif args.format == "json":
        print(render_json(rows))
    elif not rows:
        print(f"no requests for {args.dataset} in {path}")
    else:
        headers = [c.upper() for c in COLUMNS]
        print(render_table(headers, [[getattr(r, c) for c in COLUMNS] for r in rows]))
    return 0


def _source_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="the town's TOML file (its [gateway] audit_log and [keys])")
    p.add_argument("--log", help="the audit log file (instead of the town's)")


def register(sub: argparse._SubParsersAction) -> None:
    audit = sub.add_parser(
        "audit", help="the owner's audit log: verify it, report who accessed what"
    ).add_subparsers(dest="action", required=True)
    p = audit.add_parser(
        "verify",
        help="check every entry's hash, the order and the signed checkpoints "
        "(exit 1 when a problem is found)",
    )
    _source_arguments(p)
    p.add_argument(
        "--public-key",
        help="the owner's Ed25519 signing public key (PEM, raw or hex); default: derived from "
        "the town's [keys] signing_key",
    )
    p.add_argument(
        "--require-checkpoint",
        action="store_true",
        help="count entries not yet covered by a signed checkpoint as a problem",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(run=_verify)
    p = audit.add_parser(
        "report", help="who accessed a dataset, for which purpose, how much (table, CSV, JSON)"
    )
    _source_arguments(p)
    p.add_argument("--dataset", required=True, help="dataset id (or owner/dataset)")
    p.add_argument("--member", help="only requests by this member")
    p.add_argument("--since", help="only from this time on: 2026-11-01, an RFC 3339 time, or 7d")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.set_defaults(run=_report)
