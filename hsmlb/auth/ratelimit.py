"""A token bucket per caller: plain values and an injected clock, so tests move time instead of sleeping."""

from __future__ import annotations

from hsmlb.clock import Clock


class TokenBucket:
    """`per_s` tokens a second up to `burst`; each operation takes one.

    Why a bucket and not a window: it allows a caller's short bursts up to `burst` and holds the
    long-run rate to `per_s`, and the refusal can say exactly when the next token arrives."""

    __slots__ = ("burst", "clock", "per_s", "stamp", "tokens")

    def __init__(self, per_s: float, burst: float, clock: Clock) -> None:
        self.per_s = per_s
        self.burst = burst
        self.clock = clock
        self.tokens = burst
        self.stamp = clock()

    def take(self) -> float:
        """0.0 when a token was taken; else the seconds until one will be there (nothing taken)."""
        now = self.clock()
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.per_s)
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / self.per_s
