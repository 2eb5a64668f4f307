"""Instructions per Query call, counted under callgrind: the gateway's variants against the
bare server, or each part of the Query handler.

    .venv/bin/python scripts/query_instructions.py [--calls 300]
        [--variants shipped,no-audit,audit-only,from-memory]
    .venv/bin/python scripts/query_instructions.py --parts [--calls 500]

``scripts/query_latency_parts.py`` times the gateway's variants; this counts them. Each
server process (the variant's gateway as query_latency_parts.py serves it, then the bare
server answering with its bytes) runs under ``valgrind --tool=callgrind``, and the
instructions it executes in user space (all threads) for ``--calls`` Query calls, one in
flight, are divided by the calls, net of what the process executes idle for as long (its
timers and polls, which would otherwise fall on each call as often as callgrind slows the
call down). The count does not move with the machine's speed, so a
change to the handler shows in it however fast the machine is running that minute; it
leaves out the kernel (the wake-ups between threads, half of a bare server's CPU time here)
and counts SHA-256 in software (valgrind's CPU has no SHA instructions: some 35,000
instructions per audit entry that the real CPU does in about a microsecond).

With ``--parts`` it counts each part of the shipped gateway's Query handler instead, called
``--calls`` times in a row inside the gateway process (on its event loop, between calls)
with the arguments of the last Query it answered, with the cyclic garbage collector off and
only the main thread's instructions counted; a loop that calls nothing is counted too and
taken off. Needs valgrind (Debian: apt install valgrind).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

from allmende.v1 import query_pb2
from allmende_cli.bench.measure import channel, query_caller
from allmende_cli.bench.servers import wait_for_port
from allmende_cli.bench.town import DATASET, OWNER, PURPOSE, make_bench_town

# The gateway's variants, served by query_latency_parts.py (its thread-pool variant is not
# counted: the bare server counted beside them is grpc.aio's).
SERVER = Path(__file__).resolve().with_name("query_latency_parts.py")
VARIANTS = ("shipped", "no-audit", "audit-only", "from-memory")

CALLGRIND = ["valgrind", "--tool=callgrind", "--dump-instr=no"]
# A call's work is spread over grpc's threads: all of them are counted together. A part of
# the handler runs on the main thread alone, so only that thread is read (the others, the
# audit log's checkpoints among them, go on meanwhile).
ALL_THREADS, EACH_THREAD = "--separate-threads=no", "--separate-threads=yes"


def _need_valgrind() -> None:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("counting needs valgrind (Debian: apt install valgrind)")


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
        bare_count: Counted | None = None
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
                    port = bare.stdout.readline().decode().strip()
                    if not port.isdigit():
                        raise SystemExit(
                            f"the bare server under callgrind printed no port (it ended "
                            f"with {bare.poll()}); run it without valgrind to see why"
                        )
                    address = f"127.0.0.1:{port}"
                    bare_count, _ = asyncio.run(
                        _count_calls(address, town, req, calls, bare.pid, out)
                    )
                finally:
                    _end_server(bare)
            mine, theirs = ours.per_call, bare_count.per_call
            print(f"{variant:<12} {mine:>13,.0f} {theirs:>13,.0f} {mine - theirs:>+13,.0f}")
            print(
                f"{'':<12} idle work taken off per call: {ours.idle:,.0f} of the gateway's, "
                f"{bare_count.idle:,.0f} of the bare server's ({ours.seconds:.1f} s and "
                f"{bare_count.seconds:.1f} s of calls)",
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
    """query_latency_parts.py's ``--serve`` gateway under callgrind (counts to ``out``), listening."""
    log = out.with_suffix(".log")
    me = [sys.executable, str(SERVER), "--config", str(town.config.path)]
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


# How long, at least, a process is counted while it does nothing but wait: long enough to
# take in its timers (the gateway's trust and policy polls each second, its audit log's
# checkpoint every 10 s).
IDLE_S = 10.0


class Counted(NamedTuple):
    """Instructions per call, net of what the process executes when idle for as long as the
    calls took (``idle``, per call, already taken off)."""

    per_call: float
    idle: float
    seconds: float


async def _count_calls(
    address: str, town: Any, req: query_pb2.QueryRequest, calls: int, pid: int, out: Path
) -> tuple[Counted, bytes]:
    """Instructions per call that process ``pid`` (under callgrind, writing ``out``)
    executes for ``calls`` Query calls made one after another; and the page it answered.

    Under callgrind a call takes some fifty times as long, so the work a server does by
    the clock (timers, polls, the audit log's checkpoints) would fall on each call fifty
    times over: it is counted with the server idle, per second, and that much per second of
    calls is taken off.
    """
    g = channel(address, town.consumer_tls, town.server_name)
    try:
        call = query_caller(g)
        first = await call(req)
        if len(first.records) != 10:
            raise SystemExit(f"the server at {address} answered {first}")
        for _ in range(20):  # warm: the plan and the row cache are made, the channel is open
            await call(req)
        _callgrind(pid, "--zero")
        start = time.monotonic()
        for _ in range(calls):
            await call(req)
        took = time.monotonic() - start
        busy = _last_dump(pid, out, "calls")
        _callgrind(pid, "--zero")
        start = time.monotonic()
        await asyncio.sleep(max(took, IDLE_S))
        waited = time.monotonic() - start
        idle = _last_dump(pid, out, "idle") * took / waited / calls
        return Counted(busy / calls - idle, idle, took), first.SerializeToString()
    finally:
        await g.close()


def _last_dump(pid: int, out: Path, name: str) -> int:
    """The instructions process ``pid`` executed since its counters were zeroed."""
    _callgrind(pid, f"--dump={name}")
    dumps = sorted(out.parent.glob(f"{out.name}.*"), key=lambda f: f.stat().st_mtime)
    if not dumps:
        raise SystemExit(f"callgrind wrote no counts for process {pid} next to {out}")
    return _instructions(dumps[-1])


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--calls", type=int, default=300, help="calls counted (default 300)")
    p.add_argument("--variants", help=f"comma-separated, of {', '.join(VARIANTS)} (default: all)")
    p.add_argument(
        "--parts", action="store_true", help="count each part of the shipped gateway's handler"
    )
    args = p.parse_args(argv)
    if args.calls < 1:
        p.error(f"--calls must be at least 1, not {args.calls}")
    if args.parts:
        if args.variants is not None:
            p.error("--parts counts the shipped gateway's handler: leave out --variants")
        return count_parts(args.calls)
    given = args.variants if args.variants is not None else ",".join(VARIANTS)
    variants = [v.strip() for v in given.split(",") if v.strip()]
    if not variants:
        p.error("--variants names none; choose from " + ", ".join(VARIANTS))
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    return count_instructions(variants, args.calls)


if __name__ == "__main__":
    raise SystemExit(main())
