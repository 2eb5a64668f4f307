"""`allmende gateway run` serves on the town's ``[gateway] event_loop``: uvloop by default,
asyncio's own loop when the town (or ALLMENDE_GATEWAY_EVENT_LOOP) says so. It says which in
its first line, and answers a Query over mutual TLS on either."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from allmende.v1 import query_pb2
from allmende_cli.bench.measure import channel, query_caller
from allmende_cli.bench.servers import wait_for_port
from allmende_cli.bench.town import DATASET, OWNER, PURPOSE, BenchTown, make_bench_town


@pytest.fixture(scope="module")
def town(tmp_path_factory: pytest.TempPathFactory) -> BenchTown:
    return make_bench_town(tmp_path_factory.mktemp("loop"), 20)


async def _ask(town: BenchTown) -> int:
    ch = channel(town.config.gateway.listen, town.consumer_tls, town.server_name)
    try:
        req = query_pb2.QueryRequest(owner=OWNER, dataset=DATASET, purpose=PURPOSE, page_size=5)
        return len((await query_caller(ch)(req, timeout=30)).records)
    finally:
        await ch.close()


@pytest.mark.parametrize(("env_value", "expected"), [(None, "uvloop"), ("asyncio", "asyncio")])
def test_the_gateway_serves_on_the_configured_loop(
    town: BenchTown, tmp_path: Path, env_value: str | None, expected: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ALLMENDE_GATEWAY_EVENT_LOOP"}
    if env_value is not None:
        env["ALLMENDE_GATEWAY_EVENT_LOOP"] = env_value
    log = tmp_path / "gateway.log"
    cmd = [sys.executable, "-m", "allmende_cli.main", "gateway", "run"]
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [*cmd, "--config", str(town.config.path)],
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
            text=True,
        )
    try:
        wait_for_port(town.config.gateway.listen, proc, log=log)
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert f"(mutual TLS, {expected})" in first, first
        assert asyncio.run(_ask(town)) == 5
    finally:
        proc.terminate()
        proc.wait(20)
    assert proc.returncode == 0, log.read_text()


def test_an_unknown_loop_stops_the_gateway_naming_it(town: BenchTown) -> None:
    env = dict(os.environ, ALLMENDE_GATEWAY_EVENT_LOOP="trio")
    cmd = [sys.executable, "-m", "allmende_cli.main", "gateway", "run"]
    done = subprocess.run(
        [*cmd, "--config", str(town.config.path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 2
    assert "event_loop must be one of uvloop, asyncio, not 'trio'" in done.stderr
