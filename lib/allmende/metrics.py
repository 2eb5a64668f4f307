"""Prometheus metrics of a gateway or a node, each in its own registry, served on /metrics.

Several towns may run in one process (the demo, the tests), so nothing goes into
prometheus_client's global registry: every GatewayMetrics and NodeMetrics owns a
CollectorRegistry, and a MetricsServer serves one registry on ``GET /metrics``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import grpc
from prometheus_client import CollectorRegistry, Gauge, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from allmende.errors import AllmendeError

__all__ = ["GatewayMetrics", "MeteredRegistrar", "MetricsServer", "NodeMetrics"]

log = logging.getLogger(__name__)

# From a cached policy decision (~50 µs) to a slow forwarded page (seconds).
_LATENCY_BUCKETS = (
    0.0002,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    10.0,
)


class _Tally(Collector):
    """The gateway's per-call counters and latency histogram as plain numbers, turned into
    metric families only when scraped.

    prometheus_client's Counter and Histogram take a lock and check their state on every
    call (some 5 µs per request together); these are a dict look-up and an addition. They
    are updated on the gateway's event loop (one writer); a scrape copies each dict in one
    step (a C-level copy, which the GIL does not interrupt).
    """

    def __init__(self, buckets: Sequence[float]) -> None:
        self.bounds = tuple(buckets)
        self.requests: dict[tuple[str, str], int] = {}  # (method, code) → calls
        self.decisions: dict[tuple[str, str], int] = {}  # (action, result) → decisions
        self.rows: dict[str, int] = {}  # dataset → rows sent
        # method → one count per bucket (the last is +Inf), then the number and the sum
        self.latency: dict[str, list[float]] = {}

    def histogram(self, method: str) -> list[float]:
        """The counts of ``method``'s latencies: ``observe`` adds to them."""
        known = self.latency.get(method)
        if known is None:
            known = self.latency[method] = [0.0] * (len(self.bounds) + 3)
        return known

    def observe(self, counts: list[float], seconds: float) -> None:
        counts[bisect_left(self.bounds, seconds)] += 1
        counts[-2] += 1
        counts[-1] += seconds

    def collect(self) -> Iterable[Metric]:
        requests = CounterMetricFamily(
            "allmende_gateway_requests",
            "gRPC calls answered by this gateway, by method and status code",
            labels=["method", "code"],
        )
        for (method, code), n in sorted(self.requests.copy().items()):
            requests.add_metric([method, code], n)
        latency = HistogramMetricFamily(
            "allmende_gateway_request_seconds",
            "Time from receiving a call to its last message (streams: the whole stream)",
            labels=["method"],
        )
        for method, counts in sorted(self.latency.copy().items()):
            counts = list(counts)
            cumulative = 0.0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip((*self.bounds, float("inf")), counts, strict=False):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            latency.add_metric([method], buckets, sum_value=counts[-1])
        decisions = CounterMetricFamily(
            "allmende_gateway_decisions",
            "Policy decisions this owner made, by action and result (allow or deny)",
            labels=["action", "result"],
        )
        for (action, result), n in sorted(self.decisions.copy().items()):
            decisions.add_metric([action, result], n)
        rows = CounterMetricFamily(
            "allmende_gateway_rows_served",
            "Records (or aggregate groups) sent to callers, by dataset",
            labels=["dataset"],
        )
        for dataset, n in sorted(self.rows.copy().items()):
            rows.add_metric([dataset], n)
        return [requests, latency, decisions, rows]


class GatewayMetrics:
    """Calls by method and status, their latency, decisions by result and rows served.

    ``registrar(server)`` (or ``interceptor()``) measures every gRPC call;
    ``audit_sink(inner)`` counts every decision the gateway records (allowed and denied,
    with the rows sent) before passing it on. Counted on the gateway's event loop.
    """

    def __init__(self, member: str) -> None:
        self.member = member
        self.registry = CollectorRegistry(auto_describe=True)
        self.tally = _Tally(_LATENCY_BUCKETS)
        self.registry.register(self.tally)
        self.open_streams = Gauge(
            "allmende_gateway_open_streams",
            "Subscribe streams open right now",
            registry=self.registry,
        )

    def count_call(self, method: str, code: str) -> None:
        """One call of ``method`` ended with ``code``."""
        key = (method, code)
        requests = self.tally.requests
        requests[key] = requests.get(key, 0) + 1

    def count_decision(self, record: Mapping[str, Any]) -> None:
        """Count one audit record (the shape the gateway's audit sink receives)."""
        tally = self.tally
        if record.get("event", "decision") == "decision":
            key = (str(record.get("action", "")), "allow" if record.get("allow") else "deny")
            tally.decisions[key] = tally.decisions.get(key, 0) + 1
        rows = record.get("rows") or 0
        if type(rows) is int and rows > 0:
            dataset = str(record.get("dataset", ""))
            tally.rows[dataset] = tally.rows.get(dataset, 0) + rows

    def audit_sink(self, inner: Any | None) -> _CountingSink:
        """A sink that counts each record, then appends it to ``inner`` (None: counts only)."""
        return _CountingSink(self, inner)

    def interceptor(self) -> grpc.aio.ServerInterceptor:
        """Measures every call of the server it is given to (one more await per call)."""
        return _MetricsInterceptor(self)

    def registrar(self, server: grpc.aio.Server) -> MeteredRegistrar:
        """Register services through this to measure their calls as ``interceptor()`` does,
        without an interceptor on the call path."""
        return MeteredRegistrar(server, self)


