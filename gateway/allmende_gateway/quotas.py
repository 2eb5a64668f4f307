"""Requests per minute under sharing agreements: a sliding 60-second window per consumer.

The window is kept per (member, agreements that granted): the same member under another
agreement has its own quota. Query pages, Aggregate calls and Subscribe opens each count as
one request; a refused request does not count, so a consumer that waits is served again.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence

from allmende.errors import QuotaExceeded

__all__ = ["QuotaBook"]

WINDOW_S = 60.0


class QuotaBook:
    """Counts admitted requests; used on the gateway's event loop only (no lock)."""

    def __init__(
        self, *, monotonic: Callable[[], float] = time.monotonic, window_s: float = WINDOW_S
    ) -> None:
        self._monotonic = monotonic
        self._window_s = window_s
        self._seen: dict[tuple[str, tuple[str, ...]], deque[float]] = {}

    def admit(self, member: str, agreements: Sequence[str], per_minute: int) -> None:
        """Count one request of ``member`` under ``agreements``; ``per_minute`` 0 means no quota.

        Raises QuotaExceeded (with the seconds until the oldest request leaves the window)
        when ``per_minute`` requests were already admitted in the last minute.
        """
        if per_minute <= 0:
            return
        now = self._monotonic()
        key = (member, tuple(agreements))
        times = self._seen.get(key)
        if times is None:
            self._forget_idle(now)
            times = self._seen[key] = deque()
        while times and times[0] <= now - self._window_s:
            times.popleft()
        if len(times) >= per_minute:
            # The per_minute-th newest request must leave the window before another fits.
            retry = times[len(times) - per_minute] + self._window_s - now
            raise QuotaExceeded(member, key[1], per_minute, max(retry, 0.001))
        times.append(now)

    def _forget_idle(self, now: float) -> None:
        """Drop the windows that hold nothing recent, so the book stays as small as the
        set of consumers active in the last minute."""
        idle = [k for k, t in self._seen.items() if not t or t[-1] <= now - self._window_s]
        for k in idle:
            del self._seen[k]
