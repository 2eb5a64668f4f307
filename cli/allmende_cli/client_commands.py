"""`allmende catalog|query|aggregate|subscribe`: what a consuming service does, from a terminal."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from allmende.client import GatewayClient, Subscription
from allmende.config import load_client_config
from allmende.errors import InvalidRequest, PolicyDenied, QuotaExceeded
from allmende.v1 import query_pb2
from allmende_cli.filter_options import add_filter_options, add_order_option, expression_from
from allmende_cli.tables import render_table

__all__ = ["register"]

# SubscribeBatches' largest batch (PROTOCOL.md; the gateway refuses more).
MAX_BATCH = 5000

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
                expression=expression_from(args),
                order_by=args.order_by,
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


class _MeasureAction(argparse.Action):
    """--count / --sum F / --min F / --max F / --avg F, kept in the order they were given."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        measures = list(getattr(namespace, "measures", None) or [])
        measures.append(self.const if values is None or values == [] else f"{self.const}:{values}")
        namespace.measures = measures


def _aggregate(args: argparse.Namespace) -> int:
    owner, dataset = _dataset_ref(args.dataset)
    group_by = [g for part in args.group_by or () for g in part.split(",") if g]
    measures = args.measures or ["count"]
    with _client(args) as client:
        try:
            resp = client.aggregate(
                owner,
                dataset,
                args.purpose,
                group_by=group_by,
                measures=measures,
                expression=expression_from(args),
            )
        except PolicyDenied as err:
            _print_denial(err)
            return 3
        except QuotaExceeded as err:
            print(str(err), file=sys.stderr)
            return 4
    groups = [json.loads(g) for g in resp.groups]
    if args.json:
        print(
            json.dumps(
                {"groups": groups, "suppressed_groups": resp.suppressed_groups},
                ensure_ascii=False,
                sort_keys=True,
            )
        )
    else:
        names = [k for g in groups[:1] for k in g if k not in group_by]
        columns = group_by + sorted(names)
        print(render_table(columns, [[g.get(c) for c in columns] for g in groups], indent=""))
    decision = resp.decision
    print(
        f"\n{len(groups)} group(s); policy {decision.policy_version}"
        + (
            f"; {resp.suppressed_groups} group(s) under {decision.min_group_size} records left out"
            if resp.suppressed_groups
            else ""
        )
        + (f"; row filter: {decision.row_filter_json}" if decision.row_filter_json else ""),
        file=sys.stderr,
    )
    return 0


def _print_change(event: query_pb2.ChangeEvent, resume_token: str) -> None:
    kind = query_pb2.ChangeKind.Name(event.kind).removeprefix("CHANGE_KIND_").lower()
    line = {
        "kind": kind,
        "id": event.record.id,
        "record": json.loads(event.record.json) if event.record.json else None,
    }
    if resume_token:
        line["resume_token"] = resume_token
    print(json.dumps(line, ensure_ascii=False), flush=True)


def _follow_events(stream: Subscription[query_pb2.ChangeEvent]) -> None:
    for event in stream:
        if not event.kind:
            print(f"# subscribed; resume token {event.resume_token}", file=sys.stderr)
            continue
        _print_change(event, event.resume_token)


def _follow_batches(stream: Subscription[query_pb2.ChangeBatch]) -> None:
    # Only the last change of a batch carries a token: the batch's, which resumes after it.
    for batch in stream:
        if batch.HasField("decision"):
            print(f"# subscribed; resume token {batch.resume_token}", file=sys.stderr)
        last = len(batch.events) - 1
        for i, event in enumerate(batch.events):
            _print_change(event, batch.resume_token if i == last else "")


def _subscribe(args: argparse.Namespace) -> int:
    owner, dataset = _dataset_ref(args.dataset)
    start = query_pb2.START_FROM_LIVE if args.live else query_pb2.START_FROM_BEGINNING
    if args.batch is not None and not 1 <= args.batch <= MAX_BATCH:
        raise InvalidRequest(f"--batch must be between 1 and {MAX_BATCH}, not {args.batch}")
    with _client(args) as client:
        resume = args.resume or ""
        stream: Subscription[Any]
        follow: Callable[[], None]
        if args.batch is None:
            events = client.subscribe(
                owner,
                dataset,
                args.purpose,
                expression=expression_from(args),
                start=start,
                resume_token=resume,
            )
            stream, follow = events, lambda: _follow_events(events)
        else:
            batches = client.subscribe_batches(
                owner,
                dataset,
                args.purpose,
                expression=expression_from(args),
                start=start,
                resume_token=resume,
                max_batch=args.batch,
            )
            stream, follow = batches, lambda: _follow_batches(batches)
        try:
            follow()
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
    add_filter_options(p)
    add_order_option(p)
    p.add_argument("--limit", type=int, default=20, help="page size (default 20)")
    p.add_argument("--json", action="store_true", help="print one JSON record per line")
    p.set_defaults(run=_query)

    p = sub.add_parser(
        "aggregate",
        help="counts, sums, minima, maxima, averages per group, through your town's gateway",
    )
    with_profile(p)
    p.add_argument("dataset", help="owner/dataset, e.g. kaiserslautern/parking-permits")
    p.add_argument("--purpose", required=True, help="why you need the figures")
    p.add_argument(
        "--group-by", action="append", help="field(s) forming the groups, comma-separated"
    )
    p.add_argument(
        "--count", action=_MeasureAction, nargs=0, const="count", help="records per group"
    )
    for fn in ("sum", "min", "max", "avg"):
        p.add_argument(
            f"--{fn}",
            action=_MeasureAction,
            const=fn,
            metavar="FIELD",
            help=f"{fn} of FIELD per group (repeatable)",
        )
    add_filter_options(p)
    p.add_argument("--json", action="store_true", help="print the groups as one JSON document")
    p.set_defaults(run=_aggregate, measures=None)

    p = sub.add_parser("subscribe", help="follow a dataset's changes through your town's gateway")
    with_profile(p)
    p.add_argument("dataset", help="owner/dataset")
    p.add_argument("--purpose", required=True)
    p.add_argument("--live", action="store_true", help="only changes from now on")
    p.add_argument("--resume", help="resume token of the last event you processed")
    add_filter_options(p)
    p.add_argument(
        "--batch",
        type=int,
        metavar="N",
        help=f"receive batches of up to N changes (1-{MAX_BATCH}): faster for many changes; "
        "only a batch's last change carries a resume token",
    )
    p.set_defaults(run=_subscribe)
