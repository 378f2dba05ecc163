"""The automatic weight drop: a weighted candidate whose error rate over a window passes a threshold
gets its weight set to 0 (by the `on_drop` callback, which also logs and persists it, and says
whether there was a weight to drop).

Pure bookkeeping with an injected clock; the router reports each weighted candidate attempt's outcome.
Counts live in whole-second buckets so a window costs O(window) memory per route, not per request.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable


class _Window:
    __slots__ = ("buckets", "errors", "total")

    def __init__(self) -> None:
        self.buckets: deque[list[int]] = deque()  # [second, total, errors]
        self.total = 0
        self.errors = 0

    def add(self, second: int, error: bool, horizon: int) -> None:
        buckets = self.buckets
        while buckets and buckets[0][0] <= second - horizon:
            _, total, errors = buckets.popleft()
            self.total -= total
            self.errors -= errors
        if not buckets or buckets[-1][0] != second:
            buckets.append([second, 0, 0])
        last = buckets[-1]
        last[1] += 1
        self.total += 1
        if error:
            last[2] += 1
            self.errors += 1


class CandidateWatch:
    def __init__(self, error_rate: float, min_requests: int, window_s: float,
                 on_drop: Callable[[str, int, int], bool]) -> None:
        self.error_rate = error_rate
        self.min_requests = min_requests
        self.horizon = max(1, int(window_s))
        self.on_drop = on_drop
        self._windows: dict[str, _Window] = {}
        self.drops = 0

    def record(self, route_op: str, ok: bool, now: float) -> bool:
        """Count one weighted candidate attempt; True when this one made the weight drop."""
        window = self._windows.get(route_op)
        if window is None:
            window = self._windows[route_op] = _Window()
        window.add(int(now), not ok, self.horizon)
        if ok or window.total < self.min_requests or window.errors < self.error_rate * window.total:
            return False
        errors, total = window.errors, window.total
        self._windows.pop(route_op, None)  # a fresh count once the weight is raised again
        if not self.on_drop(route_op, errors, total):
            return False  # already 0: late failures of requests weighted before the drop
        self.drops += 1
        return True

    def reset(self, route_op: str) -> None:
        self._windows.pop(route_op, None)
