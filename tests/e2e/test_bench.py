"""`allmende bench --quick --json` runs end to end; every row has numbers and a target (or is
shown only, beside a judged figure).

No timing is asserted: the bench prints ratios from one run, it does not pass or fail on them.
"""

from __future__ import annotations

import json
import math

import pytest

from allmende_cli.bench.measure import SHOWN_ONLY
from allmende_cli.main import main

EXPECTED = {
    "query 10 rows, 32 in flight",
    "query 10 rows p50, 1 in flight",
    "query 10 rows, server CPU per call, 1 in flight",
    "query 10 rows, 32 in flight, vs bare thread-pool",
    "query 10 rows p50, 1 in flight, vs bare thread-pool",
    "query 100 rows, 32 in flight",
    "mTLS vs plaintext, bare, warm",
    "policy decide p50 (distinct requests)",
    "policy decide p99 (distinct requests)",
    "policy decide p50 (distinct, engine encodes)",
    "policy decide p50 (repeated within a second)",
}


def test_bench_quick_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--quick", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["quick"] is True
    # Which speed the run met: a fixed Python loop, measured before each of the five parts.
    speeds = report["machine_speed_msteps"]
    assert len(speeds) == 5 and all(math.isfinite(v) and v > 0 for v in speeds)
    rows = report["rows"]
    whats = {r["what"] for r in rows}
    assert whats >= EXPECTED
    assert any(w.startswith("subscribe from start") for w in whats)
    batched = [r for r in rows if r["what"].startswith("subscribe batches from start")]
    assert [r["target"] for r in batched] == [">= 100,000 rec/s"]
    assert any(w.startswith("publish") for w in whats)
    # Bounded memory: the gateway runs as its own process, its peak RSS is read from /proc.
    memory = [r for r in rows if r["what"].endswith("peak RSS")]
    assert [r["what"] for r in memory] == [
        "query all 5,000 rows: peak RSS",
        "subscribe all 5,000 rows: peak RSS",
    ]
    assert all(r["unit"] == "MB" and r["target"] == "<= 1.10x" for r in memory)
    for row in rows:
        assert isinstance(row["ours"], float) and math.isfinite(row["ours"]) and row["ours"] > 0
        if row["baseline"] is not None:
            assert math.isfinite(row["baseline"]) and row["baseline"] > 0
        assert math.isfinite(row["ratio"])
        # A figure shown beside a judged one has no target of its own.
        assert row["target"].startswith((">=", "<=")) or row["target"] == SHOWN_ONLY
        assert isinstance(row["ok"], bool)
        assert row["note"]
