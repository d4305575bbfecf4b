"""Slows down API key guessing: once an address has failed too often, its wrong keys answer 429.

Keys carry 256 random bits, so guessing one is hopeless anyway; the limit keeps a client that
sprays wrong keys cheap to refuse and visible (429s in the access log). It never stands between
a valid key and the API (see ``api.deps.authentication_refused``). To bound every client's
request rate, rate-limit at the reverse proxy (README, Security).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque


class FailureLimiter:
    """Counts failures per client address in a sliding window, in memory and thread-safe.

    While an address has ``max_failures`` failures within ``window_s``, its further wrong keys
    answer 429 instead of 401; successful requests are never counted, nor refused.
    """

    def __init__(self, max_failures: int, window_s: float = 60.0) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float]:
        times = self._failures.get(client) or deque(maxlen=self.max_failures)
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times

    def retry_after(self, client: str) -> int | None:
        """Seconds until ``client`` may try again, or ``None`` when it is not blocked."""
        now = time.monotonic()
        with self._lock:
            times = self._recent(client, now)
            if not times:
                self._failures.pop(client, None)  # forget idle addresses so the map stays small
            if len(times) < self.max_failures:
                return None
            return max(1, math.ceil(times[0] + self.window_s - now))

    def record_failure(self, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            times = self._recent(client, now)
            times.append(now)
            self._failures[client] = times
