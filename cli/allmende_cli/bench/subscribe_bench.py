"""Subscribe and SubscribeBatches from the beginning through the gateway, each against a bare
server streaming the same bytes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from google.protobuf.message import Message

from allmende.v1 import query_pb2

from .measure import Row, alternating_rates, channel
from .servers import bare_process, gateway_process
from .town import DATASET, OWNER, PURPOSE, BenchTown

__all__ = ["run_subscribe_benchmark"]

TARGET = 0.8
TARGET_RECORDS_S = 100_000
BATCH = 500

Drain = Callable[[query_pb2.SubscribeRequest, int], Awaitable[list[Message]]]


def _subscribe_caller(ch: Any) -> Callable[..., Any]:
    return ch.unary_stream(
        "/allmende.v1.QueryService/Subscribe",
        request_serializer=query_pb2.SubscribeRequest.SerializeToString,
        response_deserializer=query_pb2.ChangeEvent.FromString,
    )


def _batches_caller(ch: Any) -> Callable[..., Any]:
    return ch.unary_stream(
        "/allmende.v1.QueryService/SubscribeBatches",
        request_serializer=query_pb2.SubscribeRequest.SerializeToString,
        response_deserializer=query_pb2.ChangeBatch.FromString,
    )


async def _drain(subscribe: Callable[..., Any], req: query_pb2.SubscribeRequest, want: int) -> list:
    """The first ``want`` events that carry a record, then cancel (the stream stays live)."""
    call = subscribe(req)
    events = []
    got = 0
    try:
        async for event in call:
            events.append(event)
            if event.HasField("record"):
                got += 1
                if got >= want:
                    break
    finally:
        call.cancel()
    return events


async def _drain_batches(
    subscribe: Callable[..., Any], req: query_pb2.SubscribeRequest, want: int
) -> list:
    """The batches holding the first ``want`` events, then cancel."""
    call = subscribe(req)
    batches = []
    got = 0
    try:
        async for batch in call:
            batches.append(batch)
            got += len(batch.events)
            if got >= want:
                break
    finally:
        call.cancel()
    return batches


def _bound(drain: Callable[..., Any], caller: Callable[..., Any]) -> Drain:
    async def run(req: query_pb2.SubscribeRequest, n: int) -> list[Message]:
        return list(await drain(caller, req, n))

    return run


async def _measure(town: BenchTown, gateway: str, seconds: float) -> list[Row]:
    n = town.rows
    req = query_pb2.SubscribeRequest(
        owner=OWNER, dataset=DATASET, purpose=PURPOSE, start=query_pb2.START_FROM_BEGINNING
    )
    batched = query_pb2.SubscribeRequest()
    batched.CopyFrom(req)
    batched.max_batch = BATCH
    gw_ch = channel(gateway, town.consumer_tls, town.server_name)
    try:
        gw_events = _bound(_drain, _subscribe_caller(gw_ch))
        gw_batches = _bound(_drain_batches, _batches_caller(gw_ch))
        # The first stream finds the gateway's row cache cold (each record is masked once per
        # grant, then spliced): its rate is reported beside the warm one measured below.
        start = time.perf_counter()
        batches = [b.SerializeToString() for b in await gw_batches(batched, n)]
        cold = n / (time.perf_counter() - start)
        events = [e.SerializeToString() for e in await gw_events(req, n)]
        with bare_process(
            town.owner_tls,
            b"",
            town.dir,
            stream_bytes=events,
            batch_bytes=batches,
            loop=town.config.gateway.event_loop,  # the gateway's loop
        ) as bare:
            bare_ch = channel(bare.address, town.consumer_tls, town.server_name)
            try:
                bare_events = _bound(_drain, _subscribe_caller(bare_ch))
                bare_batches = _bound(_drain_batches, _batches_caller(bare_ch))
                ours, base = await alternating_rates(
                    partial(gw_events, req, n), partial(bare_events, req, n), n, seconds
                )
                ours_b, base_b = await alternating_rates(
                    partial(gw_batches, batched, n), partial(bare_batches, batched, n), n, seconds
                )
            finally:
                await bare_ch.close()
    finally:
        await gw_ch.close()
    ratio, ratio_b = ours / base, ours_b / base_b
    return [
        Row(
            what=f"subscribe from start, {n:,} changes",
            ours=ours,
            baseline=base,
            unit="rec/s",
            ratio=ratio,
            target=f">= {TARGET:.2f}x",
            ok=ratio >= TARGET,
            note=(
                f"Subscribe, one ChangeEvent per record: gateway {ours:,.0f} records/s vs a "
                f"bare stream of the same {sum(map(len, events)):,} bytes {base:,.0f} records/s"
            ),
        ),
        Row(
            what=f"subscribe batches from start, {n:,} changes",
            ours=ours_b,
            baseline=base_b,
            unit="rec/s",
            ratio=ratio_b,
            target=f">= {TARGET_RECORDS_S:,} rec/s",
            ok=ours_b >= TARGET_RECORDS_S,
            note=(
                f"SubscribeBatches, max_batch {BATCH}: gateway {ours_b:,.0f} records/s vs a bare "
                f"stream of the same {len(batches)} ChangeBatch messages "
                f"({sum(map(len, batches)):,} bytes) {base_b:,.0f} records/s ({ratio_b:.2f}x); "
                f"the first stream, with the row cache cold, {cold:,.0f} records/s"
            ),
            extra={"cold_records_per_s": cold},
        ),
    ]


def run_subscribe_benchmark(town: BenchTown, seconds: float) -> list[Row]:
    """The gateway and the bare server each in a process of their own, as for Query: the
    client decoding what they stream does not share their interpreter."""
    address = town.config.gateway.listen
    with gateway_process(town.config.path, address):
        return asyncio.run(_measure(town, address, seconds))
