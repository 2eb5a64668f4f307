"""`allmende demo`: a federation of four towns on this machine, and a narrated tour of it."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from allmende_cli.demo_federation import DemoFederation
from allmende_cli.demo_tour import keep_running_help, run_tour

__all__ = ["register"]


def _demo(args: argparse.Namespace) -> int:
    if not args.verbose:
        # The tour narrates what the nodes and gateways log; -v shows their logs as well.
        for name in ("allmende_node", "allmende_gateway"):
            logging.getLogger(name).setLevel(logging.ERROR)
    print(
        "allmende demo — the Südwest-Cluster (Kaiserslautern, Pirmasens, Sankt Wendel) and Luzern\n"
    )
    with DemoFederation(Path(args.dir)) as fed:
        run_tour(fed)
        print("\nEvery step above was a real call: mutual TLS, Rego, SQLite, Kafka protocol.")
        if args.keep_running:
            print(keep_running_help(fed), flush=True)
            stop = threading.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
            stop.wait()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run a demo federation of four towns and a narrated tour")
    p.add_argument("--dir", default="var/demo", help="where the demo keeps its files (wiped first)")
    p.add_argument("--keep-running", action="store_true", help="stay up after the tour")
    p.set_defaults(run=_demo)
