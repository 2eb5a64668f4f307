"""Query through a real gateway (mutual TLS, the owner's Rego policy, SQLite, the audit log)
against a bare server returning the same bytes; and mutual TLS against plaintext on warm bare
channels.

The gateway (``allmende gateway run``) and the bare server each run as a process of their own,
the client in the bench's process: no side shares an interpreter (and its GIL) with the client.
"""

from __future__ import annotations

import asyncio
from functools import partial

from allmende.v1 import query_pb2

from .measure import (
    Row,
    channel,
    compare_latency_p50_us,
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


def _request(rows: int) -> query_pb2.QueryRequest:
    return query_pb2.QueryRequest(owner=OWNER, dataset=DATASET, purpose=PURPOSE, page_size=rows)


async def _measure(town: BenchTown, gateway: str, seconds: float) -> list[Row]:
    rows: list[Row] = []
    gw_ch = channel(gateway, town.consumer_tls, town.server_name)
    try:
        gw_query = query_caller(gw_ch)
        for size in (10, 100):
            req = _request(size)
            first = await gw_query(req)
            assert len(first.records) == size, f"gateway sent {len(first.records)} rows"
            with bare_process(town.owner_tls, first.SerializeToString(), town.dir) as bare:
                bare_ch = channel(bare, town.consumer_tls, town.server_name)
                try:
                    bare_query = query_caller(bare_ch)
                    ours, base = await compare_throughput(
                        partial(gw_query, req), partial(bare_query, req), seconds, IN_FLIGHT
                    )
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
                                f"{len(first.SerializeToString()):,} response bytes "
                                f"{base:,.0f} req/s"
                            ),
                        )
                    )
                    if size == 10:
                        ours_p50, base_p50 = await compare_latency_p50_us(
                            partial(gw_query, req), partial(bare_query, req), seconds
                        )
                        diff = ours_p50 - base_p50
                        rows.append(
                            Row(
                                what="query 10 rows p50, 1 in flight",
                                ours=ours_p50,
                                baseline=base_p50,
                                unit="us",
                                ratio=diff,
                                target=f"<= +{LATENCY_TARGET_US:.0f} µs",
                                ok=diff <= LATENCY_TARGET_US,
                                note=(
                                    f"p50 {ours_p50:,.0f} µs vs bare {base_p50:,.0f} µs: "
                                    f"{diff:+,.0f} µs"
                                ),
                            )
                        )
                finally:
                    await bare_ch.close()
        rows.append(await _mtls_vs_plain(town, first.SerializeToString(), seconds))
    finally:
        await gw_ch.close()
    return rows


async def _mtls_vs_plain(town: BenchTown, response: bytes, seconds: float) -> Row:
    req = _request(100)
    with (
        bare_process(town.owner_tls, response, town.dir) as tls_srv,
        bare_process(None, response, town.dir) as plain_srv,
    ):
        tls_ch = channel(tls_srv, town.consumer_tls, town.server_name)
        plain_ch = channel(plain_srv, None)
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
    with gateway_process(town.config.path, address):
        return asyncio.run(_measure(town, address, seconds))
