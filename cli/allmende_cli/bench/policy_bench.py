"""The owner's policy decision in process: ``PolicyEngine.decide`` on a realistic agreement input."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

from allmende.audit.chain import seal, sealed_text

from .measure import ROUNDS, SHOWN_ONLY, Row, percentile
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


def distinct_inputs(cluster: str, n: int) -> list[dict[str, Any]]:
    """``n`` requests, built afresh as the gateway builds them, that differ in their limit."""
    values = []
    for i in range(n):
        value = policy_input(cluster)
        value["request"]["limit"] = i + 1
        values.append(value)
    return values


def as_the_gateway_asks(values: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str]]:
    """Each input sealed, as the gateway's Enforcer seals it for the audit log, with the
    text it hands the engine (``PolicyEngine.decide(input, input_json=…)``)."""
    out = []
    for value in values:
        sealed = seal(value)
        text = sealed_text(sealed)
        assert text is not None, "a policy input of plain values is sealed with its text"
        out.append((sealed, text))
    return out


def run_policy_benchmark(town: BenchTown, decisions: int) -> list[Row]:
    """PolicyEngine.decide on requests it has not seen (each one differs from the others, so
    none is answered from the engine's cache of inputs) and on one request repeated, as
    requests repeat within a second. The targets are judged on the distinct requests."""
    from allmende_gateway.server import load_policy

    engine = load_policy(town.config.gateway)
    doc = policy_input(town.config.gateway.cluster)
    decision = engine.decide(doc)
    assert decision.allow, f"the bench agreement should allow: {list(decision.reasons)}"
    warmup = min(200, decisions)
    cluster = town.config.gateway.cluster
    sealed = as_the_gateway_asks(distinct_inputs(cluster, warmup + decisions))
    # The same requests as bare dicts: the engine encodes and checks each one itself.
    bare = distinct_inputs(cluster, warmup + decisions)
    for (value, text), plain in zip(sealed[:warmup], bare[:warmup], strict=True):
        engine.decide(value, input_json=text)
        engine.decide(plain)
    # The two kinds alternate in ROUNDS slices, so a machine that slows down for a while
    # slows both alike (as the other comparisons do).
    fresh: list[float] = []
    encoding: list[float] = []
    step = -(-decisions // ROUNDS)
    for start in range(warmup, warmup + decisions, step):
        pairs = sealed[start : start + step]
        fresh += _samples(lambda pair: engine.decide(pair[0], input_json=pair[1]), pairs)
        encoding += _samples(engine.decide, bare[start : start + step])
    for _ in range(warmup):
        engine.decide(doc)
    repeated = _samples(engine.decide, [doc] * decisions)
    p50 = percentile(fresh, 0.5) * 1e6
    p99 = percentile(fresh, 0.99) * 1e6
    encoded = percentile(encoding, 0.5) * 1e6
    cached = percentile(repeated, 0.5) * 1e6
    return [
        Row(
            what="policy decide p50 (distinct requests)",
            ours=p50,
            baseline=None,
            unit="us",
            ratio=p50,
            target=f"<= {P50_TARGET_US:.0f} µs",
            ok=p50 <= P50_TARGET_US,
            note=(
                "PolicyEngine.decide (regorus VM, owner's Rego + 1 agreement with masks), "
                f"{decisions:,} requests that differ in their limit: none from the cache; "
                "each input sealed as the gateway seals it, its JSON text handed over"
            ),
        ),
        Row(
            what="policy decide p99 (distinct requests)",
            ours=p99,
            baseline=None,
            unit="us",
            ratio=p99,
            target=f"<= {P99_TARGET_US:.0f} µs",
            ok=p99 <= P99_TARGET_US,
            note=f"same {decisions:,} decisions, 99th percentile",
        ),
        Row(
            what="policy decide p50 (distinct, engine encodes)",
            ours=encoded,
            baseline=None,
            unit="us",
            ratio=encoded,
            target=SHOWN_ONLY,
            ok=True,
            note=(
                f"the same {decisions:,} requests as plain dicts: the engine checks and "
                "encodes each input itself (callers other than the gateway)"
            ),
        ),
        Row(
            what="policy decide p50 (repeated within a second)",
            ours=cached,
            baseline=None,
            unit="us",
            ratio=cached,
            target=f"<= {P50_TARGET_US:.0f} µs",
            ok=cached <= P50_TARGET_US,
            note=(
                f"one request {decisions:,} times: answered from the exact cache of inputs "
                "(the input holds `now` to the second); not what the target is judged on"
            ),
        ),
    ]


def _samples(decide: Callable[[Any], object], values: list[Any]) -> list[float]:
    samples: list[float] = []
    clock = time.perf_counter
    for value in values:
        t0 = clock()
        decide(value)
        samples.append(clock() - t0)
    return samples
