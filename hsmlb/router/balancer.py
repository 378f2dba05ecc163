"""Balancers: a pure choice over a snapshot of eligible nodes. No awaits, no I/O."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


class LeastOutstanding:
    """Power of two choices on outstanding work (Envoy least_request, tower p2c)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(self, candidates: Sequence[T], load: Callable[[T], float]) -> T:
        if len(candidates) == 1:
            return candidates[0]
        a, b = self._rng.sample(candidates, 2)
        return a if load(a) <= load(b) else b
