"""A bare QueryService in a process of its own: ``python -m allmende_cli.bench.bare_server``.

The query and subscribe benchmarks run the gateway as its own process (``allmende gateway
run``); the bare server it is measured against runs the same way, so neither shares its interpreter (and GIL)
with the bench client. Prints the port it listens on, then serves until stdin closes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from allmende.config import EVENT_LOOPS
from allmende.identity import TlsFiles

from .servers import BareServer, BareThreadPoolServer, read_messages


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m allmende_cli.bench.bare_server")
    p.add_argument("--query-bytes", type=Path, required=True, help="the QueryResponse to send")
    p.add_argument(
        "--stream-bytes", type=Path, help="ChangeEvents to stream, each after its 4-byte length"
    )
    p.add_argument(
        "--batch-bytes", type=Path, help="ChangeBatches to stream, each after its 4-byte length"
    )
    p.add_argument("--ca", type=Path, help="CA certificate (with --cert and --key: mutual TLS)")
    p.add_argument("--cert", type=Path)
    p.add_argument("--key", type=Path)
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="serve Query on grpc's thread-pool server with this many threads (not grpc.aio)",
    )
    p.add_argument(
        "--loop",
        choices=EVENT_LOOPS,
        default="uvloop",
        help="the event loop of the grpc.aio server (the gateway's [gateway] event_loop)",
    )
    args = p.parse_args(argv)
    if args.workers < 0:
        p.error(f"--workers must be at least 1 (or 0 for grpc.aio), not {args.workers}")
    tls = None
    if args.ca and args.cert and args.key:
        tls = TlsFiles(ca=args.ca, cert=args.cert, key=args.key)
    events = read_messages(args.stream_bytes) if args.stream_bytes else []
    batches = read_messages(args.batch_bytes) if args.batch_bytes else []
    server: BareServer | BareThreadPoolServer
    if args.workers:
        server = BareThreadPoolServer(
            tls=tls, query_bytes=args.query_bytes.read_bytes(), workers=args.workers
        )
    else:
        server = BareServer(
            tls=tls,
            query_bytes=args.query_bytes.read_bytes(),
            stream_bytes=events,
            batch_bytes=batches,
            loop=args.loop,
        )
    with server:
        print(server.port, flush=True)
        sys.stdin.read()  # the bench closes our stdin (or ends us) when it is done
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
