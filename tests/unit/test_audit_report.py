"""`summarize`: who accessed a dataset, for which purpose, how much; CSV and JSON."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from allmende.audit import AuditError, parse_since, render_csv, render_json, summarize


def e(
    time: str,
    member: str = "pirmasens",
    *,
    dataset: str = "parking-sites",
    purpose: str = "traffic-planning",
    action: str = "query",
    allow: bool = True,
    rows: int = 10,
    event: str = "decision",
    service: str = "dashboard",
) -> dict[str, Any]:
    return {
        "time": time,
        "subject": {"member": member, "service": service},
        "owner": "kaiserslautern",
        "dataset": dataset,
        "purpose": purpose,
        "action": action,
        "allow": allow,
        "rows": rows,
        "event": event,
    }


ENTRIES = [
    e("2026-11-01T08:00:00+00:00"),
    e("2026-11-03T08:00:00+00:00", rows=5),
    e("2026-11-02T08:00:00+00:00", allow=False, rows=0),
    e("2026-11-02T09:00:00+00:00", "sankt-wendel", purpose="research", allow=False, rows=0),
    e("2026-11-04T08:00:00+00:00", action="subscribe", rows=0),
    e("2026-11-04T09:00:00+00:00", action="subscribe", rows=42, event="stream-end"),
    e("2026-11-04T09:00:00+00:00", dataset="parking-permits", rows=3),
]


def test_sums_per_member_service_purpose_and_action() -> None:
    rows = summarize(ENTRIES, dataset="parking-sites")
    got = [
        (r.member, r.purpose, r.action, r.allowed, r.denied, r.rows, r.first, r.last) for r in rows
    ]
    assert got == [
        (
            "pirmasens",
            "traffic-planning",
            "query",
            2,
            1,
            15,
            "2026-11-01T08:00:00+00:00",
            "2026-11-03T08:00:00+00:00",
        ),
        (
            "pirmasens",
            "traffic-planning",
            "subscribe",
            1,
            0,
            42,  # what the stream delivered, counted once as a request when it opened
            "2026-11-04T08:00:00+00:00",
            "2026-11-04T09:00:00+00:00",
        ),
        (
            "sankt-wendel",
            "research",
            "query",
            0,
            1,
            0,
            "2026-11-02T09:00:00+00:00",
            "2026-11-02T09:00:00+00:00",
        ),
    ]
    assert {r.service for r in rows} == {"dashboard"}


def test_filters_by_owner_qualified_dataset_member_and_since() -> None:
    assert len(summarize(ENTRIES, dataset="kaiserslautern/parking-sites")) == 3
    assert [r.dataset for r in summarize(ENTRIES, dataset="parking-permits")] == ["parking-permits"]
    assert summarize(ENTRIES, dataset="other") == []
    assert {r.member for r in summarize(ENTRIES, member="sankt-wendel")} == {"sankt-wendel"}
    since = parse_since("2026-11-03")
    rows = summarize(ENTRIES, dataset="parking-sites", since=since)
    assert [(r.action, r.allowed, r.rows) for r in rows] == [("query", 1, 5), ("subscribe", 1, 42)]


def test_since_takes_times_dates_and_durations() -> None:
    now = datetime(2026, 11, 30, 12, tzinfo=UTC)
    assert parse_since("7d", now) == datetime(2026, 11, 23, 12, tzinfo=UTC)
    assert parse_since("90m", now) == datetime(2026, 11, 30, 10, 30, tzinfo=UTC)
    assert parse_since("2026-11-01T08:00:00Z") == datetime(2026, 11, 1, 8, tzinfo=UTC)
    with pytest.raises(AuditError, match="--since 'yesterday' is neither"):
        parse_since("yesterday")


def test_csv_and_json() -> None:
    rows = summarize(ENTRIES, dataset="parking-sites")
    parsed = list(csv.DictReader(io.StringIO(render_csv(rows))))
    assert parsed[0]["member"] == "pirmasens" and parsed[0]["rows"] == "15"
    assert list(parsed[0]) == [
        "dataset",
        "member",
        "service",
        "purpose",
        "action",
        "allowed",
        "denied",
        "rows",
        "first",
        "last",
    ]
    as_json = json.loads(render_json(rows))
    assert as_json[2] == {
        "dataset": "parking-sites",
        "member": "sankt-wendel",
        "service": "dashboard",
        "purpose": "research",
        "action": "query",
        "allowed": 0,
        "denied": 1,
        "rows": 0,
        "first": "2026-11-02T09:00:00+00:00",
        "last": "2026-11-02T09:00:00+00:00",
    }
