"""scripts/query_latency_parts.py measures every gateway variant end to end (README, Speed).

Each variant is a real gateway process (or the thread-pool server) answering real mTLS
calls; the test checks that each answers 10 rows and gets a row of figures, not the figures.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "query_latency_parts.py"
VARIANTS = ("shipped", "no-audit", "audit-only", "from-memory", "thread-pool")
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
    ("args", "message"),
    [
        (["--variants", "shipped,turbo"], "unknown variant turbo"),
        (["--variants", ","], "--variants names none"),
        (["--seconds", "0"], "--seconds must be above 0"),
        (["--rounds", "0"], "--rounds must be at least 1"),
        (["--calls", "0"], "--calls must be at least 1"),
        (["--instructions", "--variants", "thread-pool"], "unknown variant thread-pool"),
        (["--parts"], "--parts counts instructions: give --instructions too"),
        (
            ["--instructions", "--parts", "--variants", "no-audit"],
            "--parts counts the shipped gateway's handler: leave out --variants",
        ),
    ],
)
def test_bad_arguments_are_named(args: list[str], message: str) -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert message in out.stderr


COUNT_ROW = re.compile(r"^(\S+)\s+([\d,]+)\s+([\d,]+)\s+([+-][\d,]+)$")


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_instructions_are_counted_under_callgrind() -> None:
    # The real gateway process and the bare server, each under valgrind's callgrind: the
    # gateway's own layer (mutual TLS, authentication, metrics) costs instructions the
    # bare server does not execute.
    out = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--instructions",
            "--calls",
            "5",
            "--variants",
            "from-memory",
        ],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert out.returncode == 0, out.stderr
    rows = [m for line in out.stdout.splitlines() if (m := COUNT_ROW.match(line))]
    assert [m.group(1) for m in rows] == ["from-memory"], out.stdout
    ours, bare, gap = (int(m.replace(",", "")) for m in rows[0].group(2, 3, 4))
    assert ours > bare > 100_000
    assert abs(gap - (ours - bare)) <= 1  # each figure rounded on its own


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_each_part_of_the_handler_is_counted_in_the_gateway_process() -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--instructions", "--parts", "--calls", "100"],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert out.returncode == 0, out.stderr
    counted = {}
    for line in out.stdout.splitlines()[1:]:
        part, _, number = line.rpartition(" ")
        counted[part.strip()] = int(number.replace(",", ""))
    assert list(counted) == [
        "dataset look-up",
        "request bytes",
        "kept plan",
        "SQLite page",
        "page token",
        "page bytes",
        "audit entry",
        "whole handler",
    ], out.stdout
    assert all(n > 0 for n in counted.values()), out.stdout
    # The handler does each of the others once, and little besides.
    parts = sum(n for part, n in counted.items() if part != "whole handler")
    assert 0.7 * parts < counted["whole handler"] < 1.3 * parts, out.stdout


def _script() -> Any:
    spec = importlib.util.spec_from_file_location("query_latency_parts", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_callgrind_dump_is_read_by_its_summary_line(tmp_path: Path) -> None:
    script = _script()
    dump = tmp_path / "out.callgrind.1"
    dump.write_text(
        "# callgrind format\nversion: 1\nevents: Ir\nfl=x\nfn=y\n0 5\nsummary: 1234567\n"
    )
    assert script._instructions(dump) == 1234567
    totals = tmp_path / "old.callgrind.1"
    totals.write_text("events: Ir\ntotals: 42\n")
    assert script._instructions(totals) == 42
    broken = tmp_path / "broken"
    broken.write_text("events: Ir\n")
    with pytest.raises(SystemExit, match="has no summary line: not a callgrind dump"):
        script._instructions(broken)
