"""`allmende broker|node|gateway|dataset`: what a town's IT team runs."""

from __future__ import annotations

import argparse
import asyncio
import signal
import threading
from functools import partial

from allmende.broker import EmbeddedBroker
from allmende.config import load_town_config
from allmende.event_loops import loop_name, new_event_loop

__all__ = ["register"]


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


def _broker(args: argparse.Namespace) -> int:
    with EmbeddedBroker(port=args.port) as broker:
        print(
            f"embedded Kafka-protocol broker (tansu, memory storage) on {broker.bootstrap}",
            flush=True,
        )
        _wait_for_signal()
    return 0


def _node(args: argparse.Namespace) -> int:
    from allmende_node import Node

    config = load_town_config(args.config)
    with Node(config.node):
        print(f"node of {config.node.member} running; store {config.node.store_path}", flush=True)
        _wait_for_signal()
    return 0


def _gateway(args: argparse.Namespace) -> int:
    from allmende_gateway import Gateway

    config = load_town_config(args.config)

    async def serve() -> None:
        gateway = Gateway(config.gateway)
        await gateway.start()
        loop = asyncio.get_running_loop()
        print(
            f"gateway of {config.gateway.member} serving on {gateway.address} "
            f"(mutual TLS, {loop_name(loop)})",
            flush=True,
        )
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await gateway.stop()

    # [gateway] event_loop: uvloop unless the town chose asyncio's own loop.
    with asyncio.Runner(loop_factory=partial(new_event_loop, config.gateway.event_loop)) as run:
        run.run(serve())
    return 0


def _import(args: argparse.Namespace) -> int:
    from allmende_node.importer import import_configured

    config = load_town_config(args.config).node
    for source, result in import_configured(config, args.dataset or ""):
        print(
            f"{source.id}: version {result.version}, {result.upserts} upserted, "
            f"{result.deletes} deleted, {result.unchanged} unchanged"
        )
    return 0


def _rotate_key(args: argparse.Namespace) -> int:
    from allmende.store import connect
    from allmende_node.keys import KeyManager

    config = load_town_config(args.config).node
    conn = connect(config.store_path)
    try:
        change = KeyManager(config, conn).rotate(args.dataset)
    finally:
        conn.close()
    print(
        f"{config.member}/{change.dataset}: data key version {change.key_version}; "
        f"granted to {', '.join(change.granted) or 'nobody'}; "
        f"rotated away from {', '.join(change.revoked) or 'nobody'} "
        "(the node publishes the grants from its outbox)"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("broker", help="run the embedded Kafka-protocol broker (development, demo)")
    p.add_argument("--port", type=int, default=9092)
    p.set_defaults(run=_broker)

    node = sub.add_parser("node", help="run a town's node").add_subparsers(
        dest="action", required=True
    )
    p = node.add_parser("run", help="import the configured datasets, publish, follow the catalog")
    p.add_argument("--config", required=True, help="the town's TOML file")
    p.set_defaults(run=_node)

    gw = sub.add_parser("gateway", help="run a town's gateway").add_subparsers(
        dest="action", required=True
    )
    p = gw.add_parser("run", help="serve Catalog, Query and Subscribe over mutual TLS")
    p.add_argument("--config", required=True, help="the town's TOML file")
    p.set_defaults(run=_gateway)

    ds = sub.add_parser("dataset", help="manage a town's datasets").add_subparsers(
        dest="action", required=True
    )
    p = ds.add_parser(
        "import", help="import configured datasets into the store now (outbox publishes)"
    )
    p.add_argument("--config", required=True)
    p.add_argument("--dataset", help="only this dataset id")
    p.set_defaults(run=_import)
    p = ds.add_parser(
        "rotate-key",
        help="give a non-open dataset a new data key, granted only to the members entitled now",
    )
    p.add_argument("--config", required=True)
    p.add_argument("--dataset", required=True, help="the dataset id")
    p.set_defaults(run=_rotate_key)
