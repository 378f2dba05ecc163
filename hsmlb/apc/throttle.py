"""Client-side quota buckets for APC regions: pure policy with an injected clock, no I/O.

Why: APC enforces per-account, per-region request quotas (by default 500/s with symmetric keys
and 20/s with asymmetric ones) and answers ThrottlingException beyond them. Sending requests we
know will be throttled wastes a round trip and the caller's deadline; a local token bucket per
region x key class lets the router move the request to another node at once instead.

A bucket grants a token now, or *reserves* one a short time ahead (the caller sleeps, then goes
without checking again), or refuses when the wait would exceed what the caller can afford.
Reservations are debt (tokens below zero), so concurrent waiters queue fairly in arrival order.
"""

from __future__ import annotations

import enum

from hsmlb.clock import Clock, monotonic

ASYMMETRIC_KEY_TYPES = frozenset({"RSA", "EC"})


class KeyClass(enum.StrEnum):
    SYMMETRIC = "symmetric"
    ASYMMETRIC = "asymmetric"


def key_class(key_type: str) -> KeyClass:
    """APC counts quotas separately for requests on asymmetric keys."""
    return KeyClass.ASYMMETRIC if key_type in ASYMMETRIC_KEY_TYPES else KeyClass.SYMMETRIC


class TokenBucket:
    """`rate` tokens per second, at most `rate * burst_s` (but at least one) banked."""

    def __init__(self, rate: float, burst_s: float, clock: Clock = monotonic) -> None:
        if rate <= 0 or burst_s <= 0:
            raise ValueError("rate and burst_s must be positive")
        self.rate = rate
        self.burst_s = burst_s
        self.capacity = max(1.0, rate * burst_s)
        self.clock = clock
        self.tokens = self.capacity
        self.updated = clock()
        self.granted = 0
        self.delayed = 0
        self.refused = 0

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def available(self) -> float:
        self._refill(self.clock())
        return self.tokens

    def acquire(self, max_wait_s: float) -> float | None:
        """Take one token: 0.0 when granted now, the seconds to sleep for a reserved one, or None
        (nothing taken) when the next free token is further away than `max_wait_s`."""
        if self.take_now():
            return 0.0
        wait = (1.0 - self.tokens) / self.rate
        if wait > max_wait_s:
            self.refused += 1
            return None
        self.tokens -= 1.0
        self.delayed += 1
        return wait

    def take_now(self) -> bool:
        """Take one token if one is banked now (refilled first), else nothing and nothing counted: `acquire`'s
        first step, and a shadow call's share of the region's quota where the call is decided."""
        self._refill(self.clock())
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            self.granted += 1
            return True
        return False

    def set_rate(self, rate: float) -> None:
        """An adaptive limiter's new rate (the shadow budget's): tokens earned so far at the old rate are kept,
        within the new capacity."""
        if rate <= 0:
            raise ValueError("rate must be positive")
        self._refill(self.clock())
        self.rate = rate
        self.capacity = max(1.0, rate * self.burst_s)
        self.tokens = min(self.tokens, self.capacity)

    def drain(self, seconds: float) -> None:
        """The service throttled us anyway (another client shares the quota): grant nothing for about
        `seconds`, without cancelling reservations already handed out."""
        self._refill(self.clock())
        self.tokens = min(self.tokens, 0.0) - seconds * self.rate

    def stats(self) -> dict[str, float]:
        return {"rate": self.rate, "tokens": round(self.available(), 3), "granted": self.granted,
                "delayed": self.delayed, "refused": self.refused}


class RegionQuotas:
    """The buckets of one region, by key class."""

    def __init__(self, symmetric_per_s: float, asymmetric_per_s: float, burst_s: float,
                 clock: Clock = monotonic) -> None:
        self.buckets = {
            KeyClass.SYMMETRIC: TokenBucket(symmetric_per_s, burst_s, clock),
            KeyClass.ASYMMETRIC: TokenBucket(asymmetric_per_s, burst_s, clock),
        }

    def bucket(self, key_type: str) -> TokenBucket:
        return self.buckets[key_class(key_type)]

    def stats(self) -> dict[str, dict[str, float]]:
        return {str(name): bucket.stats() for name, bucket in self.buckets.items()}
