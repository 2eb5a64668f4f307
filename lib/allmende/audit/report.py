"""Who accessed my data, for which purpose, how much: audit entries summed up per dataset.

One row per dataset, member, service, purpose and action: requests allowed and denied,
records (or groups) served and the time of the first and last request. A subscription
counts as one request when it opens; what it streamed arrives with its "stream-end" entry.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from allmende.audit.chain import AuditError

__all__ = ["ReportRow", "parse_since", "render_csv", "render_json", "summarize"]

_RELATIVE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


@dataclass
class ReportRow:
    dataset: str
    member: str
    service: str
    purpose: str
    action: str
    allowed: int = 0
    denied: int = 0
    rows: int = 0
    first: str = ""
    last: str = ""


COLUMNS = tuple(f.name for f in fields(ReportRow))


def _when(text: object) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``--since``: an RFC 3339 time or date (UTC unless it says otherwise), or a duration
    back from now (``90m``, ``24h``, ``7d``). Raises AuditError naming the value."""
    match = _RELATIVE.match(text.strip())
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[unit]: amount})
    moment = _when(text.strip())
    if moment is None:
        raise AuditError(
            f"--since {text!r} is neither a time (2026-11-01 or 2026-11-01T08:00:00Z) "
            "nor a duration (90m, 24h, 7d)"
        )
    return moment


def _dataset_matches(entry: Mapping[str, Any], wanted: str) -> bool:
    dataset = str(entry.get("dataset", ""))
    return wanted in (dataset, f"{entry.get('owner', '')}/{dataset}")


def summarize(
    entries: Iterable[Mapping[str, Any]],
    *,
    dataset: str | None = None,
    member: str | None = None,
    since: datetime | None = None,
) -> list[ReportRow]:
    """Sum ``entries`` up; ``dataset`` (id or owner/id), ``member`` and ``since`` filter.

    Rows come sorted by dataset, member, service, purpose and action.
    """
    out: dict[tuple[str, str, str, str, str], ReportRow] = {}
    for entry in entries:
        if dataset is not None and not _dataset_matches(entry, dataset):
            continue
        subject = entry.get("subject")
        subject = subject if isinstance(subject, Mapping) else {}
        who = str(subject.get("member", ""))
        if member is not None and who != member:
            continue
        when = _when(entry.get("time"))
        if since is not None and (when is None or when < since):
            continue
        key = (
            str(entry.get("dataset", "")),
            who,
            str(subject.get("service", "")),
            str(entry.get("purpose", "")),
            str(entry.get("action", "")),
        )
        row = out.get(key)
        if row is None:
            row = out[key] = ReportRow(*key)
        rows = entry.get("rows", 0)
        row.rows += rows if isinstance(rows, int) and not isinstance(rows, bool) else 0
        if entry.get("event", "decision") == "decision":
            if entry.get("allow") is True:
                row.allowed += 1
            else:
                row.denied += 1
        stamp = str(entry.get("time", ""))
        if stamp and when is not None:
            if not row.first or when < (_when(row.first) or when):
                row.first = stamp
            if not row.last or when > (_when(row.last) or when):
                row.last = stamp
    return [out[k] for k in sorted(out)]


def render_csv(rows: Iterable[ReportRow]) -> str:
    """The rows as CSV with a header line."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([getattr(row, c) for c in COLUMNS])
    return buf.getvalue()


def render_json(rows: Iterable[ReportRow]) -> str:
    """The rows as a JSON list of objects."""
    return json.dumps([asdict(r) for r in rows], indent=2, ensure_ascii=False)
