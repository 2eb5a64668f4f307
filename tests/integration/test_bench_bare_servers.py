"""The bench's bare servers, each a process of its own over mutual TLS: the grpc.aio one the
judged rows compare the gateway with (on the gateway's event loop, uvloop or asyncio's), and
the thread-pool one shown beside it (``--workers``). Each answers Query with the stored
bytes, unchanged; none answers a client without a certificate; a bad ``--workers`` or
``--loop`` is refused, naming it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from allmende.event_loops import loop_name
from allmende.v1 import query_pb2
from allmende_cli.bench.measure import channel, query_caller
from allmende_cli.bench.servers import BareServer, bare_process
from allmende_cli.bench.town import BenchTown, make_bench_town


@pytest.fixture(scope="module")
def town(tmp_path_factory: pytest.TempPathFactory) -> BenchTown:
    return make_bench_town(tmp_path_factory.mktemp("bare"), 20)


PAGE = query_pb2.QueryResponse(
    records=[query_pb2.Record(id=str(i), json=f'{{"n": {i}}}') for i in range(3)],
    next_page_token="opaque",
)


@pytest.mark.parametrize(
    ("workers", "loop"),
    [(0, "uvloop"), (0, "asyncio"), (2, "")],
    ids=["grpc.aio-uvloop", "grpc.aio-asyncio", "thread-pool"],
)
def test_a_bare_server_answers_with_the_stored_bytes(
    town: BenchTown, workers: int, loop: str
) -> None:
    async def ask(address: str) -> tuple[query_pb2.QueryResponse, grpc.StatusCode]:
        ch = channel(address, town.consumer_tls, town.server_name)
        # A client with the CA but without a certificate of its own.
        ca = town.consumer_tls.read()[0]
        anonymous = grpc.aio.secure_channel(
            address,
            grpc.ssl_channel_credentials(ca),
            [("grpc.ssl_target_name_override", town.server_name)],
        )
        try:
            answer = await query_caller(ch)(query_pb2.QueryRequest(page_size=3))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await query_caller(anonymous)(query_pb2.QueryRequest(), timeout=10)
            return answer, refused.value.code()
        finally:
            await ch.close()
            await anonymous.close()

    with bare_process(
        town.owner_tls, PAGE.SerializeToString(), town.dir, workers=workers, loop=loop or "uvloop"
    ) as bare:
        answer, refused = asyncio.run(ask(bare.address))
    assert answer.SerializeToString() == PAGE.SerializeToString()
    assert refused == grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails


@pytest.mark.parametrize(
    ("option", "value", "error"),
    [
        ("--workers", "-1", "--workers must be at least 1 (or 0 for grpc.aio), not -1"),
        ("--loop", "trio", "argument --loop: invalid choice: 'trio'"),
    ],
)
def test_a_bad_option_is_refused_naming_it(
    tmp_path: Path, option: str, value: str, error: str
) -> None:
    page = tmp_path / "page.bin"
    page.write_bytes(b"")
    command = ["-m", "allmende_cli.bench.bare_server", "--query-bytes", str(page)]
    done = subprocess.run(
        [sys.executable, *command, option, value],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert error in done.stderr


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_bare_server_runs_on_the_loop_it_is_given(town: BenchTown, loop: str) -> None:
    with BareServer(tls=town.owner_tls, query_bytes=b"", loop=loop) as bare:
        assert bare._thread is not None
        assert loop_name(bare._thread.loop) == loop
