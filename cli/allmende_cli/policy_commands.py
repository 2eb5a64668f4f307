"""`allmende policy test|agreements|explain|diff` (and publish|rollback|versions from
bundle_commands): what a data steward runs before and when rules go live.

``explain`` decides one request as the owner's gateway would and says why. ``diff`` replays
the owner's audit log under a proposed policy and lists the decisions that would change; it
exits 0 when none would, 1 when some would (2 on errors, as every command).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from allmende.errors import InvalidRequest, PolicyError
from allmende_cli import bundle_commands

if TYPE_CHECKING:  # the policy engine (regorus) is imported when a command needs it
    from allmende.config import TownConfig
    from allmende.policy.engine import PolicyEngine
    from allmende.policy.explain import DatasetFacts

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


# --- where the policy comes from -------------------------------------------------------------


@dataclasses.dataclass
class _Policy:
    engine: PolicyEngine
    files: dict[str, str]  # agreement id → YAML file, where known
    origin: str
    sources: dict[str, str]  # the Rego, so that a proposal can keep it
    settings: dict[str, Any]


def _town_policy(town: TownConfig) -> _Policy:
    """What the town's gateway decides with: the newest verified bundle pair in its store,
    else its local policy_dir/agreements_dir; always the embedded engine (an OPA sidecar
    evaluates the same policy)."""
    from allmende.policy import BUNDLED_POLICY_DIR, PolicyEngine, read_policy_sources
    from allmende.policy.bundles import active_policy
    from allmende.policy.explain import agreement_files
    from allmende_gateway.server import bundle_policy, load_policy

    config = dataclasses.replace(town.gateway, policy_engine="embedded")
    active = active_policy(config.store_path, config.member)
    if active is not None:
        engine = bundle_policy(config, active)
        files, origin = {}, f"the verified bundles {active.label} in {config.store_path}"
        sources, settings = dict(active.sources), dict(active.settings)
    else:
        engine = load_policy(config)
        files = agreement_files(config.agreements_dir)
        origin = f"the local policy of {town.path}"
        sources = read_policy_sources(config.policy_dir or BUNDLED_POLICY_DIR, include_tests=False)
        settings = {"default_max_rows": config.default_max_rows}
    if not isinstance(engine, PolicyEngine):  # the gateway's embedded engine, as configured
        raise PolicyError(f"expected the embedded policy engine, got {type(engine).__name__}")
    return _Policy(engine, files, origin, sources, settings)


def _local_policy(
    policy_dir: str | None,
    agreements: str | None,
    settings: dict[str, Any],
    sources: dict[str, str] | None = None,
) -> _Policy:
    """Rego from ``policy_dir`` (else ``sources``, else the bundled policies) with the
    agreements of the folder ``agreements`` (none when None)."""
    from allmende.policy import (
        BUNDLED_POLICY_DIR,
        PolicyEngine,
        load_agreements,
        read_policy_sources,
    )
    from allmende.policy.explain import agreement_files

    if policy_dir or sources is None:
        folder = Path(policy_dir) if policy_dir else BUNDLED_POLICY_DIR
        sources, rego = read_policy_sources(folder, include_tests=False), str(folder)
    else:
        rego = "the current Rego"
    loaded = load_agreements(Path(agreements)) if agreements else []
    engine = PolicyEngine(sources, loaded, settings, origin=rego)
    origin = rego + (f" with the agreements of {agreements}" if agreements else "")
    return _Policy(engine, agreement_files(agreements), origin, sources, settings)


def _names(text: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (text or "").split(",") if p.strip())


# --- explain ---------------------------------------------------------------------------------


def _explain(args: argparse.Namespace) -> int:
    from allmende.config import load_town_config
    from allmende.policy.explain import (
        DatasetFacts,
        Subject,
        explain,
        format_explanation,
        parse_time,
    )

    owner, _, dataset_id = args.dataset.partition("/")
    if not owner or not dataset_id:
        raise InvalidRequest(f"--dataset {args.dataset!r} must be OWNER/DATASET", "dataset")
    if args.config:
        ignored = [
            f"--{name.replace('_', '-')}"
            for name in ("policy_dir", "agreements", "classification", "fields", "cluster")
            if getattr(args, name)
        ]
        if ignored:
            raise InvalidRequest(
                f"--config takes the dataset and the policy from the town; leave out "
                f"{', '.join(ignored)}",
                ignored[0].lstrip("-"),
            )
        town = load_town_config(args.config)
        dataset = _descriptor(town, owner, dataset_id)
        policy = _town_policy(town)
        cluster = town.gateway.cluster
        peer = town.gateway.peers.get(args.member)
        member_cluster = args.as_cluster or (peer.cluster if peer else cluster)
    else:
        if not args.classification:
            raise InvalidRequest(
                "without --config, say what the dataset is: --classification "
                "open|internal|restricted (and --fields a,b)",
                "classification",
            )
        if not args.cluster:
            raise InvalidRequest("without --config, --cluster names the owner's cluster", "cluster")
        settings = {"default_max_rows": args.default_max_rows}
        policy = _local_policy(args.policy_dir, args.agreements, settings)
        dataset = DatasetFacts(owner, dataset_id, args.classification, _names(args.fields))
        cluster = args.cluster
        member_cluster = args.as_cluster or cluster
    result = explain(
        policy.engine,
        Subject(args.member, member_cluster, args.service),
        dataset,
        args.purpose,
        cluster=cluster,
        action=args.action,
        fields=_names(args.select),
        filter_fields=_names(args.filter_on),
        functions=_names(args.functions),
        limit=args.limit,
        at=parse_time(args.at) if args.at else None,
        files=policy.files,
        known_agreements=policy.engine.agreement_ids,
    )
    if args.json:
        doc = {**result.to_dict(), "policy_origin": policy.origin}
        print(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        print(format_explanation(result))
        print(f"  decided by:  {policy.origin}")
    return 0


def _descriptor(town: TownConfig, owner: str, dataset: str) -> DatasetFacts:
    """The descriptor of a dataset the town owns, from its store (as its gateway reads it)."""
    from allmende.policy.explain import DatasetFacts
    from allmende.store import StoreReader

    if owner != town.gateway.member:
        raise InvalidRequest(
            f"{owner}/{dataset} is decided by {owner}'s gateway, not by {town.gateway.member}'s "
            f"({town.path}): give {owner}'s town file, or describe the dataset and policy with "
            "--classification/--fields/--cluster/--agreements instead of --config",
            "dataset",
        )
    reader = StoreReader(town.gateway.store_path)
    try:
        return DatasetFacts.from_descriptor(reader.own_dataset(dataset, owner))
    finally:
        reader.close()


# --- diff ------------------------------------------------------------------------------------


def _diff(args: argparse.Namespace) -> int:
    from allmende.audit import read_entries
    from allmende.config import load_town_config
    from allmende.policy.replay import format_diff, replay

    if args.config:
        town = load_town_config(args.config)
        current = _town_policy(town)
        log = Path(args.log) if args.log else town.gateway.audit_log
    else:
        if not args.log:
            raise InvalidRequest("without --config, --log names the audit log to replay", "log")
        settings = {"default_max_rows": args.default_max_rows}
        current = _local_policy(args.current_policy_dir, args.current_agreements, settings)
        log = Path(args.log)
    if log is None:
        raise InvalidRequest("the town has no audit log configured; give --log", "log")
    # The proposal keeps the current Rego and settings unless it brings its own Rego.
    proposed = _local_policy(
        args.proposed_policy_dir, args.proposed_agreements, current.settings, current.sources
    )
    report = replay(read_entries(log), current.engine, proposed.engine)
    if args.json:
        print(
            json.dumps(
                {**report.to_dict(), "current": current.origin, "proposed": proposed.origin},
                indent=2,
                ensure_ascii=False,
            )
        )
    else:
        print(format_diff(report))
    return 1 if report.changes else 0


# --- the parser ------------------------------------------------------------------------------


def _policy_source_flags(p: argparse.ArgumentParser, prefix: str = "") -> None:
    p.add_argument(
        f"--{prefix}policy-dir", help="Rego folder (default: the town's, else the bundled one)"
    )
    p.add_argument(f"--{prefix}agreements", help="folder (or file) of agreement YAML")


def register(sub: argparse._SubParsersAction) -> None:
    policy = sub.add_parser(
        "policy", help="test, explain, try and publish policies and agreements"
    ).add_subparsers(dest="action", required=True)
    p = policy.add_parser("test", help="run every *_test.rego (like `opa test`)")
    p.add_argument("--dir", help="policy folder (default: the bundled policies/)")
    p.add_argument("--verbose-tests", action="store_true", help="list passing tests too")
    p.set_defaults(run=_test)
    p = policy.add_parser(
        "agreements", help="validate sharing agreements (a YAML file or a folder)"
    )
    p.add_argument("path")
    p.set_defaults(run=_agreements)

    p = policy.add_parser(
        "explain",
        help="decide one request as the owner's gateway would, and say why",
        description="Decides a request as the owner's gateway would (same policy input, "
        "same policy, the gateway's own refusals) and prints the decision, the rule and "
        "agreements that decided it, masked fields, row filter, limits and policy version. "
        "With --config (the owner's town file) the dataset comes from the town's catalog and "
        "the policy is what its gateway decides with; otherwise describe the dataset with "
        "--classification/--fields and the policy with --policy-dir/--agreements.",
    )
    p.add_argument("--as", dest="member", required=True, help="the asking member")
    p.add_argument("--dataset", required=True, help="OWNER/DATASET")
    p.add_argument("--purpose", required=True)
    p.add_argument("--action", default="query", choices=("query", "subscribe", "aggregate"))
    p.add_argument("--at", help="when (RFC 3339 or a date; default: now)")
    p.add_argument("--service", default="explain", help="the asking service (default: explain)")
    p.add_argument("--as-cluster", help="the asking member's cluster (default: from the town)")
    p.add_argument("--select", help="fields asked for, a,b (default: all)")
    p.add_argument("--filter-on", help="fields the request filters on, a,b")
    p.add_argument("--functions", help="Aggregate functions asked for, e.g. SUM,MAX")
    p.add_argument("--limit", type=int, default=100, help="page size asked for (default 100)")
    p.add_argument("--config", help="the owner's town.toml")
    _policy_source_flags(p)
    p.add_argument("--classification", choices=("open", "internal", "restricted"))
    p.add_argument("--fields", help="the dataset's field names, a,b (without --config)")
    p.add_argument("--cluster", help="the owner's cluster (without --config)")
    p.add_argument("--default-max-rows", type=int, default=10000)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_explain)

    p = policy.add_parser(
        "diff",
        help="which recorded decisions a proposed policy would change (exit 1 if any)",
        description="Replays every decision in the owner's audit log (its recorded policy "
        "input, its recorded time) under the current and the proposed policy and lists the "
        "decisions whose outcome changes: allowed/denied, masks, row filter, max rows, "
        "aggregate-only group size, quota. Exit status 0: nothing changes; 1: something "
        "does; 2: an error.",
    )
    p.add_argument("--config", help="the owner's town.toml (current policy and audit log)")
    p.add_argument("--log", help="the audit log (default: the town's)")
    _policy_source_flags(p, "current-")
    p.add_argument("--proposed-agreements", required=True, help="folder of agreement YAML")
    p.add_argument("--proposed-policy-dir", help="Rego folder (default: the current one)")
    p.add_argument("--default-max-rows", type=int, default=10000)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_diff)

    bundle_commands.add_commands(policy)  # publish, rollback, versions
