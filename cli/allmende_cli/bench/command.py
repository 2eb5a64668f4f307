"""`allmende bench`: measure each speed target of issue 5 against its baseline, in one run."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from .measure import SHOWN_ONLY, Row, machine_speed

__all__ = ["register", "run_bench"]

QUICK = {"seconds": 0.3, "rows": 200, "decisions": 2_000, "publish": 500, "memory": 5_000}
FULL_ROWS, FULL_DECISIONS, FULL_PUBLISH = 2_000, 50_000, 2_000
FULL_MEMORY_ROWS = 1_000_000
DEFAULT_SECONDS = 3.0


def run_bench(
    *,
    quick: bool,
    seconds: float | None,
    memory_rows: int | None = None,
    speeds: list[float] | None = None,
) -> list[Row]:
    """Every benchmark row; servers and broker start on free loopback ports and stop here.

    ``memory_rows`` sizes the bounded-memory run (default 1,000,000, quick 20,000; 0 skips).
    ``speeds``, when given, receives ``machine_speed()`` as measured before each part.
    """
    from .memory_bench import run_memory_benchmark
    from .policy_bench import run_policy_benchmark
    from .publish_bench import run_publish_benchmark
    from .query_bench import run_query_benchmarks
    from .subscribe_bench import run_subscribe_benchmark
    from .town import make_bench_town

    if quick:
        secs = seconds or float(QUICK["seconds"])
        rows, decisions, publish = (
            int(QUICK["rows"]),
            int(QUICK["decisions"]),
            int(QUICK["publish"]),
        )
    else:
        secs = seconds or DEFAULT_SECONDS
        rows, decisions, publish = FULL_ROWS, FULL_DECISIONS, FULL_PUBLISH
    if memory_rows is None:
        memory_rows = int(QUICK["memory"]) if quick else FULL_MEMORY_ROWS
    out: list[Row] = []
    probe = 0.05 if quick else 0.3

    def speed() -> None:
        if speeds is not None:
            speeds.append(machine_speed(probe))

    with tempfile.TemporaryDirectory(prefix="allmende-bench-") as tmp:
        town = make_bench_town(Path(tmp), rows)
        speed()
        out += run_query_benchmarks(town, secs)
        speed()
        out += run_policy_benchmark(town, decisions)
        speed()
        out += run_subscribe_benchmark(town, secs)
        speed()
        out += run_publish_benchmark(town, publish, secs)
        speed()
        if memory_rows:
            big = make_bench_town(Path(tmp) / "memory", memory_rows)
            out += run_memory_benchmark(big)
    return out


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "us":
        return f"{value:,.1f} µs"
    return f"{value:,.0f} {unit}"


def _figure(row: Row) -> str:
    # A rate or a size against the baseline's is a ratio (for a target in rec/s too, beside
    # the absolute figure); a time against the baseline's is the difference.
    if row.unit != "us":
        return f"{row.ratio:.2f}x"
    if row.baseline is not None:
        return f"{row.ratio:+,.0f} µs"
    return f"{row.ratio:,.1f} µs"


def format_table(rows: list[Row]) -> str:
    header = ("what", "ours", "baseline", "ratio", "target", "")
    lines = [
        (
            r.what,
            _fmt(r.ours, r.unit),
            _fmt(r.baseline, r.unit),
            _figure(r),
            r.target,
            "" if r.target == SHOWN_ONLY else "✓" if r.ok else "✗",
        )
        for r in rows
    ]
    widths = [max(len(str(x[i])) for x in [header, *lines]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    text = [fmt.format(*header).rstrip(), fmt.format(*("-" * w for w in widths))]
    text += [fmt.format(*line).rstrip() for line in lines]
    text.append("")
    text += [f"* {r.what}: {r.note}" for r in rows]
    return "\n".join(text)


def _run(args: argparse.Namespace) -> int:
    started = time.time()
    speeds: list[float] = []
    rows = run_bench(
        quick=args.quick, seconds=args.seconds, memory_rows=args.memory_rows, speeds=speeds
    )
    elapsed = time.time() - started
    if args.json:
        json.dump(
            {
                "date": time.strftime("%Y-%m-%d", time.gmtime(started)),
                "cores": os.cpu_count(),
                "python": platform.python_version(),
                "quick": args.quick,
                "elapsed_s": round(elapsed, 2),
                "machine_speed_msteps": [round(v, 2) for v in speeds],
                "rows": [r.as_dict() for r in rows],
            },
            sys.stdout,
            indent=2,
        )
        print()
    else:
        print(
            f"allmende bench — {time.strftime('%Y-%m-%d', time.gmtime(started))}, "
            f"{os.cpu_count()} cores, Python {platform.python_version()}, {elapsed:.0f} s"
        )
        print(
            f"machine speed: {min(speeds):.1f} to {max(speeds):.1f} M steps/s of a fixed Python "
            f"loop, measured before each part ({', '.join(f'{v:.1f}' for v in speeds)})"
        )
        print(format_table(rows))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="measure the gateway, policy, subscribe and publish speeds against bare baselines",
    )
    p.add_argument("--json", action="store_true", help="print JSON for machines")
    p.add_argument("--quick", action="store_true", help="small sizes, a few seconds in all")
    p.add_argument(
        "--seconds",
        type=float,
        default=None,
        help=f"seconds per measurement (default {DEFAULT_SECONDS}, quick {QUICK['seconds']})",
    )
    p.add_argument(
        "--memory-rows",
        type=int,
        default=None,
        help=f"rows for the bounded-memory run (default {FULL_MEMORY_ROWS:,}, quick "
        f"{QUICK['memory']:,}; 0 skips it)",
    )
    p.set_defaults(run=_run)
