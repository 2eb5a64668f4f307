"""The query bench measures the p50 at one call in flight before the throughput at 32 in flight.

After calls 32 at a time a server answers slower at one call in flight for seconds, and the
side whose throughput slice came last is the slower one (README, Speed): measured the other
way round, the bare server (whose slice came last) lost some 60-100 µs and the gateway's p50
gap looked that much smaller. The servers and the measuring are stood in for here: this test
is about the order of the phases, which tests/e2e/test_bench.py cannot see.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from allmende.v1 import query_pb2
from allmende_cli.bench import query_bench
from allmende_cli.bench.measure import Latency, Row


class _Channel:
    def __init__(self, address: str) -> None:
        self.address = address

    async def close(self) -> None:
        pass


def _caller(ch: _Channel) -> Callable[[query_pb2.QueryRequest], Awaitable[Any]]:
    async def call(req: query_pb2.QueryRequest) -> query_pb2.QueryResponse:
        records = [query_pb2.Record(id=str(i), json="{}") for i in range(req.page_size)]
        return query_pb2.QueryResponse(records=records)

    return call


def test_the_p50_is_measured_before_the_throughput(monkeypatch: pytest.MonkeyPatch) -> None:
    phases: list[str] = []

    @contextmanager
    def bare(
        tls: object, response: bytes, workdir: Path, workers: int = 0, loop: str = ""
    ) -> Iterator[SimpleNamespace]:
        # The grpc.aio bare server runs on the gateway's event loop.
        phases.append("bare thread-pool server" if workers else f"bare server on {loop}")
        yield SimpleNamespace(address="127.0.0.1:2", pid=2)

    async def latency(*args: object) -> tuple[Latency, Latency]:
        phases.append("p50, 1 in flight")
        return Latency(500.0, 400.0), Latency(400.0, 300.0)

    async def rates(ours: object, base: object, seconds: float, in_flight: int) -> tuple:
        phases.append(f"throughput, {in_flight} in flight")
        return 2.0, 3.0

    async def mtls(*args: object) -> Row:
        return Row("mTLS vs plaintext", 1.0, 1.0, "req/s", 1.0, ">= 0.90x", True, "")

    monkeypatch.setattr(query_bench, "channel", lambda address, *a: _Channel(address))
    monkeypatch.setattr(query_bench, "query_caller", _caller)
    monkeypatch.setattr(query_bench, "bare_process", bare)
    monkeypatch.setattr(query_bench, "compare_latency", latency)
    monkeypatch.setattr(query_bench, "compare_throughput", rates)
    monkeypatch.setattr(query_bench, "_mtls_vs_plain", mtls)
    town = SimpleNamespace(
        consumer_tls=None,
        server_name="",
        owner_tls=None,
        dir=Path("/nonexistent"),
        config=SimpleNamespace(gateway=SimpleNamespace(event_loop="asyncio")),
    )

    rows = asyncio.run(query_bench._measure(town, "127.0.0.1:1", 1, 0.1))  # type: ignore[arg-type]

    assert phases == [
        "bare server on asyncio",
        "p50, 1 in flight",
        "throughput, 32 in flight",
        "bare thread-pool server",
        "p50, 1 in flight",
        "throughput, 32 in flight",
        "bare server on asyncio",
        "throughput, 32 in flight",
    ]
    # The rows keep their order: throughput, then the p50 and CPU beside it.
    assert [r.what for r in rows] == [
        "query 10 rows, 32 in flight",
        "query 10 rows p50, 1 in flight",
        "query 10 rows, server CPU per call, 1 in flight",
        "query 10 rows, 32 in flight, vs bare thread-pool",
        "query 10 rows p50, 1 in flight, vs bare thread-pool",
        "query 100 rows, 32 in flight",
        "mTLS vs plaintext",
    ]
