"""`allmende policy test|agreements`: what a data steward runs before publishing rules."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]


def _test(args: argparse.Namespace) -> int:
    from allmende.policy import BUNDLED_POLICY_DIR, format_report, run_rego_tests

    report = run_rego_tests(Path(args.dir) if args.dir else BUNDLED_POLICY_DIR)
    print(format_report(report, verbose=args.verbose_tests))
    return 0 if report.ok else 1


def _agreements(args: argparse.Namespace) -> int:
    from allmende.policy import load_agreements

    agreements = load_agreements(Path(args.path))
    for a in agreements:
        until = a.get("valid_until") or "open-ended"
        print(
            f"{a['agreement']}: {a['provider']} → {', '.join(a['consumers'])} "
            f"for {', '.join(a['purposes'])} on {', '.join(a['datasets'])} "
            f"(from {a['valid_from']} until {until})"
        )
    print(f"{len(agreements)} agreement(s) valid")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    policy = sub.add_parser("policy", help="test and check policies and agreements").add_subparsers(
        dest="action", required=True
    )
    p = policy.add_parser("test", help="run every *_test.rego (like `opa test`)")
    p.add_argument("--dir", help="policy folder (default: the bundled policies/)")
    p.add_argument("--verbose-tests", action="store_true", help="list passing tests too")
    p.set_defaults(run=_test)
    p = policy.add_parser(
        "agreements", help="validate sharing agreements (a YAML file or a folder)"
    )
    p.add_argument("path")
    p.set_defaults(run=_agreements)
