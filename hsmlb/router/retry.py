"""Retry budget (Finagle/Envoy style): retries stay under a fraction of requests, with a floor.

Each request deposits `ratio` tokens, each retry withdraws one; a floor of `min_per_s`
retries per second is always allowed so a quiet daemon can still retry. Deposits expire after
`window_s`. Pure: time comes from the caller.
"""

from __future__ import annotations

import random
from collections import deque


class RetryBudget:
    """Counts requests and retries in one-second buckets over the window (O(1) per request)."""

    def __init__(self, ratio: float = 0.2, min_per_s: float = 5.0, window_s: float = 10.0) -> None:
        self.ratio = ratio
        self.min_per_s = min_per_s
        self.window_s = window_s
        self._buckets: deque[list[int]] = deque()  # [second, requests, retries]
        self.refused = 0

    def _bucket(self, now: float) -> list[int]:
        second = int(now)
        buckets = self._buckets
        if not buckets or buckets[-1][0] != second:
            buckets.append([second, 0, 0])
            horizon = second - self.window_s
            while buckets[0][0] <= horizon:
                buckets.popleft()
        return buckets[-1]

    def record_request(self, now: float) -> None:
        self._bucket(now)[1] += 1

    def would_allow(self, now: float) -> bool:
        """Whether try_withdraw would succeed now (withdraws nothing)."""
        self._bucket(now)
        requests = sum(b[1] for b in self._buckets)
        retries = sum(b[2] for b in self._buckets)
        return retries + 1 <= self.ratio * requests + self.min_per_s * self.window_s

    def try_withdraw(self, now: float) -> bool:
        bucket = self._bucket(now)
        requests = sum(b[1] for b in self._buckets)
        retries = sum(b[2] for b in self._buckets)
        if retries + 1 > self.ratio * requests + self.min_per_s * self.window_s:
            self.refused += 1
            return False
        bucket[2] += 1
        return True

    @property
    def retries_in_window(self) -> int:
        return sum(b[2] for b in self._buckets)


def backoff_s(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Full-jitter exponential back-off for retry `attempt` (1-based)."""
    return rng.uniform(0, min(max_s, base_s * 2 ** (attempt - 1)))
