"""The bench's CPU-per-call figure: CPU time read from /proc for a server process, and the
latency comparison that reports it beside the p50."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest

from allmende_cli.bench.measure import compare_latency, cpu_seconds, machine_speed

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


def test_compare_latency_gives_each_side_its_cpu_per_call() -> None:
    # Both "servers" are this process: the side that burns 2 ms of CPU per call shows it.
    async def heavy() -> None:
        _burn(0.002)

    async def light() -> None:
        await asyncio.sleep(0)

    me = os.getpid()
    ours, base = asyncio.run(compare_latency(heavy, light, 0.6, (me, me)))
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


def test_machine_speed_is_steps_per_second_of_a_fixed_loop() -> None:
    start = time.perf_counter()
    speed = machine_speed(0.05)
    took = time.perf_counter() - start
    assert 0.05 <= took < 1.0
    assert 0.1 < speed < 10_000  # millions of loop steps per second, whatever the machine
