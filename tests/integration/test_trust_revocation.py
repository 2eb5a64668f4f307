"""Revocation through real nodes and gateways: calls refused and open streams ended within 5 s;
expired certificates refused."""

from __future__ import annotations

import datetime as dt
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from allmende.audit import read_entries
from allmende.broker import EmbeddedBroker
from allmende.ca import CertificateAuthority
from allmende.client import GatewayClient, GatewayError, Subscription
from allmende.config import BackboneConfig
from allmende.errors import AllmendeError, PeerUnavailable
from allmende.identity import TlsFiles, gateway_server_name
from allmende.store import connect
from allmende.trust import TrustStore
from allmende.v1 import query_pb2
from allmende_gateway import GatewayThread
from allmende_node import Node

from .towns import Town, make_town, publish_trust, wait_for_trust

pytestmark = pytest.mark.integration

DATASET = ("kaiserslautern", "parking-sites", "traffic-planning")
_ENDED = object()


@dataclass
class Pair:
    ca: CertificateAuthority
    kl: Town  # the owner
    ps: Town  # the consumer, whose gateway forwards to kl
    gateways: dict[str, GatewayThread]


def make_pair(root: Path, backbone: BackboneConfig | None = None) -> Pair:
    ca = CertificateAuthority.init(root / "ca", "suedwest")
    where = {}
    if backbone is not None:
        where = {"bootstrap": backbone.bootstrap_servers[0], "topic_prefix": backbone.topic_prefix}
    kl = make_town(root, ca, ca.cert_path, "kaiserslautern", datasets=True, **where)
    peers = {"kaiserslautern": (kl.config.gateway.listen, "suedwest")}
    ps = make_town(root, ca, ca.cert_path, "pirmasens", peers=peers, **where)
    return Pair(ca, kl, ps, {})


def start_gateways(pair: Pair) -> None:
    for town in (pair.kl, pair.ps):
        pair.gateways[town.member] = GatewayThread(town.config.gateway).start()


def stop_gateways(pair: Pair) -> None:
    for gateway in pair.gateways.values():
        gateway.stop()


def open_stream(client: GatewayClient) -> tuple[Subscription, queue.Queue]:
    """A live subscription collected by a thread; waits for its greeting."""
    stream = client.subscribe(*DATASET, start=query_pb2.START_FROM_LIVE)
    events: queue.Queue = queue.Queue()

    def collect() -> None:
        try:
            for event in stream:
                events.put(event)
            events.put(_ENDED)
        except AllmendeError as err:
            events.put(err)

    threading.Thread(target=collect, daemon=True).start()
    hello = events.get(timeout=10)
    assert isinstance(hello, query_pb2.ChangeEvent) and hello.decision.policy_version
    return stream, events


def stream_end(
    events: queue.Queue, started: float, deadline_s: float = 5.0
) -> tuple[object, float]:
    """The item that ended the stream and the seconds since ``started``."""
    while True:
        item = events.get(timeout=max(0.1, started + deadline_s + 2 - time.monotonic()))
        if not isinstance(item, query_pb2.ChangeEvent):
            return item, time.monotonic() - started


def refused_after(client: GatewayClient, started: float, deadline_s: float = 5.0) -> float:
    """Poll Query until it is refused as revoked; the seconds since ``started``."""
    while True:
        try:
            client.query(*DATASET, page_size=1)
        except GatewayError as err:
            assert (err.grpc_code, err.reason) == ("PERMISSION_DENIED", "MEMBER_REVOKED")
            return time.monotonic() - started
        if time.monotonic() - started > deadline_s:
            raise AssertionError(f"queries still answered {deadline_s} s after the revocation")
        time.sleep(0.05)


def assert_revoked(item: object) -> None:
    assert isinstance(item, GatewayError), item
    assert (item.grpc_code, item.reason) == ("PERMISSION_DENIED", "MEMBER_REVOKED")
    assert "pirmasens is revoked by the cluster CA" in str(item)


@pytest.fixture
def federation(tmp_path: Path, broker: EmbeddedBroker, backbone: BackboneConfig) -> Iterator[Pair]:
    """Two towns with nodes (trust followers) and gateways on the real broker."""
    pair = make_pair(tmp_path, backbone)
    publish_trust(pair.ca, backbone)
    nodes = [Node(pair.kl.config.node), Node(pair.ps.config.node)]
    try:
        for node in nodes:
            node.start()
        for town in (pair.kl, pair.ps):
            wait_for_trust(town, pair.ca)
        start_gateways(pair)
        yield pair
    finally:
        stop_gateways(pair)
        for node in nodes:
            node.stop()


