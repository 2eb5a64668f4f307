"""Bounded memory: the gateway holds one page, not the result.

The owner's gateway runs as its own process (``allmende gateway run``), so its resident
memory can be read from /proc. A consumer pages through every row of the dataset with
Query, then reads every change from the beginning with Subscribe. The peak RSS after the
first tenth of the rows is the baseline; if the gateway held the result, the peak after all
of them would grow with the rows, so the ratio of the two is the figure (target ≤ 1.10x).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from allmende.errors import AllmendeError
from allmende.v1 import query_pb2

from .measure import Row, channel, query_caller
from .servers import gateway_process
from .subscribe_bench import _subscribe_caller
from .town import DATASET, OWNER, PURPOSE, BenchTown

__all__ = ["peak_rss_mb", "rss_mb", "run_memory_benchmark"]

PAGE = 1000
TARGET = 1.10


def _status_kb(pid: int, key: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except OSError as exc:
        raise AllmendeError(f"cannot read the memory of process {pid}: {exc.strerror}") from exc
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AllmendeError(f"/proc/{pid}/status has no {key} (not Linux?)")


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` now, in MB."""
    return _status_kb(pid, "VmRSS") / 1024


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory of ``pid`` so far (VmHWM), in MB."""
    return _status_kb(pid, "VmHWM") / 1024


async def _query_all(town: BenchTown, address: str, pid: int, tenth: int) -> tuple[int, float]:
    """Page through every row; returns (rows, peak RSS after the first tenth)."""
    ch = channel(address, town.consumer_tls, town.server_name)
    try:
        query = query_caller(ch)
        req = query_pb2.QueryRequest(owner=OWNER, dataset=DATASET, purpose=PURPOSE, page_size=PAGE)
        rows, early = 0, 0.0
        while True:
            page = await query(req)
            rows += len(page.records)
            if not early and rows >= tenth:
                early = peak_rss_mb(pid)
            if not page.next_page_token:
                return rows, early or peak_rss_mb(pid)
            req.page_token = page.next_page_token
    finally:
        await ch.close()


async def _subscribe_all(
    town: BenchTown, address: str, pid: int, want: int, tenth: int
) -> tuple[int, float]:
    """Every change from the beginning; returns (records, peak RSS after the first tenth)."""
    ch = channel(address, town.consumer_tls, town.server_name)
    call = _subscribe_caller(ch)(
        query_pb2.SubscribeRequest(
            owner=OWNER, dataset=DATASET, purpose=PURPOSE, start=query_pb2.START_FROM_BEGINNING
        )
    )
    got, early = 0, 0.0
    try:
        async for event in call:
            if event.HasField("record"):
                got += 1
                if not early and got >= tenth:
                    early = peak_rss_mb(pid)
                if got >= want:
                    break
    finally:
        call.cancel()
        await ch.close()
    return got, early or peak_rss_mb(pid)


def _row(what: str, early: float, peak: float, n: int, seconds: float, unit: str) -> Row:
    ratio = peak / early
    return Row(
        what=what,
        ours=peak,
        baseline=early,
        unit="MB",
        ratio=ratio,
        target=f"<= {TARGET:.2f}x",
        ok=ratio <= TARGET,
        note=(
            f"peak RSS of the gateway process {peak:,.0f} MB after {n:,} {unit} vs "
            f"{early:,.0f} MB after the first tenth ({seconds:.1f} s, {n / seconds:,.0f} {unit}/s)"
        ),
    )


def run_memory_benchmark(town: BenchTown) -> list[Row]:
    """Query and Subscribe over all of ``town``'s rows through a gateway process."""
    address = town.config.gateway.listen
    with gateway_process(town.config.path, address) as proc:
        tenth = max(town.rows // 10, 1)
        start = time.perf_counter()
        rows, early = asyncio.run(_query_all(town, address, proc.pid, tenth))
        q_seconds = time.perf_counter() - start
        q_peak = peak_rss_mb(proc.pid)
        if rows != town.rows:
            raise AllmendeError(f"the query returned {rows} of {town.rows} rows")
        start = time.perf_counter()
        got, s_early = asyncio.run(_subscribe_all(town, address, proc.pid, town.rows, tenth))
        s_seconds = time.perf_counter() - start
        s_peak = peak_rss_mb(proc.pid)
    return [
        _row(f"query all {town.rows:,} rows: peak RSS", early, q_peak, rows, q_seconds, "rows"),
        # The query's peak stays in VmHWM: the subscription is compared with it.
        _row(
            f"subscribe all {town.rows:,} rows: peak RSS",
            max(s_early, q_peak),
            s_peak,
            got,
            s_seconds,
            "records",
        ),
    ]
