"""Per-attempt timeout for idempotent operations, derived from the node's own recent latency.

Why: a request handed to a node that stops answering (a hung token, a stalled region) would wait for
its whole deadline. Envoy's per-try timeout and Finagle's failure accrual answer it the same way: give
an attempt only a bounded multiple of what the node usually takes, then try another node and count the
slow one as failing (its outlier score grows, so it is ejected if it keeps doing it).

The limit follows the node: `multiplier` x the EWMA of its answered attempts' latency, kept apart
for fast (symmetric, ECDSA) and slow (RSA) operations, bounded by `floor_s` (scheduling noise on a busy
host must never time an attempt out) and `ceiling_s` (a node that slows down gradually is still caught).
Attempts that timed out are not fed back: their latency is the fault's, not the node's normal.
Plain values; the pool passes the clock's readings in.
"""

from __future__ import annotations


class AttemptTimeout:
    __slots__ = ("alpha", "ceiling_s", "ewma_s", "floor_s", "multiplier", "timed_out")

    def __init__(self, multiplier: float, floor_s: float, ceiling_s: float, alpha: float = 0.05) -> None:
        if not 0 < floor_s <= ceiling_s or multiplier <= 0 or not 0 < alpha <= 1:
            raise ValueError("attempt timeout: need 0 < floor <= ceiling, multiplier > 0, 0 < alpha <= 1")
        self.multiplier = multiplier
        self.floor_s = floor_s
        self.ceiling_s = ceiling_s
        self.alpha = alpha
        self.ewma_s = [0.0, 0.0]  # [fast, slow]; 0: nothing seen yet (the floor applies)
        self.timed_out = 0  # attempts given up on so far

    def observe(self, latency_s: float, slow: bool) -> None:
        """An attempt answered within its limit after `latency_s`."""
        current = self.ewma_s[slow]
        self.ewma_s[slow] = latency_s if current == 0.0 else current + self.alpha * (latency_s - current)

    def limit_s(self, slow: bool) -> float:
        """How long the next attempt of this class may take on this node."""
        return min(self.ceiling_s, max(self.floor_s, self.multiplier * self.ewma_s[slow]))
