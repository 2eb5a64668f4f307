"""Timing helpers and the row type every benchmark returns."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc

from allmende.identity import TlsFiles
from allmende.v1 import query_pb2

__all__ = [
    "ROUNDS",
    "SHOWN_ONLY",
    "THROUGHPUT_ROUNDS",
    "Latency",
    "Row",
    "alternating_rates",
    "channel",
    "compare_latency",
    "compare_throughput",
    "cpu_seconds",
    "machine_speed",
    "paired_samples",
    "percentile",
    "query_caller",
    "throughput",
]


SHOWN_ONLY = "—"


@dataclass
class Row:
    """One line of the table: ``ours`` against ``baseline``, and the issue's target
    (SHOWN_ONLY for a figure shown beside a judged one, with no target of its own)."""

    what: str
    ours: float
    baseline: float | None
    unit: str
    ratio: float  # the figure compared with the target (a ratio, or a difference in µs)
    target: str  # e.g. ">= 0.65x", "<= 120 us"
    ok: bool
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    idx = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[idx]


def channel(address: str, tls: TlsFiles | None, server_name: str = "") -> grpc.aio.Channel:
    if tls is None:
        return grpc.aio.insecure_channel(address)
    ca, cert, key = tls.read()
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(ca, key, cert), options)


def query_caller(ch: grpc.aio.Channel) -> Callable[[query_pb2.QueryRequest], Awaitable[Any]]:
    """The same client-side cost for both sides: serialise the request, parse the response."""
    return ch.unary_unary(
        "/allmende.v1.QueryService/Query",
        request_serializer=query_pb2.QueryRequest.SerializeToString,
        response_deserializer=query_pb2.QueryResponse.FromString,
    )


# The policy bench alternates its two kinds of request this many times: a machine whose
# speed drifts (other work, frequency) then slows both alike instead of whichever ran
# second. Latency is sampled call by call in pairs (paired_samples).
ROUNDS = 3
# Throughput comparisons alternate their sides in this many slices each. This machine's
# speed changes within seconds: two identical bare servers measured 0.94-1.09x against each
# other in 3 slices of a second per side, 0.94-1.06x in 10 slices; the gateway against a
# bare server 0.58-0.75x and 0.63-0.71x (eight runs each, 2026-12-02).
THROUGHPUT_ROUNDS = 10


async def compare_throughput(
    ours: Callable[[], Awaitable[Any]],
    base: Callable[[], Awaitable[Any]],
    seconds: float,
    in_flight: int = 32,
    rounds: int = THROUGHPUT_ROUNDS,
) -> tuple[float, float]:
    """Calls per second of ``ours`` and ``base``, each measured ``seconds`` in all, in
    ``rounds`` alternating slices."""
    done = {id(ours): 0.0, id(base): 0.0}
    spent = dict.fromkeys(done, 0.0)
    for _ in range(rounds):
        for call in (ours, base):
            start = time.perf_counter()
            rate = await throughput(call, seconds / rounds, in_flight)
            took = time.perf_counter() - start
            done[id(call)] += rate * took
            spent[id(call)] += took
    return done[id(ours)] / spent[id(ours)], done[id(base)] / spent[id(base)]


async def alternating_rates(
    ours: Callable[[], Awaitable[Any]],
    base: Callable[[], Awaitable[Any]],
    units: int,
    seconds: float,
) -> tuple[float, float]:
    """Units per second of ``ours`` and ``base``, each call of either doing ``units`` (a
    stream of that many records, a batch published): one call of each side in turn, the side
    that goes first alternating, for about ``seconds`` per side, after one call of each to
    warm up. Calls of a second or less, taken in turn, meet the machine in the same states;
    one slice per side did not (the Subscribe ratio moved between 0.71x and 1.54x)."""
    await ours()
    await base()
    sides = (ours, base)
    spent = [0.0, 0.0]
    calls = [0, 0]
    clock = time.perf_counter
    turn = 0
    while sum(spent) < 2 * seconds or min(calls) == 0:
        for side in (0, 1) if turn % 2 == 0 else (1, 0):
            start = clock()
            await sides[side]()
            spent[side] += clock() - start
            calls[side] += 1
        turn += 1
    return calls[0] * units / spent[0], calls[1] * units / spent[1]


@dataclass(frozen=True)
class Latency:
    """One side of a latency comparison: the median round trip and, when the server's
    process was given, the CPU time (all its threads) that process spent per call."""

    p50_us: float
    cpu_per_call_us: float | None = None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds that process ``pid`` (all its threads) has used so far;
    None where there is no /proc (not Linux) or the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except OSError:
        return None
    # After the command's closing parenthesis: state is field 3, utime 14 and stime 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def compare_latency(
    ours: Callable[[], Awaitable[Any]],
    base: Callable[[], Awaitable[Any]],
    seconds: float,
    pids: tuple[int, int] | None = None,
) -> tuple[Latency, Latency]:
    """Latency with one call in flight of ``ours`` and ``base``, each for about ``seconds``,
    sampled in pairs (``paired_samples``); with ``pids`` (the two servers' processes) also
    the CPU each server spent per call, read from /proc before and after.

    The CPU per call is what a server itself does for a call, without the time it waits
    for the client, the scheduler or a wake-up: how much of a p50 gap is the server's own
    work. Each server serves only its own side's calls, so its CPU over the whole run,
    divided by its calls, is its own.
    """
    before = [None if pids is None else cpu_seconds(pid) for pid in pids or (0, 0)]
    samples = await paired_samples(ours, base, 2 * seconds)
    after = [None if pids is None else cpu_seconds(pid) for pid in pids or (0, 0)]

    def side(i: int) -> Latency:
        calls, start, end = samples[i], before[i], after[i]
        per_call = None if start is None or end is None else (end - start) / len(calls) * 1e6
        return Latency(statistics.median(calls) * 1e6, per_call)

    return side(0), side(1)


async def paired_samples(
    ours: Callable[[], Awaitable[Any]], base: Callable[[], Awaitable[Any]], seconds: float
) -> tuple[list[float], list[float]]:
    """Seconds per call of ``ours`` and of ``base``, one call in flight, for ``seconds`` in
    all (at least 20 pairs): a call of one side, then a call of the other, the side that
    goes first alternating. Both sides thus meet the machine in the same state. This
    machine's speed changes within seconds, and slices of a second per side put the two
    in different phases: the p50 gap then moved by several hundred µs from run to run."""
    for _ in range(20):  # warm both channels and servers
        await ours()
        await base()
    taken: tuple[list[float], list[float]] = ([], [])
    clock = time.perf_counter
    deadline = clock() + seconds
    pairs = 0
    while clock() < deadline or pairs < 20:
        first, second = (0, 1) if pairs % 2 == 0 else (1, 0)
        calls = (ours, base)
        t0 = clock()
        await calls[first]()
        t1 = clock()
        await calls[second]()
        t2 = clock()
        taken[first].append(t1 - t0)
        taken[second].append(t2 - t1)
        pairs += 1
    return taken


async def throughput(
    call: Callable[[], Awaitable[Any]], seconds: float, in_flight: int = 32
) -> float:
    """Completed calls per second with ``in_flight`` tasks each calling in a loop."""
    for _ in range(in_flight):  # warm the channel and the server
        await call()
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await call()
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return done / (time.perf_counter() - start)


def machine_speed(seconds: float = 0.3) -> float:
    """Millions of steps per second of a fixed pure-Python loop, measured now.

    Not a target: it tells which speed a run met. This machine runs the same code at
    speeds that differ by half and change without notice; the bench measures it before
    each part, so that a run's absolute figures (µs, records/s) can be read against it.
    """
    steps, chunk = 0, 20_000
    end = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < end:
        n = 0
        for i in range(chunk):
            n += i
        steps += chunk
    return steps / (time.perf_counter() - start) / 1e6
