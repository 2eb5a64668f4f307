"""Timing helpers and the row type every benchmark returns."""

from __future__ import annotations

import asyncio
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
    "Row",
    "channel",
    "compare_latency_p50_us",
    "compare_throughput",
    "latency_p50_us",
    "latency_samples",
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


# Each comparison alternates its two sides this many times: a machine whose speed drifts
# (other work, frequency) then slows both sides alike instead of whichever ran second.
ROUNDS = 3


async def compare_throughput(
    ours: Callable[[], Awaitable[Any]],
    base: Callable[[], Awaitable[Any]],
    seconds: float,
    in_flight: int = 32,
    rounds: int = ROUNDS,
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


async def compare_latency_p50_us(
    ours: Callable[[], Awaitable[Any]],
    base: Callable[[], Awaitable[Any]],
    seconds: float,
    rounds: int = ROUNDS,
) -> tuple[float, float]:
    """Median latency in µs (one call in flight) of ``ours`` and ``base``, sampled in
    ``rounds`` alternating slices of ``seconds / rounds`` each."""
    samples: dict[int, list[float]] = {id(ours): [], id(base): []}
    for _ in range(rounds):
        for call in (ours, base):
            samples[id(call)] += await latency_samples(call, seconds / rounds)
    return statistics.median(samples[id(ours)]) * 1e6, statistics.median(samples[id(base)]) * 1e6


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


async def latency_samples(call: Callable[[], Awaitable[Any]], seconds: float) -> list[float]:
    """Seconds per call, one call in flight, for ``seconds`` (at least 20 calls)."""
    for _ in range(20):
        await call()
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(samples) < 20:
        t0 = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - t0)
    return samples


async def latency_p50_us(call: Callable[[], Awaitable[Any]], seconds: float) -> float:
    """Median latency in µs with one call in flight."""
    return statistics.median(await latency_samples(call, seconds)) * 1e6
