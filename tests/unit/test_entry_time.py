"""An audit entry's time, formatted once per second (allmende_gateway.serving.UtcMillis)."""

from __future__ import annotations

import datetime as dt
import threading

from hypothesis import given
from hypothesis import strategies as st

from allmende_gateway.serving import UtcMillis

UTC_TIMES = st.datetimes(
    min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31, 23, 59, 59)
).map(lambda t: t.replace(tzinfo=dt.UTC))


@given(st.lists(UTC_TIMES, min_size=1, max_size=20))
def test_it_writes_what_isoformat_writes(times: list[dt.datetime]) -> None:
    entry_time = UtcMillis()
    for t in times:
        assert entry_time(t) == t.isoformat(timespec="milliseconds")


@given(UTC_TIMES, st.lists(st.integers(0, 999_999), min_size=2, max_size=20))
def test_times_within_one_second_differ_in_their_milliseconds(
    t: dt.datetime, micros: list[int]
) -> None:
    # The second's text is reused; the milliseconds (truncated, as isoformat does) are not.
    entry_time = UtcMillis()
    for us in micros:
        same_second = t.replace(microsecond=us)
        assert entry_time(same_second) == same_second.isoformat(timespec="milliseconds")


def test_a_new_second_is_formatted_anew() -> None:
    entry_time = UtcMillis()
    t = dt.datetime(2026, 12, 2, 7, 59, 59, 999_999, tzinfo=dt.UTC)
    assert entry_time(t) == "2026-12-02T07:59:59.999+00:00"
    assert entry_time(t + dt.timedelta(microseconds=1)) == "2026-12-02T08:00:00.000+00:00"
    # and back: a clock set back a second is not written with the later second's text
    assert entry_time(t) == "2026-12-02T07:59:59.999+00:00"


def test_threads_sharing_it_get_their_own_second() -> None:
    entry_time = UtcMillis()
    base = dt.datetime(2026, 12, 2, 8, 0, 0, tzinfo=dt.UTC)
    wrong: list[str] = []

    def write(offset: int) -> None:
        for i in range(2000):
            t = base + dt.timedelta(seconds=offset * 7 + i % 3, milliseconds=i % 1000)
            if entry_time(t) != t.isoformat(timespec="milliseconds"):
                wrong.append(t.isoformat())

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert wrong == []
