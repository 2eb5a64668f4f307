"""/metrics: calls, latency, decisions and rows of a gateway; the outbox and lag of a node.

The interceptor is exercised on a real gRPC server over loopback TCP (plaintext here: what
is measured does not depend on TLS; the gateway tests run it under mutual TLS), and the
metrics are read over HTTP as Prometheus scrapes them.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections import Counter
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import generate_latest

from allmende.errors import AllmendeError, StoreError
from allmende.metrics import GatewayMetrics, MetricsServer, NodeMetrics


def scrape(server: MetricsServer) -> str:
    with urllib.request.urlopen(server.url, timeout=5) as resp:
        assert resp.status == 200
        return str(resp.read().decode())


def value(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_start} not in metrics:\n{text}")


@pytest.mark.parametrize("way", ["interceptor", "registrar"])
def test_calls_are_counted_by_status_and_timed(way: str) -> None:
    """Both ways measure alike: an interceptor, or handlers wrapped once when registered."""
    metrics = GatewayMetrics("kaiserslautern")

    async def run() -> None:
        if way == "interceptor":
            server = grpc.aio.server(interceptors=[metrics.interceptor()])
            registrar: grpc.aio.Server = server
        else:
            server = grpc.aio.server()
            registrar = metrics.registrar(server)
        servicer = health.aio.HealthServicer()
        await servicer.set("known", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, registrar)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                for _ in range(3):
                    await stub.Check(health_pb2.HealthCheckRequest(service="known"))
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Check(health_pb2.HealthCheckRequest(service="unknown"))
                assert err.value.code() == grpc.StatusCode.NOT_FOUND
                call = stub.Watch(health_pb2.HealthCheckRequest(service="known"))
                first = await call.read()
                assert first.status == health_pb2.HealthCheckResponse.SERVING
                call.cancel()
                await asyncio.sleep(0.1)
        finally:
            await server.stop(0)

    asyncio.run(run())
    srv = MetricsServer(metrics.registry, "127.0.0.1:0")
    try:
        text = scrape(srv)
    finally:
        srv.stop()
    ok = 'allmende_gateway_requests_total{code="OK",method="Health/Check"}'
    assert value(text, ok) == 3
    not_found = 'allmende_gateway_requests_total{code="NOT_FOUND",method="Health/Check"}'
    assert value(text, not_found) == 1
    assert value(text, 'allmende_gateway_request_seconds_count{method="Health/Check"}') == 4
    assert 'allmende_gateway_requests_total{code="CANCELLED",method="Health/Watch"}' in text
    assert value(text, "allmende_gateway_open_streams") == 0


class _Registrations:
    """What a grpc.aio.Server is asked to register (the registration calls only)."""

    def __init__(self) -> None:
        self.generic: list[grpc.GenericRpcHandler] = []
        self.registered: list[str] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic += handlers

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        self.registered.append(service)


def test_the_registrar_serves_every_method_through_its_generic_handler() -> None:
    # Generated code registers each method twice; grpc.aio serves the registered handler
    # with some 50k more instructions per call in the gateway (README "Speed"), so only the
    # generic handlers reach the server. test_calls_are_counted_by_status_and_timed shows
    # that calls made with the generated client classes are served (and measured) through them.
    seen = _Registrations()
    registrar = GatewayMetrics("kaiserslautern").registrar(seen)  # type: ignore[arg-type]
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), registrar)
    assert seen.registered == []
    assert len(seen.generic) == 1
    assert seen.generic[0].service(_Details("/grpc.health.v1.Health/Check")) is not None


class _Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def test_audit_sink_counts_decisions_and_rows_after_the_inner_sink() -> None:
    metrics = GatewayMetrics("kaiserslautern")
    logged: list[dict[str, object]] = []

    class Log:
        def append(self, record: dict[str, object]) -> None:
            logged.append(record)

    class Full:
        def append(self, record: dict[str, object]) -> None:
            raise AllmendeError("audit log full")

    sink = metrics.audit_sink(Log())
    sink.append({"event": "decision", "action": "query", "allow": True, "dataset": "p", "rows": 7})
    sink.append({"event": "decision", "action": "query", "allow": False, "dataset": "p", "rows": 0})
    sink.append(
        {"event": "stream-end", "action": "subscribe", "allow": True, "dataset": "p", "rows": 5}
    )
    with pytest.raises(AllmendeError):
        metrics.audit_sink(Full()).append(
            {"event": "decision", "action": "query", "allow": True, "dataset": "p", "rows": 9}
        )
    assert len(logged) == 3
    srv = MetricsServer(metrics.registry, "127.0.0.1:0")
    try:
        text = scrape(srv)
    finally:
        srv.stop()
    assert value(text, 'allmende_gateway_decisions_total{action="query",result="allow"}') == 1
    assert value(text, 'allmende_gateway_decisions_total{action="query",result="deny"}') == 1
    assert 'action="subscribe"' not in text  # a stream's end is not a decision
    assert value(text, 'allmende_gateway_rows_served_total{dataset="p"}') == 12


def test_node_metrics_read_publisher_outbox_and_followers_at_scrape_time() -> None:
    metrics = NodeMetrics("pirmasens")
    pending = [4]
    sent = [3]

    def outbox() -> int:
        if pending[0] < 0:
            raise StoreError("store is locked")
        return pending[0]

    class Follower:
        def __init__(self) -> None:
            self.read, self.applied, self.lag = 10, 7, 12
            self.rejected = Counter({"forged-signature": 2})

    follower = Follower()
    metrics.watch_outbox(outbox)
    metrics.watch_published("record-batch", lambda: sent[0])
    metrics.watch_follower("allmende.catalog", follower)
    srv = MetricsServer(metrics.registry, "127.0.0.1:0")
    try:
        text = scrape(srv)
        assert value(text, "allmende_node_outbox_pending") == 4
        pending[0], sent[0], follower.lag = 0, 9, 0
        text = scrape(srv)
        assert value(text, "allmende_node_outbox_pending") == 0
        pending[0] = -1
        assert value(scrape(srv), "allmende_node_outbox_pending") == -1
    finally:
        srv.stop()
    assert value(text, 'allmende_node_published_events_total{kind="record-batch"}') == 9
    assert value(text, 'allmende_node_consumer_lag{topic="allmende.catalog"}') == 0
    assert value(text, 'allmende_node_read_messages_total{topic="allmende.catalog"}') == 10
    quarantined = 'allmende_node_quarantined_messages_total{reason="forged-signature",topic="allmende.catalog"}'
    assert value(text, quarantined) == 2


def test_a_bad_listen_address_is_named() -> None:
    with pytest.raises(AllmendeError, match="'nowhere' is not host:port"):
        MetricsServer(NodeMetrics("x").registry, "nowhere")


def test_latency_buckets_count_each_call_at_or_below_their_bound() -> None:
    """The gateway keeps its per-call numbers itself (no lock per call); a scrape turns them
    into the usual families, with cumulative buckets, count and sum."""
    metrics = GatewayMetrics("kaiserslautern")
    counts = metrics.tally.histogram("QueryService/Query")
    for seconds in (0.0001, 0.0002, 0.0003, 0.001, 30.0):
        metrics.tally.observe(counts, seconds)
    metrics.count_call("QueryService/Query", "OK")
    metrics.count_call("QueryService/Query", "OK")
    metrics.count_call("QueryService/Query", "PERMISSION_DENIED")
    text = generate_latest(metrics.registry).decode()
    bucket = 'allmende_gateway_request_seconds_bucket{le="%s",method="QueryService/Query"}'
    assert value(text, bucket % "0.0002") == 2  # 0.0002 is at the bound: counted there
    assert value(text, bucket % "0.0005") == 3
    assert value(text, bucket % "0.001") == 4
    assert value(text, bucket % "10.0") == 4
    assert value(text, bucket % "+Inf") == 5
    assert value(text, 'allmende_gateway_request_seconds_count{method="QueryService/Query"}') == 5
    total = value(text, 'allmende_gateway_request_seconds_sum{method="QueryService/Query"}')
    assert total == pytest.approx(30.0016)
    ok = 'allmende_gateway_requests_total{code="OK",method="QueryService/Query"}'
    denied = 'allmende_gateway_requests_total{code="PERMISSION_DENIED",method="QueryService/Query"}'
    assert value(text, ok) == 2 and value(text, denied) == 1


class _Context:
    def __init__(self, code: Any) -> None:
        self._code = code

    def code(self) -> Any:
        return self._code


def test_a_call_is_counted_under_its_status_code_name_however_grpc_gives_the_code() -> None:
    from allmende.metrics import _code

    for status in grpc.StatusCode:
        # grpc.aio's context gives the code's number; grpc's other servers the enum.
        assert _code(_Context(status.value[0]), failed=True) == status.name
        assert _code(_Context(status), failed=False) == status.name
    for unknown in (None, 99, True, "OK"):
        assert _code(_Context(unknown), failed=True) == "UNKNOWN"
        assert _code(_Context(unknown), failed=False) == "OK"
