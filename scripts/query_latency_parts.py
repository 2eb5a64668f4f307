"""Where a Query's time goes: gateway variants measured against the bare server.

    .venv/bin/python scripts/query_latency_parts.py [--seconds 3] [--rounds 2]
        [--variants shipped,no-audit,audit-only,from-memory,thread-pool]

``allmende bench`` compares the gateway as shipped with a bare gRPC server; this script
answers why the gap is what it is. Each variant is the real gateway process (mutual TLS,
authentication, routing, metrics) with parts of its Query handler taken out, measured as
the bench measures (10 rows, 32 calls in flight, then p50 at one call in flight, both sides
alternating in rounds) against a bare server answering with the gateway's own bytes; beside
the p50, the CPU time each server process (all its threads) spent per call at one call in
flight, read from /proc: how much of the p50 gap is the server's own work, without its
waits for the client, the scheduler or a wake-up:

  shipped      the gateway as ``allmende gateway run`` starts it
  no-audit     the full handler, but no audit entry written
  audit-only   the handler writes the audit entry of a decided request and answers with
               the page it answered first (no policy, no SQLite, no page token)
  from-memory  the handler answers with the page it answered first: the cost of the
               gateway around its handler
  thread-pool  the full handler on a grpc thread-pool server (one worker: regorus's VM
               must stay on the thread that made it) against a bare thread-pool server
               with one worker, in place of grpc.aio on both sides

The variants are made by replacing OwnerService methods in the gateway process, which is why
this is a script for measuring and not a mode of the gateway. Run ``--rounds`` of each
variant in turn: this machine's speed drifts, and the spread between rounds is part of the
answer.

``scripts/query_instructions.py`` counts the instructions of the same variants (and of each
part of the handler) under callgrind; it serves them with this script's ``--serve``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from concurrent import futures
from functools import partial
from pathlib import Path
from typing import Any

import grpc

from allmende.config import load_town_config
from allmende.v1 import query_pb2
from allmende_cli.bench.measure import (
    channel,
    compare_latency,
    compare_throughput,
    query_caller,
)
from allmende_cli.bench.servers import bare_process, wait_for_port
from allmende_cli.bench.town import DATASET, OWNER, PURPOSE, make_bench_town
from allmende_cli.main import main as allmende_main
from allmende_gateway import serving
from allmende_gateway.authentication import authenticate
from allmende_gateway.server import GatewayThread, load_policy

VARIANTS = ("shipped", "no-audit", "audit-only", "from-memory", "thread-pool")


# -- the measuring side ------------------------------------------------------------------


def measure(variants: list[str], seconds: float, rounds: int) -> int:
    req = query_pb2.QueryRequest(owner=OWNER, dataset=DATASET, purpose=PURPOSE, page_size=10)
    print(
        f"{'variant':<12} {'ratio':>6} {'ours req/s':>11} {'bare req/s':>11} "
        f"{'p50 gap':>9} {'ours p50':>9} {'bare p50':>9} "
        f"{'CPU gap':>9} {'ours CPU':>9} {'bare CPU':>9}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        town = make_bench_town(work, 2000)
        tls = town.owner_tls
        for _ in range(rounds):
            for variant in variants:
                me = [sys.executable, __file__, "--config", str(town.config.path)]
                log = work / f"{variant}.log"
                with open(log, "wb") as err:
                    gateway = subprocess.Popen(
                        [*me, "--serve", variant],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                    )
                bare: subprocess.Popen[bytes] | None = None
                try:
                    wait_for_port(town.config.gateway.listen, gateway, log=log)

                    async def run(variant: str = variant) -> str:
                        nonlocal bare
                        g = channel(town.config.gateway.listen, town.consumer_tls, town.server_name)
                        ours = query_caller(g)
                        first = await ours(req)
                        if len(first.records) != 10:
                            raise SystemExit(f"{variant}: the gateway answered {first}")
                        data = first.SerializeToString()
                        if variant == "thread-pool":
                            payload = work / "page.bin"
                            payload.write_bytes(data)
                            bare = subprocess.Popen(
                                [
                                    sys.executable,
                                    __file__,
                                    "--serve-bare",
                                    str(payload),
                                    "--tls",
                                    str(tls.ca),
                                    str(tls.cert),
                                    str(tls.key),
                                ],
                                stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE,
                            )
                            assert bare.stdout is not None
                            address = f"127.0.0.1:{bare.stdout.readline().decode().strip()}"
                            line = await compare(ours, address, bare.pid)
                        else:
                            with bare_process(tls, data, work) as served:
                                line = await compare(ours, served.address, served.pid)
                        await g.close()
                        return line

                    async def compare(
                        ours: Callable[..., Any], address: str, pid: int, gw: int = gateway.pid
                    ) -> str:
                        b = channel(address, town.consumer_tls, town.server_name)
                        base = query_caller(b)
                        rate, base_rate = await compare_throughput(
                            partial(ours, req), partial(base, req), seconds, 32
                        )
                        mine, bare_side = await compare_latency(
                            partial(ours, req), partial(base, req), seconds, (gw, pid)
                        )
                        await b.close()
                        p50, base_p50 = mine.p50_us, bare_side.p50_us
                        cpu, base_cpu = mine.cpu_per_call_us, bare_side.cpu_per_call_us
                        spent = (
                            f"{cpu - base_cpu:>+7.0f}µs {cpu:>7.0f}µs {base_cpu:>7.0f}µs"
                            if cpu is not None and base_cpu is not None
                            else f"{'—':>9} {'—':>9} {'—':>9}"
                        )
                        return (
                            f"{rate / base_rate:>5.2f}x {rate:>11,.0f} {base_rate:>11,.0f} "
                            f"{p50 - base_p50:>+7.0f}µs {p50:>7.0f}µs {base_p50:>7.0f}µs " + spent
                        )

                    print(f"{variant:<12} {asyncio.run(run())}", flush=True)
                finally:
                    for proc in (gateway, bare):
                        if proc is not None:
                            assert proc.stdin is not None
                            proc.stdin.close()
                            proc.terminate()
                            proc.wait(20)
    return 0


# -- the served side ---------------------------------------------------------------------


def serve(variant: str, config_path: Path, parts_file: Path | None = None) -> int:
    """Run the gateway of ``config_path`` with ``variant``'s handler until stdin closes;
    with ``parts_file``, SIGUSR1 calls the part of the handler it names
    (``scripts/query_instructions.py --parts`` counts them)."""
    query_wire = serving.OwnerService.query_wire
    first: dict[str, Any] = {}
    if parts_file is not None:
        _call_parts_on_signal(parts_file)

    def remembered(self: serving.OwnerService, caller: Any, req: Any) -> bytes:
        if "page" not in first:
            desc = self._dataset(caller, req.dataset)
            first["decided"] = self._authorize(
                caller, "query", req, desc, fields=[], limit=req.page_size, ordered=[]
            )
            first["page"] = query_wire(self, caller, req)
        return bytes(first["page"])

    def audit_only(self: serving.OwnerService, caller: Any, req: Any) -> bytes:
        page = remembered(self, caller, req)
        _audit_page(self, caller, req, first["decided"], req.SerializeToString(deterministic=True))
        return page

    if variant == "no-audit":
        serving.OwnerService.audit = lambda self, *a, **k: None  # type: ignore[method-assign]
    elif variant == "audit-only":
        serving.OwnerService.query_wire = audit_only  # type: ignore[method-assign]
    elif variant == "from-memory":
        serving.OwnerService.query_wire = remembered  # type: ignore[method-assign]
    elif variant == "thread-pool":
        return serve_thread_pool(config_path)
    return allmende_main(["gateway", "run", "--config", str(config_path)])  # until SIGTERM


def _audit_page(
    service: serving.OwnerService, caller: Any, req: Any, decided: Any, raw: bytes
) -> None:
    """The audit entry ``query_wire`` writes for a 10-row page of a decided request."""
    service.audit(
        caller,
        "query",
        req,
        decided.policy_input,
        decided.decision,
        allow=True,
        reasons=decided.decision.reasons,
        rows=10,
        raw=raw,
    )


def _call_parts_on_signal(order: Path) -> None:
    """Keep the arguments of the last Query; on SIGUSR1 call the part of the handler that
    ``order`` names ("<calls> <part>") that many times, then write "ok" (or what went wrong)
    to ``order`` with the suffix .done."""
    query_wire = serving.OwnerService.query_wire
    last: list[tuple[serving.OwnerService, Any, query_pb2.QueryRequest]] = []

    def kept(self: serving.OwnerService, caller: Any, req: query_pb2.QueryRequest) -> bytes:
        last[:] = [(self, caller, req)]
        return query_wire(self, caller, req)

    def parts() -> dict[str, Callable[[], object]]:
        from allmende_gateway.pages import page_wire

        service, caller, req = last[0]
        raw = req.SerializeToString(deterministic=True)
        desc = service._dataset(caller, req.dataset)
        plan = service._plan(caller, req, raw, desc, 10)
        rows = service.store.page(req.dataset, plan.sql, 11, plan.order, None)
        decided = plan.decided
        state = {"after": rows[9][0], "served": 10}
        token = service.signer.issue(plan.bound, state)
        return {
            "nothing": lambda: None,
            "dataset look-up": lambda: service._dataset(caller, req.dataset),
            "request bytes": lambda: req.SerializeToString(deterministic=True),
            "kept plan": lambda: service._plan(caller, req, raw, desc, 10),
            "SQLite page": lambda: service.store.page(req.dataset, plan.sql, 11, plan.order, None),
            "page token": lambda: service.signer.issue(plan.bound, state),
            "page bytes": lambda: page_wire(
                service.rows, decided.grant, rows[:10], token, truncated=False
            ),
            "audit entry": lambda: _audit_page(service, caller, req, decided, raw),
            "whole handler": lambda: query_wire(service, caller, req),
        }

    def say(what: str, text: str) -> None:
        # Whole or not at all: the counting side reads it as soon as it is there.
        written = order.with_suffix(".written")
        written.write_text(text)
        written.replace(order.with_suffix(f".{what}"))

    def wait(what: str) -> None:
        with open(order.with_suffix(f".{what}"), "rb") as fifo:  # blocks until written
            fifo.read()

    def call(signum: int, frame: object) -> None:
        try:
            calls, part = order.read_text().split(" ", 1)
            if not last:
                raise RuntimeError("no Query was answered yet")
            fn = parts()[part]
        except Exception as exc:  # reported to the counting side, which stops
            say("ready", "")
            wait("go")
            say("done", f"{exc!r}")
            return
        # Without the cyclic collector: when its collections fall, and what they cost,
        # depends on the whole heap, not on the part (some 6 µs per Query).
        gc.disable()
        say("ready", "")
        wait("go")
        try:
            for _ in range(int(calls)):
                fn()
        except Exception as exc:
            outcome = f"{exc!r}"
        else:
            outcome = "ok"
        finally:
            gc.enable()
        say("done", outcome)
        wait("dumped")

    serving.OwnerService.query_wire = kept  # type: ignore[method-assign]
    signal.signal(signal.SIGUSR1, call)


def serve_thread_pool(config_path: Path) -> int:
    """The gateway's Query handler on a grpc thread-pool server with one worker."""
    made: list[serving.OwnerService] = []
    init = serving.OwnerService.__init__

    def keep(self: serving.OwnerService, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    serving.OwnerService.__init__ = keep  # type: ignore[method-assign]
    config = load_town_config(config_path)
    # Built by the asyncio gateway (on another port), which then answers nothing.
    gw_config = config.gateway
    built = GatewayThread(dataclasses.replace(gw_config, listen="127.0.0.1:0")).start()
    owner_service = made[0]
    engines: list[object] = []
    here = threading.local()

    def query(request: query_pb2.QueryRequest, context: grpc.ServicerContext) -> bytes:
        if not hasattr(here, "engine"):
            # regorus's VM is bound to the thread that made it: one for the worker.
            engines.append(owner_service.enforcer.policy)
            owner_service.enforcer.policy = here.engine = load_policy(gw_config)
        return owner_service.query_wire(authenticate(context), request)

    server = _thread_pool_server(
        query, query_pb2.QueryRequest.FromString, gw_config.listen, gw_config.tls.read()
    )
    try:
        sys.stdin.read()
    finally:
        server.stop(0)
        built.stop()
    return 0


def serve_bare(payload: Path, ca: Path, cert: Path, key: Path) -> int:
    """A bare thread-pool server with one worker answering ``payload``; prints its port."""
    page = payload.read_bytes()
    server = _thread_pool_server(
        lambda request, context: page,
        None,
        "127.0.0.1:0",
        (ca.read_bytes(), cert.read_bytes(), key.read_bytes()),
    )
    try:
        sys.stdin.read()
    finally:
        server.stop(0)
    return 0


def _thread_pool_server(
    handler: Callable[..., bytes],
    parse: Callable[[bytes], Any] | None,
    listen: str,
    tls: tuple[bytes, bytes, bytes],
) -> Any:
    ca, cert, key = tls
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=1), options=[("grpc.so_reuseport", 0)]
    )
    method = grpc.unary_unary_rpc_method_handler(
        handler, request_deserializer=parse, response_serializer=lambda b: b
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("allmende.v1.QueryService", {"Query": method}),)
    )
    creds = grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )
    port = server.add_secure_port(listen, creds)
    server.start()
    print(port, flush=True)
    return server


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--seconds", type=float, default=3.0, help="per measurement (default 3)")
    p.add_argument("--rounds", type=int, default=2, help="times each variant runs (default 2)")
    p.add_argument("--variants", help=f"comma-separated, of {', '.join(VARIANTS)} (default: all)")
    p.add_argument("--parts-file", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--serve-bare", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--tls", nargs=3, type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        return serve(args.serve, args.config, args.parts_file)
    if args.serve_bare:
        return serve_bare(args.serve_bare, *args.tls)
    if not args.seconds > 0:
        p.error(f"--seconds must be above 0, not {args.seconds}")
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, not {args.rounds}")
    variants = [v.strip() for v in (args.variants or ",".join(VARIANTS)).split(",") if v.strip()]
    if not variants:
        p.error("--variants names none; choose from " + ", ".join(VARIANTS))
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    return measure(variants, args.seconds, args.rounds)


if __name__ == "__main__":
    raise SystemExit(main())
