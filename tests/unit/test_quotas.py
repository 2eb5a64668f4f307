"""Requests per minute: a sliding window per member and agreements, refused requests not counted."""

from __future__ import annotations

import pytest

from allmende.errors import QuotaExceeded
from allmende_gateway.quotas import QuotaBook


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_window_slides() -> None:
    clock = Clock()
    book = QuotaBook(monotonic=clock)
    for _ in range(3):
        book.admit("pirmasens", ["ka-ps"], 3)
        clock.now += 10
    with pytest.raises(QuotaExceeded) as err:
        book.admit("pirmasens", ["ka-ps"], 3)
    # The first request (at 1000) leaves the window at 1060; it is 1030 now.
    assert err.value.retry_after_s == pytest.approx(30.0)
    assert err.value.agreements == ["ka-ps"] and err.value.per_minute == 3
    assert "ka-ps allows pirmasens 3 request(s) per minute" in str(err.value)
    clock.now = 1060.0
    book.admit("pirmasens", ["ka-ps"], 3)  # one slot freed
    with pytest.raises(QuotaExceeded):
        book.admit("pirmasens", ["ka-ps"], 3)


def test_refused_requests_do_not_count() -> None:
    clock = Clock()
    book = QuotaBook(monotonic=clock)
    book.admit("pirmasens", ["ka-ps"], 1)
    for _ in range(5):
        clock.now += 10
        with pytest.raises(QuotaExceeded):
            book.admit("pirmasens", ["ka-ps"], 1)
    clock.now = 1060.0
    book.admit("pirmasens", ["ka-ps"], 1)


def test_members_and_agreements_have_their_own_windows() -> None:
    clock = Clock()
    book = QuotaBook(monotonic=clock)
    book.admit("pirmasens", ["ka-ps"], 1)
    book.admit("sankt-wendel", ["ka-ps"], 1)
    book.admit("pirmasens", ["ka-ps", "ka-research"], 1)
    with pytest.raises(QuotaExceeded):
        book.admit("pirmasens", ["ka-ps"], 1)


def test_no_quota_means_no_count() -> None:
    book = QuotaBook(monotonic=Clock())
    for _ in range(1000):
        book.admit("pirmasens", [], 0)


def test_idle_windows_are_forgotten() -> None:
    clock = Clock()
    book = QuotaBook(monotonic=clock)
    for i in range(50):
        book.admit(f"m{i}", ["a"], 5)
    clock.now += 61
    book.admit("late", ["a"], 5)
    assert len(book._seen) == 1
