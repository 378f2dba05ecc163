"""A fixed log-bucket latency histogram: O(1) record, percentiles within ~5% of the true value.

Why not keep samples: shadowing runs at full traffic rates for weeks; buckets cost a bounded array.
Buckets grow by 5% from 10 us to ~100 s; a value is reported at its bucket's upper edge.
"""

from __future__ import annotations

import math

_LOW_S = 10e-6
_GROWTH = 1.05
_LOG_GROWTH = math.log(_GROWTH)
_BUCKETS = int(math.log(100.0 / _LOW_S) / _LOG_GROWTH) + 2


class LatencyHistogram:
    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * _BUCKETS
        self.total = 0

    def record(self, seconds: float) -> None:
        index = 0 if seconds <= _LOW_S else min(_BUCKETS - 1, int(math.log(seconds / _LOW_S) / _LOG_GROWTH) + 1)
        self.counts[index] += 1
        self.total += 1

    def quantile(self, q: float) -> float:
        """Seconds at quantile q (0..1), the bucket's upper edge; 0.0 with no samples."""
        if not self.total:
            return 0.0
        rank = max(1, math.ceil(q * self.total))
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                return _LOW_S * _GROWTH ** index
        return _LOW_S * _GROWTH ** (_BUCKETS - 1)

    def summary_ms(self) -> dict[str, float]:
        return {name: round(self.quantile(q) * 1000, 3) for name, q in (("p50", 0.5), ("p99", 0.99),
                                                                        ("p999", 0.999))}
