"""Bare baselines: a QueryService that answers with stored bytes and does nothing else, on
grpc.aio (as the gateway serves) or on grpc's thread-pool server.

The handlers have no (de)serialisers, so a request arrives as bytes and the pre-serialised
QueryResponse / ChangeEvent bytes go out unchanged: the floor any gateway is measured against.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from allmende.errors import AllmendeError
from allmende.event_loops import new_event_loop
from allmende.identity import TlsFiles

__all__ = [
    "BareProcess",
    "BareServer",
    "BareThreadPoolServer",
    "LoopThread",
    "bare_process",
    "gateway_process",
    "read_messages",
    "wait_for_port",
    "write_messages",
]

SERVICE = "allmende.v1.QueryService"


class LoopThread:
    """An event loop of ``kind`` ("uvloop" or "asyncio") on a daemon thread; ``run``
    executes a coroutine on it."""

    def __init__(self, name: str, kind: str = "asyncio") -> None:
        self.loop = new_event_loop(kind)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name=name)
        self._thread.start()

    def run(self, coro: Any, timeout_s: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self.loop.is_running():
            self.loop.close()


def _server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    ca, cert, key = tls.read()
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )


class BareServer:
    """Serves Query with ``query_bytes``, Subscribe with ``stream_bytes`` and SubscribeBatches
    with ``batch_bytes``, on its own loop of kind ``loop`` (the gateway's ``event_loop``:
    the bench compares the two on the same loop)."""

    def __init__(
        self,
        *,
        tls: TlsFiles | None,
        query_bytes: bytes = b"",
        stream_bytes: Sequence[bytes] = (),
        batch_bytes: Sequence[bytes] = (),
        loop: str = "uvloop",
    ) -> None:
        self.tls = tls
        self.loop = loop
        self.query_bytes = query_bytes
        self.stream_bytes = list(stream_bytes)
        self.batch_bytes = list(batch_bytes)
        self.port = 0
        self._thread: LoopThread | None = None
        self._server: grpc.aio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _query(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return self.query_bytes

    async def _subscribe(
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        for raw in self.stream_bytes:
            yield raw
        await asyncio.Event().wait()  # like a live stream: open until the client cancels

    async def _subscribe_batches(
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        for raw in self.batch_bytes:
            yield raw
        await asyncio.Event().wait()

    async def _start(self) -> int:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Query": grpc.unary_unary_rpc_method_handler(self._query),
                "Subscribe": grpc.unary_stream_rpc_method_handler(self._subscribe),
                "SubscribeBatches": grpc.unary_stream_rpc_method_handler(self._subscribe_batches),
            },
        )
        server.add_generic_rpc_handlers((handler,))
        if self.tls is not None:
            port = server.add_secure_port("127.0.0.1:0", _server_credentials(self.tls))
        else:
            port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._server = server
        return port

    async def _stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0.2)
            self._server = None

    def start(self) -> BareServer:
        self._thread = LoopThread("bench-bare-server", self.loop)
        self.port = self._thread.run(self._start())
        return self

    def stop(self) -> None:
        if self._thread is not None:
            try:
                self._thread.run(self._stop(), 5)
            finally:
                self._thread.close()
                self._thread = None

    def __enter__(self) -> BareServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class BareThreadPoolServer:
    """Serves Query with ``query_bytes`` on grpc's thread-pool server with ``workers``
    threads: the other way grpc serves Python handlers, shown beside grpc.aio (README,
    Speed)."""

    def __init__(self, *, tls: TlsFiles | None, query_bytes: bytes, workers: int) -> None:
        if workers < 1:
            raise AllmendeError(f"a thread-pool server needs at least 1 worker, not {workers}")
        self.tls = tls
        self.query_bytes = query_bytes
        self.workers = workers
        self.port = 0
        self._server: grpc.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _query(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return self.query_bytes

    def start(self) -> BareThreadPoolServer:
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.workers),
            options=[("grpc.so_reuseport", 0)],
        )
        handler = grpc.method_handlers_generic_handler(
            SERVICE, {"Query": grpc.unary_unary_rpc_method_handler(self._query)}
        )
        server.add_generic_rpc_handlers((handler,))
        if self.tls is not None:
            self.port = server.add_secure_port("127.0.0.1:0", _server_credentials(self.tls))
        else:
            self.port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(0.2).wait(5)
            self._server = None

    def __enter__(self) -> BareThreadPoolServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- servers in processes of their own -------------------------------------------------------


def wait_for_port(
    address: str, proc: subprocess.Popen[bytes], timeout_s: float = 30.0, log: Path | None = None
) -> None:
    """Return once ``address`` accepts connections; raises AllmendeError when ``proc`` ends
    first (with its stderr, or the file ``log`` it went to) or the deadline passes."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            if log is not None:
                err = log.read_text(encoding="utf-8", errors="replace")
            else:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise AllmendeError(f"the server process ended with {proc.returncode}: {err}")
        try:
            with socket.create_connection((host, int(port)), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AllmendeError(f"the server did not listen on {address} within {timeout_s:.0f} s")


def _end(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe:
            pipe.close()


@contextlib.contextmanager
def gateway_process(config_path: Path, address: str) -> Iterator[subprocess.Popen[bytes]]:
    """``allmende gateway run --config config_path`` as its own process, listening on
    ``address`` when this yields; ended (SIGTERM) on exit. Its log goes to a file beside the
    config (a pipe nobody reads could fill up and stop the gateway mid-run)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log = config_path.parent / "bench-gateway.log"
    cmd = [sys.executable, "-m", "allmende_cli.main", "gateway", "run"]
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [*cmd, "--config", str(config_path)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )
    try:
        wait_for_port(address, proc, log=log)
        yield proc
    finally:
        _end(proc)


def write_messages(path: Path, messages: Sequence[bytes]) -> None:
    """``messages`` into ``path``, each after its length (4 bytes, big-endian)."""
    path.write_bytes(b"".join(len(m).to_bytes(4, "big") + m for m in messages))


def read_messages(path: Path) -> list[bytes]:
    """The messages ``write_messages`` wrote; raises AllmendeError for a cut-off file."""
    data, out, at = path.read_bytes(), [], 0
    while at < len(data):
        size = int.from_bytes(data[at : at + 4], "big")
        if at + 4 + size > len(data):
            raise AllmendeError(f"{path}: message at byte {at} is cut off")
        out.append(data[at + 4 : at + 4 + size])
        at += 4 + size
    return out


@dataclasses.dataclass(frozen=True)
class BareProcess:
    """A bare server's process: where it listens, and its pid (for its CPU time)."""

    address: str
    pid: int


@contextlib.contextmanager
def bare_process(
    tls: TlsFiles | None,
    query_bytes: bytes,
    workdir: Path,
    *,
    stream_bytes: Sequence[bytes] = (),
    batch_bytes: Sequence[bytes] = (),
    workers: int = 0,
    loop: str = "uvloop",
) -> Iterator[BareProcess]:
    """A BareServer answering Query with ``query_bytes`` and streaming ``stream_bytes``
    (Subscribe) and ``batch_bytes`` (SubscribeBatches) in its own process
    (``python -m allmende_cli.bench.bare_server``); yields its address and pid. With
    ``workers``, a BareThreadPoolServer with that many threads instead (Query only); else
    on an event loop of kind ``loop``, which should be the gateway's (``event_loop``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    stem = workdir / f"bare-{os.getpid()}-{time.monotonic_ns()}"
    payload, events, batches = (stem.with_suffix(s) for s in (".bin", ".events", ".batches"))
    payload.write_bytes(query_bytes)
    write_messages(events, stream_bytes)
    write_messages(batches, batch_bytes)
    cmd = [sys.executable, "-m", "allmende_cli.bench.bare_server", "--query-bytes", str(payload)]
    cmd += ["--stream-bytes", str(events), "--batch-bytes", str(batches)]
    if workers:
        cmd += ["--workers", str(workers)]
    else:
        cmd += ["--loop", loop]
    if tls is not None:
        cmd += ["--ca", str(tls.ca), "--cert", str(tls.cert), "--key", str(tls.key)]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        if not line.isdigit():
            proc.wait(10)
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise AllmendeError(f"the bare server process did not start: {err}")
        address = f"127.0.0.1:{line}"
        wait_for_port(address, proc)
        yield BareProcess(address, proc.pid)
    finally:
        _end(proc)
        for path in (payload, events, batches):
            path.unlink(missing_ok=True)
