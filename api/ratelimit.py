"""Slows down API key guessing: too many failed authentications from one address answer 429."""

from __future__ import annotations

import math
import threading
import time
from collections import deque


class FailureLimiter:
    """Counts failures per client address in a sliding window, in memory and thread-safe.

    While an address has ``max_failures`` failures within ``window_s`` it is refused outright,
    valid key or not, so a guess that happens to succeed cannot be told apart during the block.
    Successful requests are never counted.
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
