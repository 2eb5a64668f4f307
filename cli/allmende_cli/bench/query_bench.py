"""Query through a real gateway (mutual TLS, the owner's Rego policy, SQLite, the audit log)
against a bare server returning the same bytes; and mutual TLS against plaintext on warm bare
channels.

The gateway (``allmende gateway run``) and the bare server each run as a process of their own,
the client in the bench's process: no side shares an interpreter (and its GIL) with the client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from allmende.v1 import query_pb2

from .measure import (
    SHOWN_ONLY,
    Row,
    channel,
    compare_latency,
    compare_throughput,
    query_caller,
)
from .servers import bare_process, gateway_process
from .town import DATASET, OWNER, PURPOSE, BenchTown

__all__ = ["run_query_benchmarks"]

IN_FLIGHT = 32
THROUGHPUT_TARGETS = {10: 0.65, 100: 0.45}
LATENCY_TARGET_US = 120.0
MTLS_TARGET = 0.9
# The bare thread-pool server's threads: as fast as one at 32 in flight here (2026-12-02).
BARE_WORKERS = 8


def _request(rows: int) -> query_pb2.QueryRequest:
    return query_pb2.QueryRequest(owner=OWNER, dataset=DATASET, purpose=PURPOSE, page_size=rows)


async def _measure(town: BenchTown, gateway: str, gateway_pid: int, seconds: float) -> list[Row]:
    rows: list[Row] = []
    gw_ch = channel(gateway, town.consumer_tls, town.server_name)
    try:
        gw_query = query_caller(gw_ch)
        for size in (10, 100):
            req = _request(size)
            first = await gw_query(req)
            assert len(first.records) == size, f"gateway sent {len(first.records)} rows"
            response = first.SerializeToString()
            gw = partial(gw_query, req)
            loop = town.config.gateway.event_loop  # the bare server on the gateway's loop
            with bare_process(town.owner_tls, response, town.dir, loop=loop) as bare:
                bare_ch = channel(bare.address, town.consumer_tls, town.server_name)
                try:
                    bare_query = partial(query_caller(bare_ch), req)
                    # The p50 first: a server answers slower at one call in flight for
                    # seconds after calls 32 at a time, and the side whose throughput slice
                    # came last would be the slower (README, Speed).
                    latency: list[Row] = []
                    if size == 10:
                        latency = await _latency(gw, bare_query, seconds, (gateway_pid, bare.pid))
                    ours, base = await compare_throughput(gw, bare_query, seconds, IN_FLIGHT)
                    target = THROUGHPUT_TARGETS[size]
                    ratio = ours / base
                    rows.append(
                        Row(
                            what=f"query {size} rows, {IN_FLIGHT} in flight",
                            ours=ours,
                            baseline=base,
                            unit="req/s",
                            ratio=ratio,
                            target=f">= {target:.2f}x",
                            ok=ratio >= target,
                            note=(
                                f"gateway process (mTLS + Rego + SQLite + audit) {ours:,.0f} "
                                f"req/s vs a bare grpc.aio process sending the same "
                                f"{len(response):,} response bytes {base:,.0f} req/s"
                            ),
                        )
                    )
                    rows += latency
                finally:
                    await bare_ch.close()
            if size == 10:
                rows += await _against_thread_pool(town, gw, gateway_pid, response, seconds)
        rows.append(await _mtls_vs_plain(town, response, seconds))
    finally:
        await gw_ch.close()
    return rows


async def _against_thread_pool(
    town: BenchTown,
    gw: Callable[[], Awaitable[Any]],
    gateway_pid: int,
    response: bytes,
    seconds: float,
) -> list[Row]:
    """The gateway against a bare server on grpc's thread-pool server, shown only: the
    judged rows compare it with a bare server of its own serving model (grpc.aio), and a
    bare thread-pool server answers faster (README, Speed)."""
    with bare_process(town.owner_tls, response, town.dir, workers=BARE_WORKERS) as bare:
        bare_ch = channel(bare.address, town.consumer_tls, town.server_name)
        try:
            bare_query = partial(query_caller(bare_ch), _request(10))
            mine, theirs = await compare_latency(gw, bare_query, seconds, (gateway_pid, bare.pid))
            ours, base = await compare_throughput(gw, bare_query, seconds, IN_FLIGHT)
        finally:
            await bare_ch.close()
    diff = mine.p50_us - theirs.p50_us
    server = f"a bare thread-pool process ({BARE_WORKERS} workers)"
    return [
        Row(
            what=f"query 10 rows, {IN_FLIGHT} in flight, vs bare thread-pool",
            ours=ours,
            baseline=base,
            unit="req/s",
            ratio=ours / base,
            target=SHOWN_ONLY,
            ok=True,
            note=f"gateway process {ours:,.0f} req/s vs {server} {base:,.0f} req/s",
        ),
        Row(
            what="query 10 rows p50, 1 in flight, vs bare thread-pool",
            ours=mine.p50_us,
            baseline=theirs.p50_us,
            unit="us",
            ratio=diff,
            target=SHOWN_ONLY,
            ok=True,
            note=f"p50 {mine.p50_us:,.0f} µs vs {server} {theirs.p50_us:,.0f} µs: {diff:+,.0f} µs",
        ),
    ]


async def _latency(
    ours: Callable[[], Awaitable[Any]],
    base: Callable[[], Awaitable[Any]],
    seconds: float,
    pids: tuple[int, int],
) -> list[Row]:
    """The p50 at one call in flight, judged, and the CPU each server process spent per
    call meanwhile, shown beside it."""
    gw, bare = await compare_latency(ours, base, seconds, pids)
    diff = gw.p50_us - bare.p50_us
    rows = [
        Row(
            what="query 10 rows p50, 1 in flight",
            ours=gw.p50_us,
            baseline=bare.p50_us,
            unit="us",
            ratio=diff,
            target=f"<= +{LATENCY_TARGET_US:.0f} µs",
            ok=diff <= LATENCY_TARGET_US,
            note=f"p50 {gw.p50_us:,.0f} µs vs bare {bare.p50_us:,.0f} µs: {diff:+,.0f} µs",
        )
    ]
    if gw.cpu_per_call_us is not None and bare.cpu_per_call_us is not None:
        more = gw.cpu_per_call_us - bare.cpu_per_call_us
        rows.append(
            Row(
                what="query 10 rows, server CPU per call, 1 in flight",
                ours=gw.cpu_per_call_us,
                baseline=bare.cpu_per_call_us,
                unit="us",
                ratio=more,
                target=SHOWN_ONLY,
                ok=True,
                note=(
                    f"CPU time of the gateway process (all threads) per call during the p50 "
                    f"run {gw.cpu_per_call_us:,.0f} µs vs the bare process "
                    f"{bare.cpu_per_call_us:,.0f} µs: {more:+,.0f} µs (from /proc: the servers' "
                    "own work in the p50, without their waits)"
                ),
            )
        )
    return rows


async def _mtls_vs_plain(town: BenchTown, response: bytes, seconds: float) -> Row:
    req = _request(100)
    loop = town.config.gateway.event_loop
    with (
        bare_process(town.owner_tls, response, town.dir, loop=loop) as tls_srv,
        bare_process(None, response, town.dir, loop=loop) as plain_srv,
    ):
        tls_ch = channel(tls_srv.address, town.consumer_tls, town.server_name)
        plain_ch = channel(plain_srv.address, None)
        try:
            tls_q, plain_q = query_caller(tls_ch), query_caller(plain_ch)
            ours, base = await compare_throughput(
                partial(tls_q, req), partial(plain_q, req), seconds, IN_FLIGHT
            )
        finally:
            await tls_ch.close()
            await plain_ch.close()
    ratio = ours / base
    return Row(
        what="mTLS vs plaintext, bare, warm",
        ours=ours,
        baseline=base,
        unit="req/s",
        ratio=ratio,
        target=f">= {MTLS_TARGET:.2f}x",
        ok=ratio >= MTLS_TARGET,
        note=f"bare server, 100-row response, {IN_FLIGHT} in flight: mutual TLS vs plaintext",
    )


def run_query_benchmarks(town: BenchTown, seconds: float) -> list[Row]:
    """Rows for query throughput (10, 100 rows), p50 latency and mTLS vs plaintext."""
    address = town.config.gateway.listen
    with gateway_process(town.config.path, address) as gateway:
        return asyncio.run(_measure(town, address, gateway.pid, seconds))
