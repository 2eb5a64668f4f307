"""Where a Query's time goes: gateway variants measured against the bare server.

    .venv/bin/python scripts/query_latency_parts.py [--seconds 3] [--rounds 2]
        [--variants shipped,no-audit,...] [--against bare|shipped] [--bare aio|thread-pool]

``allmende bench`` compares the gateway as shipped with a bare gRPC server; this script
answers why the gap is what it is. Each variant is the real gateway process (mutual TLS,
authentication, routing, metrics) with parts of its Query handler taken out, measured as
the bench measures (10 rows, the p50 at one call in flight, then 32 calls in flight, both
sides alternating) against a bare server answering with the gateway's own bytes; beside the p50,
the CPU time each server process (all its threads) spent per call at one call in flight,
read from /proc: how much of the p50 gap is the server's own work, without its waits for
the client, the scheduler or a wake-up:

  shipped         the gateway as ``allmende gateway run`` starts it
  no-audit        the full handler, but no audit entry written
  audit-only      the handler writes the audit entry of a decided request and answers with
                  the page it answered first (no policy, no SQLite, no page token)
  from-memory     the handler answers with the page it answered first: the cost of the
                  gateway around its handler
  thread-pool     the full handler on grpc's thread-pool server in place of grpc.aio, as a
                  gateway would serve on it: 8 worker threads, one lock around the handler
                  (the gateway's store connection, caches and audit log are used by one
                  thread at a time), and an engine per thread (regorus's engines are bound
                  to the thread that made them); without the gateway's metrics and routing

and, each with one part taken out and all else as shipped (the part answers what it
answered first; the bench town asks the same Query over and over):

  no-audit-write  the audit entry rendered and chained, but not written to the file
  no-sqlite-page  no SQLite read of the page's rows
  no-store-check  no dataset look-up with the store's change check (``PRAGMA data_version``)
  no-page-token   no page token made
  no-certificate  no reading of the caller's certificate (``auth_context()``)

and, to calibrate, ``busy-100us``: from-memory, then 100 µs of computation that touches
almost no memory: what 100 µs in the handler costs at the p50, when nothing it does has to
come back into the CPU's caches.

With ``--against shipped`` each variant is measured against a second gateway process as
shipped (of a town of its own) instead of a bare server: what taking a part out saves, in
one run, call by call in pairs. Differences of a few µs need several rounds: one round's
p50 difference moves by some ±15 µs on this machine.

The bare server is the bench's bare ``grpc.aio`` server, or with ``--bare thread-pool`` a
bare server on grpc's thread-pool server (8 workers), which answers faster (README, Speed).

The variants are made by replacing functions in the gateway process, which is why this is a
script for measuring and not a mode of the gateway. Run ``--rounds`` of each variant in
turn: this machine's speed drifts, and the spread between rounds is part of the answer.

``scripts/query_instructions.py`` counts the instructions of the first four variants (and of
each part of the handler) under callgrind; it serves them with this script's ``--serve``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import grpc

from allmende.audit.log import AuditLog
from allmende.config import load_town_config
from allmende.store import StoreReader
from allmende.v1 import query_pb2
from allmende_cli.bench.measure import (
    channel,
    compare_latency,
    compare_throughput,
    query_caller,
)
from allmende_cli.bench.query_bench import BARE_WORKERS
from allmende_cli.bench.servers import bare_process, wait_for_port
from allmende_cli.bench.town import DATASET, OWNER, PURPOSE, BenchTown, make_bench_town
from allmende_cli.main import main as allmende_main
from allmende_gateway import page_tokens, servicers, serving
from allmende_gateway.authentication import authenticate
from allmende_gateway.server import GatewayThread, load_policy

VARIANTS = (
    "shipped",
    "no-audit",
    "audit-only",
    "from-memory",
    "thread-pool",
    "no-audit-write",
    "no-sqlite-page",
    "no-store-check",
    "no-page-token",
    "no-certificate",
    "busy-100us",
)


# -- the measuring side ------------------------------------------------------------------


def measure(
    variants: list[str], seconds: float, rounds: int, against: str = "bare", bare: str = "aio"
) -> int:
    """Print one row per variant and round: the variant against a bare server answering its
    bytes (``against`` "bare"; ``bare`` "aio" or "thread-pool"), or against the gateway as
    shipped ("shipped", a second gateway process of a town of its own): what taking the
    part out saves."""
    workers = BARE_WORKERS if bare == "thread-pool" else 0
    req = query_pb2.QueryRequest(owner=OWNER, dataset=DATASET, purpose=PURPOSE, page_size=10)
    print(
        f"{'variant':<16} {'ratio':>6} {'ours req/s':>11} {against + ' req/s':>13} "
        f"{'p50 gap':>9} {'ours p50':>9} {against + ' p50':>12} "
        f"{'CPU gap':>9} {'ours CPU':>9} {against + ' CPU':>12}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        town = make_bench_town(work / "variant", 2000)
        # The gateway as shipped, when it is the baseline, starts afresh beside each variant,
        # so both have served alike when they are compared.
        shipped = make_bench_town(work / "shipped", 2000) if against == "shipped" else None
        for _ in range(rounds):
            for variant in variants:
                with contextlib.ExitStack() as stack:
                    gateway = stack.enter_context(_gateway(town, variant))
                    baseline = None if shipped is None else stack.enter_context(_gateway(shipped))

                    async def run(
                        variant: str = variant,
                        gateway: _Server = gateway,
                        baseline: _Server | None = baseline,
                    ) -> str:
                        ours_ch = gateway.channel()
                        ours = query_caller(ours_ch)
                        first = await ours(req)
                        if len(first.records) != 10:
                            raise SystemExit(f"{variant}: the gateway answered {first}")
                        try:
                            if baseline is not None:
                                return await _compare(ours, gateway, baseline, req, seconds)
                            data = first.SerializeToString()
                            with bare_process(
                                town.owner_tls,
                                data,
                                work,
                                workers=workers,
                                loop=town.config.gateway.event_loop,
                            ) as served:
                                base = _Server(served.address, served.pid, town)
                                return await _compare(ours, gateway, base, req, seconds)
                        finally:
                            await ours_ch.close()

                    print(f"{variant:<16} {asyncio.run(run())}", flush=True)
    return 0


class _Server(NamedTuple):
    """A server to call: its address, its process, and the town whose certificates reach it.
    (A NamedTuple: the e2e test loads this script without registering it as a module, which
    a dataclass needs.)"""

    address: str
    pid: int
    town: BenchTown

    def channel(self) -> grpc.aio.Channel:
        return channel(self.address, self.town.consumer_tls, self.town.server_name)


@contextlib.contextmanager
def _gateway(town: BenchTown, variant: str = "shipped") -> Iterator[_Server]:
    """The gateway of ``town`` serving ``variant`` (this script's ``--serve``), until exit."""
    me = [sys.executable, __file__, "--config", str(town.config.path)]
    log = town.dir / f"{variant}.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [*me, "--serve", variant], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err
        )
    try:
        wait_for_port(town.config.gateway.listen, proc, log=log)
        yield _Server(town.config.gateway.listen, proc.pid, town)
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End a server this script started: its stdin closed (see ``serve``), then SIGTERM."""
    assert proc.stdin is not None
    proc.stdin.close()
    proc.terminate()
    proc.wait(20)


async def _compare(
    ours: Callable[..., Any],
    gateway: _Server,
    baseline: _Server,
    req: query_pb2.QueryRequest,
    seconds: float,
) -> str:
    """One row: the p50 and CPU per call at one call in flight, then throughput at 32 in
    flight. In this order: a server answers slower at one call in flight for seconds after
    calls 32 at a time, and the side whose slice came last is the slower (2026-12-02: a
    gateway against the same gateway, 45-64 µs at the p50; a bare server against the same,
    14-28 µs)."""
    base_ch = baseline.channel()
    try:
        base = query_caller(base_ch)
        mine, theirs = await compare_latency(
            partial(ours, req), partial(base, req), seconds, (gateway.pid, baseline.pid)
        )
        rate, base_rate = await compare_throughput(
            partial(ours, req), partial(base, req), seconds, 32
        )
    finally:
        await base_ch.close()
    p50, base_p50 = mine.p50_us, theirs.p50_us
    cpu, base_cpu = mine.cpu_per_call_us, theirs.cpu_per_call_us
    spent = (
        f"{cpu - base_cpu:>+7.0f}µs {cpu:>7.0f}µs {base_cpu:>10.0f}µs"
        if cpu is not None and base_cpu is not None
        else f"{'—':>9} {'—':>9} {'—':>12}"
    )
    return (
        f"{rate / base_rate:>5.2f}x {rate:>11,.0f} {base_rate:>13,.0f} "
        f"{p50 - base_p50:>+7.0f}µs {p50:>7.0f}µs {base_p50:>10.0f}µs " + spent
    )


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

    def busy(self: serving.OwnerService, caller: Any, req: Any) -> bytes:
        page = remembered(self, caller, req)
        until = time.perf_counter() + 100e-6
        while time.perf_counter() < until:
            pass
        return page

    if variant == "no-audit":
        serving.OwnerService.audit = lambda self, *a, **k: None  # type: ignore[method-assign]
    elif variant == "audit-only":
        serving.OwnerService.query_wire = audit_only  # type: ignore[method-assign]
    elif variant == "from-memory":
        serving.OwnerService.query_wire = remembered  # type: ignore[method-assign]
    elif variant == "thread-pool":
        return serve_thread_pool(config_path)
    elif variant == "busy-100us":
        serving.OwnerService.query_wire = busy  # type: ignore[method-assign]
    elif variant == "no-audit-write":
        AuditLog._write = _unwritten  # type: ignore[method-assign]
    elif variant == "no-sqlite-page":
        _first_answer(StoreReader, "page")
    elif variant == "no-store-check":
        _first_answer(StoreReader, "own_dataset")
    elif variant == "no-page-token":
        _first_answer(page_tokens.TokenSigner, "issue")
    elif variant == "no-certificate":
        _first_answer(servicers, "authenticate")
    return allmende_main(["gateway", "run", "--config", str(config_path)])  # until SIGTERM


def _first_answer(owner: Any, name: str) -> None:
    """Replace ``owner.name`` by a function that calls it once and from then on answers
    what it answered first (a list as a fresh copy): the part taken out of every later
    call, all else as shipped. Only for the bench town's one repeated Query."""
    real = getattr(owner, name)
    kept: list[Any] = []

    def first(*args: Any, **kwargs: Any) -> Any:
        if not kept:
            kept.append(real(*args, **kwargs))
        answer = kept[0]
        return list(answer) if isinstance(answer, list) else answer

    setattr(owner, name, first)


