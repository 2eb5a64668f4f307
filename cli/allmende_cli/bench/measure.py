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
    "Row",
    "channel",
    "latency_p50_us",
    "percentile",
    "query_caller",
    "throughput",
]


@dataclass
class Row:
    """One line of the table: ``ours`` against ``baseline``, and the issue's target."""

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


async def latency_p50_us(call: Callable[[], Awaitable[Any]], seconds: float) -> float:
    """Median latency in µs with one call in flight."""
    for _ in range(20):
        await call()
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(samples) < 20:
        t0 = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e6