def test_revocation_ends_streams_and_refuses_calls_within_5_s(
    federation: Pair, backbone: BackboneConfig
) -> None:
    pair = federation
    with pair.ps.client(pair.ca, "traffic-dashboard") as client:
        assert client.query(*DATASET, page_size=3).records
        stream, events = open_stream(client)
        try:
            started = time.monotonic()
            pair.ca.revoke("pirmasens", "certificate key leaked")
            publish_trust(pair.ca, backbone, ["pirmasens"])
            item, stream_s = stream_end(events, started)
            assert_revoked(item)
            query_s = refused_after(client, started)
        finally:
            stream.cancel()
        print(
            f"\nrevocation (publish → node → gateway): stream ended after {stream_s:.2f} s, "
            f"queries refused after {query_s:.2f} s"
        )
        assert stream_s < 5.0 and query_s < 5.0
        # Both gateways learn it from their own node (the owner may have been first).
        while any("pirmasens" not in g.gateway.revocations.revoked for g in pair.gateways.values()):
            assert time.monotonic() - started < 5.0, "a gateway did not learn of the revocation"
            time.sleep(0.05)
        with pytest.raises(GatewayError) as err:
            client.list_datasets()  # answered by pirmasens' own gateway
        assert err.value.reason == "MEMBER_REVOKED"
    # The owner refuses pirmasens on its own, too: its gateway identity asking directly.
    gateway_tls = TlsFiles(
        ca=pair.ps.bundle, cert=pair.ps.config.gateway.tls.cert, key=pair.ps.config.gateway.tls.key
    )
    with GatewayClient(
        pair.kl.config.gateway.listen,
        gateway_tls,
        server_name=gateway_server_name("suedwest", "kaiserslautern"),
    ) as direct:
        with pytest.raises(GatewayError) as err:
            direct.query(*DATASET)
        assert err.value.reason == "MEMBER_REVOKED"
    # The owner's refusals of the revoked member are in its audit log, like any refusal.
    assert pair.kl.config.gateway.audit_log is not None
    refused = [
        e
        for e in read_entries(pair.kl.config.gateway.audit_log)
        if e["subject"]["member"] == "pirmasens" and not e["allow"]
    ]
    assert refused and all(e["input"] is None and e["policy_version"] == "" for e in refused)
    assert "member pirmasens is revoked by the cluster CA" in refused[-1]["reasons"][0]
    for gateway in pair.gateways.values():
        assert dict(gateway.gateway.revocations.revoked) == {"pirmasens": "certificate key leaked"}
        assert gateway.gateway.revocations.open_streams == 0


@pytest.mark.parametrize("side", ["owner", "forwarder"])
def test_each_side_cuts_off_a_revoked_member_on_its_own(tmp_path: Path, side: str) -> None:
    """Only one gateway's store learns of the revocation; that side alone must end it."""
    pair = make_pair(tmp_path)
    for town in (pair.kl, pair.ps):
        with connect(town.config.node.store_path) as conn:
            trust = TrustStore(conn, "suedwest", pair.ca.cert)
            for member in ("kaiserslautern", "pirmasens"):
                trust.apply(pair.ca.statement(member))
    start_gateways(pair)
    try:
        with pair.ps.client(pair.ca, "traffic-dashboard") as client:
            assert client.query(*DATASET, page_size=1).records
            stream, events = open_stream(client)
            try:
                pair.ca.revoke("pirmasens", "left the cluster")
                learns = pair.kl if side == "owner" else pair.ps
                started = time.monotonic()
                conn = connect(learns.config.node.store_path)
                TrustStore(conn, "suedwest", pair.ca.cert).apply(pair.ca.statement("pirmasens"))
                conn.close()
                item, stream_s = stream_end(events, started)
                assert_revoked(item)
                query_s = refused_after(client, started)
            finally:
                stream.cancel()
        print(
            f"\n{side} side alone: stream ended after {stream_s:.2f} s, queries refused after {query_s:.2f} s"
        )
        assert stream_s < 5.0
    finally:
        stop_gateways(pair)


def test_expired_certificate_is_refused(tmp_path: Path) -> None:
    pair = make_pair(tmp_path)
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    expired = pair.ca.issue(tmp_path / "old", "pirmasens", "dashboard", now=long_ago, days=1)
    start_gateways(pair)
    try:
        for town, name in ((pair.ps, "pirmasens"), (pair.kl, "kaiserslautern")):
            tls = TlsFiles(ca=pair.ca.cert_path, cert=expired.tls.cert, key=expired.tls.key)
            with (
                GatewayClient(
                    town.config.gateway.listen,
                    tls,
                    server_name=gateway_server_name("suedwest", name),
                ) as client,
                pytest.raises(PeerUnavailable),
            ):
                client.list_datasets()
        with pair.ps.client(pair.ca, "dashboard") as fresh:  # the same identity, valid today
            assert fresh.query(*DATASET, page_size=1).records
    finally:
        stop_gateways(pair)
