"""`allmende catalog|query|subscribe`: what a consuming service does, from the terminal."""

from __future__ import annotations

import argparse
import json
import sys

from allmende.client import GatewayClient
from allmende.config import load_client_config
from allmende.errors import InvalidRequest, PolicyDenied
from allmende.v1 import query_pb2
from allmende_cli.tables import render_table

__all__ = ["register"]

_CLASSES = {1: "open", 2: "internal", 3: "restricted"}


def _client(args: argparse.Namespace) -> GatewayClient:
    profile = load_client_config(args.profile)
    return GatewayClient(profile.gateway, profile.tls, server_name=profile.server_name)


def _dataset_ref(text: str) -> tuple[str, str]:
    owner, _, dataset = text.partition("/")
    if not owner or not dataset:
        raise InvalidRequest(
            f"dataset {text!r} must be written owner/dataset, e.g. kaiserslautern/parking-sites"
        )
    return owner, dataset


def _catalog(args: argparse.Namespace) -> int:
    with _client(args) as client:
        datasets = client.list_datasets(owner=args.owner or "", keyword=args.keyword or "")
    rows = [
        (
            f"{d.owner}/{d.id}",
            _CLASSES.get(d.classification, "?"),
            d.record_count,
            d.version,
            d.title,
        )
        for d in datasets
    ]
    print(
        render_table(["dataset", "classification", "records", "version", "title"], rows, indent="")
    )
    return 0


def _print_denial(err: PolicyDenied) -> None:
    print(f"denied by {err.owner or 'the owner'}'s policy ({err.policy_version}):", file=sys.stderr)
    for reason in err.reasons:
        print(f"  - {reason}", file=sys.stderr)


def _query(args: argparse.Namespace) -> int:
    owner, dataset = _dataset_ref(args.dataset)
    fields = [f for f in (args.fields or "").split(",") if f]
    with _client(args) as client:
        try:
            page = client.query(
                owner,
                dataset,
                args.purpose,
                fields=fields,
                where=args.where or (),
                page_size=args.limit,
            )
        except PolicyDenied as err:
            _print_denial(err)
            return 3
    if args.json:
        for rec in page.records:
            print(rec.json)
    else:
        rows = [json.loads(r.json) for r in page.records]
        columns = fields or sorted({k for row in rows for k in row if k != "geom"})
        print(render_table(columns, [[row.get(c) for c in columns] for row in rows], indent=""))
    masked = dict(page.decision.masked_fields)
    print(
        f"\n{len(page.records)} record(s); policy {page.decision.policy_version}"
        + (f"; masked: {', '.join(sorted(masked))}" if masked else "")
        + (
            f"; row filter: {page.decision.row_filter_json}"
            if page.decision.row_filter_json
            else ""
        )
        + ("; more pages follow" if page.next_page_token else ""),
        file=sys.stderr,
    )
    return 0


def _subscribe(args: argparse.Namespace) -> int:
    owner, dataset = _dataset_ref(args.dataset)
    start = query_pb2.START_FROM_LIVE if args.live else query_pb2.START_FROM_BEGINNING
    with _client(args) as client:
        stream = client.subscribe(
            owner, dataset, args.purpose, start=start, resume_token=args.resume or ""
        )
        try:
            for event in stream:
                if not event.kind:
                    print(f"# subscribed; resume token {event.resume_token}", file=sys.stderr)
                    continue
                kind = query_pb2.ChangeKind.Name(event.kind).removeprefix("CHANGE_KIND_").lower()
                print(
                    json.dumps(
                        {
                            "kind": kind,
                            "id": event.record.id,
                            "record": json.loads(event.record.json) if event.record.json else None,
                            "resume_token": event.resume_token,
                        },
                        ensure_ascii=False,
                    ),
                    flush=True,
                )
        except PolicyDenied as err:
            _print_denial(err)
            return 3
        except KeyboardInterrupt:
            stream.cancel()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    def with_profile(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--profile", required=True, help="client profile TOML: [client] gateway, ca, cert, key"
        )

    p = sub.add_parser("catalog", help="list the federated catalog as your town's gateway sees it")
    with_profile(p)
    p.add_argument("--owner", help="only this member's datasets")
    p.add_argument("--keyword", help="only datasets with this keyword")
    p.set_defaults(run=_catalog)

    p = sub.add_parser("query", help="query a dataset through your town's gateway")
    with_profile(p)
    p.add_argument("dataset", help="owner/dataset, e.g. kaiserslautern/parking-sites")
    p.add_argument(
        "--purpose", required=True, help="why you need the data (the policy decides by it)"
    )
    p.add_argument("--fields", help="comma-separated fields to return")
    p.add_argument(
        "--where",
        action="append",
        help="condition, repeatable (ANDed): 'capacity>=500', 'district in Innenstadt,West'",
    )
    p.add_argument("--limit", type=int, default=20, help="page size (default 20)")
    p.add_argument("--json", action="store_true", help="print one JSON record per line")
    p.set_defaults(run=_query)

    p = sub.add_parser("subscribe", help="follow a dataset's changes through your town's gateway")
    with_profile(p)
    p.add_argument("dataset", help="owner/dataset")
    p.add_argument("--purpose", required=True)
    p.add_argument("--live", action="store_true", help="only changes from now on")
    p.add_argument("--resume", help="resume token of the last event you processed")
    p.set_defaults(run=_subscribe)