def _unwritten(self: AuditLog, data: bytes, sync: bool = False) -> None:
    """``AuditLog._write`` that writes nothing: the entry is rendered and chained, not sent
    to the file."""
    self._size += len(data)


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
    """The gateway's Query handler on grpc's thread-pool server (``BARE_WORKERS`` threads),
    one call at a time in it, with an engine per thread."""
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
    here = threading.local()

    class EnginePerThread:
        """The policy as each worker decides with it: regorus's engines are bound to the
        thread that made them."""

        def decide(self, input: Any, *, input_json: str | None = None) -> Any:
            engine = getattr(here, "engine", None)
            if engine is None:
                engine = here.engine = load_policy(gw_config)
            return engine.decide(input, input_json=input_json)

    # The gateway's own engine stays its (``Gateway.policy``), dropped on its loop's thread.
    owner_service.enforcer.policy = EnginePerThread()
    # The store's connection, the caches and the audit log are one thread's at a time.
    one_at_a_time = threading.Lock()

    def query(request: query_pb2.QueryRequest, context: grpc.ServicerContext) -> bytes:
        caller = authenticate(context)
        with one_at_a_time:
            return owner_service.query_wire(caller, request)

    ca, cert, key = gw_config.tls.read()
    pool = futures.ThreadPoolExecutor(max_workers=BARE_WORKERS)
    server = grpc.server(pool, options=[("grpc.so_reuseport", 0)])
    method = grpc.unary_unary_rpc_method_handler(
        query,
        request_deserializer=query_pb2.QueryRequest.FromString,
        response_serializer=lambda page: page,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("allmende.v1.QueryService", {"Query": method}),)
    )
    creds = grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )
    server.add_secure_port(gw_config.listen, creds)
    server.start()
    try:
        sys.stdin.read()
    finally:
        server.stop(0).wait(5)
        pool.shutdown(wait=True)  # each worker's engine is dropped as its thread ends
        built.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--seconds", type=float, default=3.0, help="per measurement (default 3)")
    p.add_argument("--rounds", type=int, default=2, help="times each variant runs (default 2)")
    p.add_argument("--variants", help=f"comma-separated, of {', '.join(VARIANTS)} (default: all)")
    p.add_argument(
        "--against",
        choices=("bare", "shipped"),
        default="bare",
        help="measure each variant against a bare server (default) or the gateway as shipped",
    )
    p.add_argument(
        "--bare",
        choices=("aio", "thread-pool"),
        default="aio",
        help="the bare server of --against bare: grpc.aio (default, as the bench) or grpc's "
        f"thread-pool server with {BARE_WORKERS} workers",
    )
    p.add_argument("--parts-file", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        return serve(args.serve, args.config, args.parts_file)
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
    return measure(variants, args.seconds, args.rounds, args.against, args.bare)


if __name__ == "__main__":
    raise SystemExit(main())
