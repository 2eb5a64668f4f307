"""Bare baselines: a grpc.aio QueryService that answers with stored bytes and does nothing else.

The handlers have no (de)serialisers, so a request arrives as bytes and the pre-serialised
QueryResponse / ChangeEvent bytes go out unchanged: the floor any gateway is measured against.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from allmende.identity import TlsFiles

__all__ = ["BareServer", "LoopThread"]

SERVICE = "allmende.v1.QueryService"


class LoopThread:
    """An asyncio event loop on a daemon thread; ``run`` executes a coroutine on it."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name=name)
        self._thread.start()

    def run(self, coro: Any, timeout_s: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self.loop.is_running():
            self.loop.close()


class BareServer:
    """Serves Query with ``query_bytes``, Subscribe with ``stream_bytes`` and SubscribeBatches
    with ``batch_bytes``, on its own loop."""

    def __init__(
        self,
        *,
        tls: TlsFiles | None,
        query_bytes: bytes = b"",
        stream_bytes: Sequence[bytes] = (),
        batch_bytes: Sequence[bytes] = (),
    ) -> None:
        self.tls = tls
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
            ca, cert, key = self.tls.read()
            creds = grpc.ssl_server_credentials(
                [(key, cert)], root_certificates=ca, require_client_auth=True
            )
            port = server.add_secure_port("127.0.0.1:0", creds)
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
        self._thread = LoopThread("bench-bare-server")
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