class _CountingSink:
    def __init__(self, metrics: GatewayMetrics, inner: Any | None) -> None:
        self._metrics = metrics
        self._inner = inner

    def append(self, record: Mapping[str, Any]) -> object:
        # Appended first: a record that cannot be logged was not served, so is not counted.
        out = self._inner.append(record) if self._inner is not None else None
        self._metrics.count_decision(record)
        return out

    def close(self) -> None:
        if self._inner is not None and hasattr(self._inner, "close"):
            self._inner.close()


def _short(method: str) -> str:
    # "/allmende.v1.QueryService/Query" → "QueryService/Query"
    service, _, name = method.rpartition("/")
    return f"{service.rpartition('.')[2]}/{name}" if service else method


class _Meter:
    """Wraps method handlers so that they count and time their calls; each handler once."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._m = metrics
        self._wrapped: dict[tuple[str, int], tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]]
        self._wrapped = {}

    def __call__(self, full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        key = (full_method, id(handler))
        known = self._wrapped.get(key)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(full_method, handler)
        if len(self._wrapped) >= 256:
            self._wrapped.clear()
        self._wrapped[key] = (handler, wrapped)  # holding the handler keeps its id unique
        return wrapped

    def _wrap(self, full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        method = _short(full_method)
        m = self._m
        tally = m.tally
        latency = tally.histogram(method)
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                start = time.perf_counter()
                code = "OK"
                try:
                    return await inner_uu(request, context)
                except BaseException:
                    code = _code(context, failed=True)
                    raise
                finally:
                    if code == "OK":
                        code = _code(context, failed=False)
                    tally.observe(latency, time.perf_counter() - start)
                    m.count_call(method, code)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            def finish(start: float, code: str, context: grpc.aio.ServicerContext) -> None:
                m.open_streams.dec()
                if code == "OK":
                    code = _code(context, failed=False)
                tally.observe(latency, time.perf_counter() - start)
                m.count_call(method, code)

            def failure(exc: BaseException, context: grpc.aio.ServicerContext) -> str:
                if isinstance(exc, GeneratorExit | asyncio.CancelledError):
                    return "CANCELLED"
                return _code(context, failed=True)

            stream_handler: Callable[..., Any]
            if inspect.iscoroutinefunction(inner_us):
                # A handler that writes with context.write() (grpc_health's Watch does).
                async def writing_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                    start, code = time.perf_counter(), "OK"
                    m.open_streams.inc()
                    try:
                        return await inner_us(request, context)
                    except BaseException as exc:
                        code = failure(exc, context)
                        raise
                    finally:
                        finish(start, code, context)

                stream_handler = writing_stream
            else:

                async def yielding_stream(
                    request: Any, context: grpc.aio.ServicerContext
                ) -> AsyncIterator[Any]:
                    start, code = time.perf_counter(), "OK"
                    m.open_streams.inc()
                    try:
                        async for message in inner_us(request, context):
                            yield message
                    except BaseException as exc:
                        code = failure(exc, context)
                        raise
                    finally:
                        finish(start, code, context)

                stream_handler = yielding_stream

            return grpc.unary_stream_rpc_method_handler(
                stream_handler,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # client or bidirectional streams: none in allmende's services


class _MetricsInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: GatewayMetrics) -> None:
        self._meter = _Meter(metrics)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        return self._meter(details.method, handler)


class _MeteredGeneric(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler, meter: _Meter) -> None:
        self._inner = inner
        self._meter = meter

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(details)
        return None if handler is None else self._meter(details.method, handler)


class MeteredRegistrar(grpc.aio.Server):
    """A grpc.aio.Server to register services on: each handler is wrapped to be measured
    once, when registered, so no interceptor runs per call. Ports, start and stop go to the
    server itself."""

    def __init__(self, server: grpc.aio.Server, metrics: GatewayMetrics) -> None:
        self.server = server
        self._meter = _Meter(metrics)

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Sequence[Any]) -> None:
        self.server.add_generic_rpc_handlers(
            tuple(_MeteredGeneric(h, self._meter) for h in generic_rpc_handlers)
        )

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        """Not passed on: the generated ``add_*_to_server`` functions register every method
        twice, as a generic handler and as a registered one, and grpc.aio serves a call
        through the registered handler: with every service registered so, the gateway
        executed 53,000 more instructions per Query than with generic handlers alone
        (scripts/query_instructions.py, README "Speed"). The generic handlers serve the
        same methods."""

    def add_insecure_port(self, address: str) -> int:
        return self.server.add_insecure_port(address)

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return self.server.add_secure_port(address, server_credentials)

    async def start(self) -> None:
        await self.server.start()

    async def stop(self, grace: float | None) -> None:
        await self.server.stop(grace)

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        return await self.server.wait_for_termination(timeout)


# A status code's name by its number (grpc.aio's context gives the number): a dict look-up
# on every call, where iterating grpc.StatusCode took some 1.5 µs.
_CODE_NAMES = {status.value[0]: status.name for status in grpc.StatusCode}


def _code(context: grpc.aio.ServicerContext, *, failed: bool) -> str:
    try:
        code = context.code()
    except (AttributeError, NotImplementedError, RuntimeError):
        code = None
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int) and not isinstance(code, bool):
        name = _CODE_NAMES.get(int(code))
        if name is not None:
            return name
    return "UNKNOWN" if failed else "OK"


class FollowerLike(Protocol):
    """What NodeMetrics reads of a backbone follower (allmende_node's TopicFollower)."""

    @property
    def read(self) -> int: ...
    @property
    def applied(self) -> int: ...
    @property
    def lag(self) -> int | None: ...
    @property
    def rejected(self) -> Mapping[str, int]: ...


class NodeMetrics:
    """What the node publishes and follows: events published, the outbox, consumer lag.

    Nothing is counted twice: the node's publisher and followers keep their own counts, and
    the metrics read them (through the callables and objects given to ``watch_*``) when
    Prometheus scrapes.
    """

    def __init__(self, member: str) -> None:
        self.member = member
        self.registry = CollectorRegistry(auto_describe=True)
        self._published: dict[str, Callable[[], int]] = {}
        self._followers: dict[str, FollowerLike] = {}
        self._outbox: Callable[[], int] | None = None
        self.registry.register(_NodeCollector(self))

    def watch_published(self, kind: str, count: Callable[[], int]) -> None:
        """``count()`` is how many messages of ``kind`` the node has put on the backbone."""
        self._published[kind] = count

    def watch_outbox(self, pending: Callable[[], int]) -> None:
        """``pending()`` is how many messages wait in the outbox (read at every scrape)."""
        self._outbox = pending

    def watch_follower(self, topic: str, follower: FollowerLike) -> None:
        self._followers[topic] = follower


class _NodeCollector(Collector):
    def __init__(self, metrics: NodeMetrics) -> None:
        self._m = metrics

    def describe(self) -> Iterable[Metric]:
        return []  # unchecked: the families depend on what the node runs

    def collect(self) -> Iterable[Metric]:
        m = self._m
        published = CounterMetricFamily(
            "allmende_node_published_events",
            "Messages this node put on the backbone, by kind",
            labels=["kind"],
        )
        for kind, count in sorted(m._published.items()):
            published.add_metric([kind], float(count()))
        yield published
        pending = GaugeMetricFamily(
            "allmende_node_outbox_pending",
            "Messages in the outbox, not yet acknowledged by the backbone (-1: store unreadable)",
        )
        if m._outbox is not None:
            try:
                pending.add_metric([], float(m._outbox()))
            except AllmendeError:
                pending.add_metric([], -1.0)
        yield pending
        read = CounterMetricFamily(
            "allmende_node_read_messages",
            "Backbone messages read, by topic",
            labels=["topic"],
        )
        applied = CounterMetricFamily(
            "allmende_node_applied_changes",
            "Changes applied to the store from the backbone, by topic",
            labels=["topic"],
        )
        refused = CounterMetricFamily(
            "allmende_node_quarantined_messages",
            "Backbone messages refused and quarantined, by topic and reason",
            labels=["topic", "reason"],
        )
        lag = GaugeMetricFamily(
            "allmende_node_consumer_lag",
            "Messages on a followed topic beyond what the node has read",
            labels=["topic"],
        )
        for topic, f in sorted(m._followers.items()):
            read.add_metric([topic], float(f.read))
            applied.add_metric([topic], float(f.applied))
            for reason, n in sorted(f.rejected.items()):
                refused.add_metric([topic, reason], float(n))
            if f.lag is not None:
                lag.add_metric([topic], float(f.lag))
        yield from (read, applied, refused, lag)


class MetricsServer:
    """Serves one registry on http://<listen>/metrics in a daemon thread.

    ``listen`` is "host:port"; port 0 picks a free one (``port`` tells which).
    """

    def __init__(self, registry: CollectorRegistry, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit():
            raise AllmendeError(f"metrics listen address {listen!r} is not host:port")
        try:
            self._server, self._thread = start_http_server(int(port), host, registry)
        except OSError as exc:
            raise AllmendeError(f"metrics cannot listen on {listen}: {exc.strerror}") from exc
        self.host = host
        self.port = int(self._server.server_port)
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
