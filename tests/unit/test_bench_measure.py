"""The bench's CPU-per-call figure: CPU time read from /proc for a server process, and the
latency comparison that reports it beside the p50."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import pytest

from allmende_cli.bench.command import format_table
from allmende_cli.bench.measure import (
    SHOWN_ONLY,
    THROUGHPUT_ROUNDS,
    Row,
    alternating_rates,
    compare_latency,
    compare_throughput,
    cpu_seconds,
    machine_speed,
    paired_samples,
)

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_cpu_seconds_counts_what_a_process_spends() -> None:
    before = cpu_seconds(os.getpid())
    assert before is not None
    _burn(0.1)
    after = cpu_seconds(os.getpid())
    assert after is not None
    assert 0.05 <= after - before <= 1.0


def test_cpu_seconds_of_a_process_that_is_gone_is_none() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert cpu_seconds(proc.pid) is None


def test_cpu_seconds_counts_every_thread_of_the_process() -> None:
    # A process whose second thread does the work: its CPU must show in the figure.
    code = (
        "import threading, time\n"
        "def burn():\n"
        "    end = time.thread_time() + 0.3\n"
        "    while time.thread_time() < end: pass\n"
        "t = threading.Thread(target=burn); t.start(); t.join()\n"
        "print('done', flush=True); input()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "done"
        spent = cpu_seconds(proc.pid)
        assert spent is not None and spent >= 0.25
    finally:
        proc.kill()
        proc.wait()


_SERVER = (
    "import sys, time\n"
    "for line in sys.stdin:\n"
    "    end = time.process_time() + float(line)\n"
    "    while time.process_time() < end: pass\n"
    "    print('ok', flush=True)\n"
)


def test_compare_latency_gives_each_side_its_cpu_per_call() -> None:
    # Two "servers", each a process of its own: the one that burns 2 ms of CPU per call
    # shows it, the one that answers at once does not.
    servers = [
        subprocess.Popen(
            [sys.executable, "-c", _SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]

    def caller(proc: subprocess.Popen[str], burn: float) -> Callable[[], Awaitable[None]]:
        async def call() -> None:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(f"{burn}\n")
            proc.stdin.flush()
            assert proc.stdout.readline() == "ok\n"

        return call

    try:
        heavy, light = caller(servers[0], 0.002), caller(servers[1], 0.0)
        pids = (servers[0].pid, servers[1].pid)
        ours, base = asyncio.run(compare_latency(heavy, light, 0.3, pids))
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()
    assert ours.cpu_per_call_us is not None and base.cpu_per_call_us is not None
    assert ours.cpu_per_call_us >= 1500
    assert base.cpu_per_call_us < ours.cpu_per_call_us / 2
    assert ours.p50_us >= 1500 > base.p50_us


def test_compare_latency_without_pids_gives_no_cpu_figure() -> None:
    async def call() -> None:
        await asyncio.sleep(0)

    ours, base = asyncio.run(compare_latency(call, call, 0.1))
    assert ours.cpu_per_call_us is None and base.cpu_per_call_us is None
    assert ours.p50_us > 0 and base.p50_us > 0


def test_paired_samples_alternate_which_side_goes_first() -> None:
    order: list[str] = []

    async def ours() -> None:
        order.append("ours")

    async def base() -> None:
        order.append("base")

    mine, theirs = asyncio.run(paired_samples(ours, base, 0.0))
    assert len(mine) == len(theirs) == 20  # at least 20 pairs, after 20 to warm up
    pairs = [tuple(order[i : i + 2]) for i in range(40, len(order), 2)]
    assert pairs == [("ours", "base"), ("base", "ours")] * 10


def test_a_machine_that_slows_down_slows_both_sides_alike() -> None:
    # Both sides cost the same, but the "machine" gets slower all the time (0.5 ms per call
    # at the start, 6 ms more per second after). Sampled in pairs, both sides meet it in the
    # same state and their p50s stay together; in alternating slices per side, the side
    # whose slices came later looked slower by the slowing of one slice (~0.8 ms here).
    ours_call, base_call = _slowing_machine(0.0005, 0.006)
    ours, base = asyncio.run(compare_latency(ours_call, base_call, 0.4))
    assert abs(ours.p50_us - base.p50_us) < 300


def _slowing_machine(
    first: float, per_second: float
) -> tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]:
    """Two sides that cost the same: ``first`` seconds of CPU per call at the start, and
    ``per_second`` more for every second since."""
    start = time.perf_counter()

    def side() -> Callable[[], Awaitable[None]]:
        async def call() -> None:
            _spin(first + per_second * (time.perf_counter() - start))

        return call

    return side(), side()


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_compare_throughput_alternates_the_sides_in_slices() -> None:
    order: list[str] = []

    async def ours() -> None:
        order.append("ours")
        await asyncio.sleep(0.001)

    async def base() -> None:
        order.append("base")
        await asyncio.sleep(0.001)

    rate, base_rate = asyncio.run(compare_throughput(ours, base, 0.5, in_flight=4))
    runs = [side for i, side in enumerate(order) if i == 0 or order[i - 1] != side]
    assert runs == ["ours", "base"] * THROUGHPUT_ROUNDS
    assert rate > 0 and base_rate > 0


def test_alternating_rates_take_the_sides_in_turn() -> None:
    order: list[str] = []

    async def ours() -> None:
        order.append("ours")
        _spin(0.004)

    async def base() -> None:
        order.append("base")
        _spin(0.002)

    rate, base_rate = asyncio.run(alternating_rates(ours, base, 100, 0.1))
    # Warmed once each, then one call of each side per turn, the first side alternating.
    assert order[:2] == ["ours", "base"]
    turns = [tuple(order[i : i + 2]) for i in range(2, len(order), 2)]
    assert len(turns) >= 2
    assert turns == [
        ("ours", "base") if i % 2 == 0 else ("base", "ours") for i in range(len(turns))
    ]
    # 100 units per call: ~25,000/s for 4 ms calls, ~50,000/s for 2 ms calls.
    assert 15_000 < rate < 26_000 and 30_000 < base_rate < 51_000


def test_alternating_rates_on_a_machine_that_slows_down() -> None:
    # The same cost on both sides, on a "machine" that gets slower all the time: taken in
    # turn, the two rates stay together (one slice per side: the second looked slower).
    ours, base = _slowing_machine(0.001, 0.01)
    rate, base_rate = asyncio.run(alternating_rates(ours, base, 1, 0.3))
    assert 0.85 < rate / base_rate < 1.15


def test_machine_speed_is_steps_per_second_of_a_fixed_loop() -> None:
    start = time.perf_counter()
    speed = machine_speed(0.05)
    took = time.perf_counter() - start
    assert 0.05 <= took < 1.0
    assert 0.1 < speed < 10_000  # millions of loop steps per second, whatever the machine


def test_the_table_shows_a_rate_as_a_ratio_and_a_time_as_a_difference() -> None:
    rows = [
        Row("judged rate", 2.0, 4.0, "req/s", 0.5, ">= 0.65x", False, "n"),
        Row("shown rate", 2.0, 4.0, "req/s", 0.5, SHOWN_ONLY, True, "n"),
        Row("shown time", 900.0, 700.0, "us", 200.0, SHOWN_ONLY, True, "n"),
        Row("time alone", 16.0, None, "us", 16.0, "<= 30 µs", True, "n"),
    ]
    lines = {line.split("  ")[0]: line for line in format_table(rows).splitlines()}
    assert "0.50x" in lines["judged rate"]
    assert "0.50x" in lines["shown rate"] and "µs" not in lines["shown rate"]
    assert "+200 µs" in lines["shown time"]
    assert "16.0 µs" in lines["time alone"]
