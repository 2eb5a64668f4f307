"""Where a Query's time goes: gateway variants measured against the bare server.

    .venv/bin/python scripts/query_latency_parts.py [--seconds 3] [--rounds 2]
        [--variants shipped,no-audit,audit-only,from-memory,thread-pool]
    .venv/bin/python scripts/query_latency_parts.py --instructions [--calls 300]
        [--variants shipped,no-audit,audit-only,from-memory]

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

    .venv/bin/python scripts/query_latency_parts.py --instructions [--calls 300] [--parts]

counts instead of timing: each server process (the variant's gateway, then the bare server
answering with its bytes) runs under ``valgrind --tool=callgrind``, and the instructions it
executes in user space (all threads) for ``--calls`` Query calls, one in flight, are divided
by the calls. The count does not move with the machine's speed, so a change to the handler
shows in it however fast the machine is running that minute; it leaves out the kernel (the
wake-ups between threads, half of a bare server's CPU time here) and counts SHA-256 in
software (valgrind's CPU has no SHA instructions: some 35,000 instructions per audit entry
that the real CPU does in about a microsecond). With ``--parts`` it counts each part of the
shipped gateway's Query handler instead, called ``--calls`` times in a row inside the
gateway process (on its event loop, between calls) with the arguments of the last Query it
answered, with the cyclic garbage collector off and only the main thread's instructions
counted; a loop that calls nothing is counted too and taken off.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
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
# The thread-pool variant's bare server is another one; counting covers the grpc.aio ones.
COUNTED = VARIANTS[:4]
CALLGRIND = ["valgrind", "--tool=callgrind", "--dump-instr=no"]
# A call's work is spread over grpc's threads: all of them are counted together. A part of
# the handler runs on the main thread alone, so only that thread is read (the others, the
# audit log's checkpoints among them, go on meanwhile).
ALL_THREADS, EACH_THREAD = "--separate-threads=no", "--separate-threads=yes"


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


def _need_valgrind() -> None:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("--instructions needs valgrind (Debian: apt install valgrind)")


def count_instructions(variants: list[str], calls: int) -> int:
    """Instructions per Query call of each variant's gateway and of the bare server, each
    run under callgrind (see the module's docstring)."""
    _need_valgrind()
    req = query_pb2.QueryRequest(owner=OWNER, dataset=DATASET, purpose=PURPOSE, page_size=10)
    print(f"{'variant':<12} {'ours':>13} {'bare':>13} {'gap':>13}  (instructions per call)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        town = make_bench_town(work, 2000)
        tls = town.owner_tls
        bare_count: float | None = None
        for variant in variants:
            out = work / f"{variant}.callgrind"
            gateway = _callgrind_gateway(town, out, ALL_THREADS, "--serve", variant)
            try:
                address = town.config.gateway.listen
                ours, page = asyncio.run(_count_calls(address, town, req, calls, gateway.pid, out))
            finally:
                _end_server(gateway)
            if bare_count is None:
                payload = work / "page.bin"
                payload.write_bytes(page)
                out = work / "bare.callgrind"
                bare = subprocess.Popen(
                    [
                        *CALLGRIND,
                        ALL_THREADS,
                        f"--callgrind-out-file={out}",
                        sys.executable,
                        "-m",
                        "allmende_cli.bench.bare_server",
                        "--query-bytes",
                        str(payload),
                        *("--ca", str(tls.ca), "--cert", str(tls.cert), "--key", str(tls.key)),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                )
                try:
                    assert bare.stdout is not None
                    address = f"127.0.0.1:{bare.stdout.readline().decode().strip()}"
                    bare_count, _ = asyncio.run(
                        _count_calls(address, town, req, calls, bare.pid, out)
                    )
                finally:
                    _end_server(bare)
            print(
                f"{variant:<12} {ours:>13,.0f} {bare_count:>13,.0f} {ours - bare_count:>+13,.0f}",
                flush=True,
            )
    return 0


# The parts of the Query handler --parts counts, as called in the gateway process.
PARTS = (
    "dataset look-up",
    "request bytes",
    "kept plan",
    "SQLite page",
    "page token",
    "page bytes",
    "audit entry",
    "whole handler",
)


def count_parts(calls: int) -> int:
    """Instructions per call of each part of the shipped gateway's Query handler, counted
    under callgrind inside the gateway process (see the module's docstring)."""
    _need_valgrind()
    req = query_pb2.QueryRequest(owner=OWNER, dataset=DATASET, purpose=PURPOSE, page_size=10)
    print(f"{'part of the Query handler (10 rows)':<36} {'instructions per call':>22}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        town = make_bench_town(work, 2000)
        out, order = work / "parts.callgrind", work / "part"
        served = ("--serve", "shipped", "--parts-file", str(order))
        gateway = _callgrind_gateway(town, out, EACH_THREAD, *served)
        try:
            asyncio.run(_warm(town, req))
            counted = {
                part: _count_part(gateway.pid, order, out, part, calls)
                for part in ("nothing", *PARTS)
            }
        finally:
            _end_server(gateway)
        empty = counted.pop("nothing")
        for part, total in counted.items():
            print(f"{part:<36} {(total - empty) / calls:>22,.0f}", flush=True)
    return 0


def _callgrind_gateway(town: Any, out: Path, threads: str, *serve: str) -> Any:
    """This script's ``--serve`` gateway under callgrind (counts to ``out``), listening."""
    log = out.with_suffix(".log")
    me = [sys.executable, __file__, "--config", str(town.config.path)]
    with open(log, "wb") as err:
        gateway = subprocess.Popen(
            [*CALLGRIND, threads, f"--callgrind-out-file={out}", *me, *serve],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        wait_for_port(town.config.gateway.listen, gateway, timeout_s=300, log=log)
    except BaseException:
        _end_server(gateway)
        raise
    return gateway


async def _warm(town: Any, req: query_pb2.QueryRequest) -> None:
    g = channel(town.config.gateway.listen, town.consumer_tls, town.server_name)
    try:
        call = query_caller(g)
        for _ in range(20):
            page = await call(req)
        if len(page.records) != 10:
            raise SystemExit(f"the gateway answered {page}")
    finally:
        await g.close()


def _count_part(pid: int, order: Path, out: Path, part: str, calls: int) -> int:
    """The instructions the main thread of process ``pid`` executes while it calls ``part``
    ``calls`` times. The two sides take turns: the gateway prepares the part and says
    ``ready``, waits for ``go`` (counting starts), calls it, says ``done`` and waits for
    ``dumped`` (counting ended), so nothing else it does falls inside the count."""
    for name in ("ready", "done"):
        order.with_suffix(f".{name}").unlink(missing_ok=True)
    for name in ("go", "dumped"):
        fifo = order.with_suffix(f".{name}")
        if not fifo.exists():
            os.mkfifo(fifo)
    order.write_text(f"{calls} {part}")
    os.kill(pid, signal.SIGUSR1)
    _wait_for(order.with_suffix(".ready"), part)
    _callgrind(pid, "--zero")
    order.with_suffix(".go").write_bytes(b"go")  # opens the fifo: the gateway goes on
    outcome = _wait_for(order.with_suffix(".done"), part)
    if outcome != "ok":
        raise SystemExit(f"calling {part!r} in the gateway failed: {outcome}")
    _callgrind(pid, "--dump=part")
    order.with_suffix(".dumped").write_bytes(b"dumped")
    # One file per thread and dump, <out>.<dump>-<thread>; the main thread is 01.
    dumps = sorted(out.parent.glob(f"{out.name}.*-01"), key=lambda f: f.stat().st_mtime)
    if not dumps:
        raise SystemExit(f"callgrind wrote no counts for the main thread next to {out}")
    return _instructions(dumps[-1])


def _wait_for(said: Path, part: str) -> str:
    """What the gateway wrote to ``said``, once it is there (it is written whole)."""
    deadline = time.monotonic() + 600
    while not said.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"the gateway did not say {said.suffix[1:]} for {part!r} in 600 s")
        time.sleep(0.02)
    return said.read_text()


async def _count_calls(
    address: str, town: Any, req: query_pb2.QueryRequest, calls: int, pid: int, out: Path
) -> tuple[float, bytes]:
    """Instructions per call that process ``pid`` (under callgrind, writing ``out``)
    executes for ``calls`` Query calls made one after another; and the page it answered."""
    g = channel(address, town.consumer_tls, town.server_name)
    try:
        call = query_caller(g)
        first = await call(req)
        if len(first.records) != 10:
            raise SystemExit(f"the server at {address} answered {first}")
        for _ in range(20):  # warm: the plan and the row cache are made, the channel is open
            await call(req)
        _callgrind(pid, "--zero")
        for _ in range(calls):
            await call(req)
        _callgrind(pid, "--dump=calls")
        dumps = sorted(out.parent.glob(f"{out.name}.*"), key=lambda f: f.stat().st_mtime)
        if not dumps:
            raise SystemExit(f"callgrind wrote no counts for {address} next to {out}")
        return _instructions(dumps[-1]) / calls, first.SerializeToString()
    finally:
        await g.close()


def _callgrind(pid: int, command: str) -> None:
    done = subprocess.run(
        ["callgrind_control", command, str(pid)], capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise SystemExit(f"callgrind_control {command} {pid} failed: {done.stdout}{done.stderr}")


def _instructions(dump: Path) -> int:
    """The instructions a callgrind dump counts (its ``summary:`` or ``totals:`` line)."""
    with open(dump, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise SystemExit(f"{dump} has no summary line: not a callgrind dump")


def _end_server(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    proc.terminate()
    try:
        proc.wait(60)  # callgrind writes its last counts on the way out
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


# -- the served side ---------------------------------------------------------------------


def serve(variant: str, config_path: Path, parts_file: Path | None = None) -> int:
    """Run the gateway of ``config_path`` with ``variant``'s handler until stdin closes;
    with ``parts_file``, SIGUSR1 calls the part of the handler it names (see count_parts)."""
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
    p.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions per call under callgrind instead of timing "
        f"(variants {', '.join(COUNTED)})",
    )
    p.add_argument("--calls", type=int, default=300, help="calls counted (default 300)")
    p.add_argument(
        "--parts",
        action="store_true",
        help="with --instructions: count each part of the shipped gateway's Query handler",
    )
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
    if args.calls < 1:
        p.error(f"--calls must be at least 1, not {args.calls}")
    if args.parts:
        if not args.instructions:
            p.error("--parts counts instructions: give --instructions too")
        if args.variants is not None:
            p.error("--parts counts the shipped gateway's handler: leave out --variants")
        return count_parts(args.calls)
    known = COUNTED if args.instructions else VARIANTS
    given = args.variants if args.variants is not None else ",".join(known)
    variants = [v.strip() for v in given.split(",") if v.strip()]
    if not variants:
        p.error("--variants names none; choose from " + ", ".join(known))
    unknown = [v for v in variants if v not in known]
    if unknown:
        p.error(f"unknown variant {', '.join(unknown)}; choose from {', '.join(known)}")
    if args.instructions:
        return count_instructions(variants, args.calls)
    return measure(variants, args.seconds, args.rounds)


if __name__ == "__main__":
    raise SystemExit(main())
