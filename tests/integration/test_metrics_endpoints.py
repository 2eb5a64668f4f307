"""/metrics on a running node and gateway: a real broker, real mTLS calls, scraped over HTTP.

The gateway counts calls by method and status, decisions by result and rows served; the
node reports what it published, what waits in its outbox and how far its followers lag.
"""

from __future__ import annotations

import dataclasses
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from allmende.ca import CertificateAuthority
from allmende.config import BackboneConfig
from allmende.errors import InvalidRequest
from allmende_gateway import GatewayThread
from allmende_node import Node

from .towns import make_town, publish_trust

pytestmark = pytest.mark.integration


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, number = line.rpartition(" ")
            out[name] = float(number)
    return out


def eventually(what: str, probe: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:.0f} s: {what}")
        time.sleep(0.05)


def test_gateway_and_node_serve_prometheus_metrics(
    tmp_path: Path, backbone: BackboneConfig
) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", "suedwest")
    town = make_town(
        tmp_path,
        ca,
        ca.cert_path,
        "kaiserslautern",
        datasets=True,
        bootstrap=backbone.bootstrap_servers[0],
        topic_prefix=backbone.topic_prefix,
    )
    gateway_config = dataclasses.replace(town.config.gateway, metrics_listen="127.0.0.1:0")
    node_config = dataclasses.replace(town.config.node, metrics_listen="127.0.0.1:0")
    publish_trust(ca, backbone)
    node = Node(node_config).start()
    gateway = GatewayThread(gateway_config)
    try:
        gateway.start()
        gw_url = gateway.gateway.metrics_url
        assert gw_url.startswith("http://127.0.0.1:") and gw_url.endswith("/metrics")
        with town.client(ca, "dashboard") as client:
            page = client.query("kaiserslautern", "parking-sites", "traffic-planning")
            with pytest.raises(InvalidRequest):
                client.query("kaiserslautern", "parking-sites", "")  # no purpose: refused
        rows = len(page.records)
        assert rows > 0
        invalid = (
            'allmende_gateway_requests_total{code="INVALID_ARGUMENT",method="QueryService/Query"}'
        )
        # A refused call's status leaves the gateway (context.abort sends it) before the
        # call's handler returns and is counted: the count may follow a moment later.
        eventually("the refused call is counted", lambda: invalid in scrape(gw_url))
        m = scrape(gw_url)
        query = 'allmende_gateway_requests_total{code="OK",method="QueryService/Query"}'
        assert m[query] == 1
        assert m[invalid] == 1
        assert m['allmende_gateway_request_seconds_count{method="QueryService/Query"}'] >= 1
        assert m['allmende_gateway_decisions_total{action="query",result="allow"}'] == 1
        assert m['allmende_gateway_rows_served_total{dataset="parking-sites"}'] == rows

        node_url = node.metrics_url
        assert node_url.startswith("http://127.0.0.1:")

        def published_everything() -> bool:
            n = scrape(node_url)
            return (
                n.get('allmende_node_published_events_total{kind="outbox"}', 0) > 0
                and n.get("allmende_node_outbox_pending") == 0
            )

        eventually("the node published its outbox", published_everything)
        n = scrape(node_url)
        trust = f'allmende_node_read_messages_total{{topic="{backbone.topic_prefix}.trust"}}'
        eventually("the trust topic was read", lambda: scrape(node_url).get(trust, 0) > 0)
        lag = f'allmende_node_consumer_lag{{topic="{backbone.topic_prefix}.trust"}}'
        eventually("the trust follower caught up", lambda: scrape(node_url).get(lag) == 0)
        assert n["allmende_node_outbox_pending"] == 0
    finally:
        gateway.stop()
        node.stop()
    # Both endpoints close with their owners.
    for url in (gw_url, node_url):
        with pytest.raises(OSError):
            urllib.request.urlopen(url, timeout=1)
