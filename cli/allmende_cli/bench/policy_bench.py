"""The owner's policy decision in process: ``PolicyEngine.decide`` on a realistic agreement input."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from .measure import Row, percentile
from .town import CONSUMER, DATASET, OWNER, PURPOSE, BenchTown

__all__ = ["run_policy_benchmark"]

P50_TARGET_US = 30.0
P99_TARGET_US = 100.0


def policy_input(cluster: str) -> dict[str, Any]:
    """What the gateway's Enforcer asks for a partner's query under an agreement."""
    return {
        "subject": {"member": CONSUMER, "cluster": cluster, "service": "bench"},
        "action": "query",
        "resource": {
            "owner": OWNER,
            "cluster": cluster,
            "dataset": DATASET,
            "classification": "internal",
            "fields": ["permit_id", "holder", "plate", "district", "zone"],
        },
        "request": {"purpose": PURPOSE, "fields": [], "limit": 100},
        "now": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00"),
    }


def run_policy_benchmark(town: BenchTown, decisions: int) -> list[Row]:
    from allmende_gateway.server import load_policy

    engine = load_policy(town.config.gateway)
    doc = policy_input(town.config.gateway.cluster)
    decision = engine.decide(doc)
    assert decision.allow, f"the bench agreement should allow: {list(decision.reasons)}"
    for _ in range(min(200, decisions)):
        engine.decide(doc)
    samples: list[float] = []
    clock = time.perf_counter
    for _ in range(decisions):
        t0 = clock()
        engine.decide(doc)
        samples.append(clock() - t0)
    p50 = percentile(samples, 0.5) * 1e6
    p99 = percentile(samples, 0.99) * 1e6
    return [
        Row(
            what="policy decide p50",
            ours=p50,
            baseline=None,
            unit="us",
            ratio=p50,
            target=f"<= {P50_TARGET_US:.0f} µs",
            ok=p50 <= P50_TARGET_US,
            note=f"PolicyEngine.decide (regorus, owner's Rego + 1 agreement), {decisions:,} runs",
        ),
        Row(
            what="policy decide p99",
            ours=p99,
            baseline=None,
            unit="us",
            ratio=p99,
            target=f"<= {P99_TARGET_US:.0f} µs",
            ok=p99 <= P99_TARGET_US,
            note=f"same {decisions:,} decisions, 99th percentile",
        ),
    ]
