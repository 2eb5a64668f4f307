"""scripts/query_latency_parts.py measures every gateway variant end to end (README, Speed).

Each variant is a real gateway process (or the thread-pool server) answering real mTLS
calls; the test checks that each answers 10 rows and gets a row of figures, not the figures.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "query_latency_parts.py"


def _variants() -> tuple[str, ...]:
    """The variants the script defines: by default it measures every one of them."""
    spec = importlib.util.spec_from_file_location("query_latency_parts", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return tuple(module.VARIANTS)


VARIANTS = _variants()
# variant, ratio, req/s both sides, then p50 gap and both p50s, then CPU per call likewise
# (from /proc; dashes where there is none).
_P50 = r"[+-]\d+µs\s+\d+µs\s+\d+µs"
_CPU = r"(?:[+-]\d+µs\s+\d+µs\s+\d+µs|—\s+—\s+—)"
ROW = re.compile(rf"^(\S+)\s+(\d+\.\d\d)x\s+[\d,]+\s+[\d,]+\s+{_P50}\s+({_CPU})$")


def test_every_variant_is_measured() -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--seconds", "0.2", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr
    rows = [m for line in out.stdout.splitlines() if (m := ROW.match(line))]
    assert [m.group(1) for m in rows] == list(VARIANTS), out.stdout
    assert all(float(m.group(2)) > 0 for m in rows)
    # Linux has /proc: every variant gets its servers' CPU per call.
    assert all("—" not in m.group(3) for m in rows), out.stdout


@pytest.mark.parametrize(
    ("baseline", "variants", "header"),
    [
        (["--against", "shipped"], ["no-sqlite-page", "thread-pool"], "shipped req/s"),
        (["--bare", "thread-pool"], ["shipped", "thread-pool"], "bare req/s"),
    ],
    ids=["against the gateway as shipped", "against a bare thread-pool server"],
)
def test_variants_are_measured_against_another_baseline(
    baseline: list[str], variants: list[str], header: str
) -> None:
    short = ["--seconds", "0.2", "--rounds", "1", "--variants", ",".join(variants)]
    out = subprocess.run(
        [sys.executable, str(SCRIPT), *short, *baseline],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr
    assert header in out.stdout.splitlines()[0], out.stdout
    rows = [m for line in out.stdout.splitlines() if (m := ROW.match(line))]
    assert [m.group(1) for m in rows] == variants, out.stdout
    assert all("—" not in m.group(3) for m in rows), out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--variants", "shipped,turbo"], "unknown variant turbo"),
        (["--variants", ","], "--variants names none"),
        (["--seconds", "0"], "--seconds must be above 0"),
        (["--rounds", "0"], "--rounds must be at least 1"),
        (["--against", "opa"], "invalid choice: 'opa'"),
        (["--bare", "uvloop"], "invalid choice: 'uvloop'"),
    ],
)
def test_bad_arguments_are_named(args: list[str], message: str) -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert message in out.stderr
