"""`allmende backbone replicas`: the verified copies of other members' datasets a town keeps."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from allmende.config import load_town_config
from allmende.store import connect
from allmende_cli.tables import render_table
from allmende_node.replica_follower import replica_states

__all__ = ["register"]


def _render(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return 'this town keeps no replicas (add [node] replicas = ["owner/dataset", …])'
    table = render_table(
        (
            "REPLICA",
            "STATUS",
            "LAST SEQUENCE",
            "DATASET VERSION",
            "KEY VERSION",
            "RECORDS",
            "UPDATED",
        ),
        [
            (
                f"{r['owner']}/{r['dataset']}" + ("" if r["configured"] else " (not configured)"),
                r["status"],
                r["last_sequence"],
                r["dataset_version"],
                r["key_version"] or "-",
                r["records"],
                r["updated_at"] or "-",
            )
            for r in rows
        ],
    )
    return f"{len(rows)} replica(s)\n{table}"


def _replicas(args: argparse.Namespace) -> int:
    config = load_town_config(args.config).node
    conn = connect(config.store_path, readonly=True)
    try:
        rows = [dataclasses.asdict(s) for s in replica_states(conn, config.replicas)]
    finally:
        conn.close()
    print(json.dumps(rows, indent=2) if args.json else _render(rows))
    return 0


def register(backbone: argparse._SubParsersAction) -> None:
    """Add ``replicas`` to the ``allmende backbone`` subcommands."""
    p = backbone.add_parser(
        "replicas",
        help="the other members' datasets this node replicates: status, sequence, records",
    )
    p.add_argument("--config", required=True, help="the town's TOML file")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=_replicas)
