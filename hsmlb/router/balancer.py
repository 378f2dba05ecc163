"""Balancers: a pure choice over a snapshot of eligible nodes. No awaits, no I/O.

`load(node)` is the node's cost-weighted outstanding work, `cost` the cost of the request being
placed and `weight(node)` the node's slow-start weight (0.1 -> 1). A node is scored by the load it
would carry with the request, per unit of weight: (load + cost) / weight. Counting the request
keeps slow start effective on idle nodes, where load / weight is 0 whatever the weight.
Without `weight`, `load` is taken as already weighted and compared as it is.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

T = TypeVar("T")


class Balancer(Protocol):
    def choose(self, candidates: Sequence[T], load: Callable[[T], float], name: Callable[[T], str],
               key: str | None, cost: float, weight: Callable[[T], float] | None = None) -> T: ...


def _scorer(load: Callable[[T], float], cost: float, weight: Callable[[T], float] | None) -> Callable[[T], float]:
    if weight is None:
        return load
    return lambda node: (load(node) + cost) / max(weight(node), 1e-6)


class LeastOutstanding:
    """Power of two choices on outstanding work (Envoy least_request, tower p2c)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._random = self._rng.random

    def choose(self, candidates: Sequence[T], load: Callable[[T], float], name: Callable[[T], str] = str,
               key: str | None = None, cost: float = 1.0, weight: Callable[[T], float] | None = None) -> T:
        if len(candidates) == 1:
            return candidates[0]
        count = len(candidates)  # two distinct nodes at random: rng.sample's own cost was ~5% of the loop
        first = int(self._random() * count)
        second = int(self._random() * (count - 1))
        a, b = candidates[first], candidates[second + (second >= first)]
        if weight is None:
            return a if load(a) <= load(b) else b
        return a if (load(a) + cost) / max(weight(a), 1e-6) <= (load(b) + cost) / max(weight(b), 1e-6) else b


def _hash(value: str) -> int:
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "big")


class KeyAffinity:
    """Consistent hashing of the key alias with bounded load (Envoy ring hash + hash_balance_factor).

    A key's requests go to the first holder clockwise from the key's point on the ring, unless
    that holder's load would exceed `balance_factor` times the average, in which case they spill
    to the next holder on the ring. The ring is rebuilt only when the set of node names changes.
    """

    def __init__(self, balance_factor: float = 1.5, vnodes: int = 64) -> None:
        if balance_factor < 1.0:
            raise ValueError("balance_factor must be >= 1.0")
        self.balance_factor = balance_factor
        self.vnodes = vnodes
        self._members: frozenset[str] = frozenset()
        self._points: list[int] = []
        self._owners: list[str] = []
        self._key_start: dict[str, int] = {}

    def _ring(self, names: frozenset[str]) -> None:
        if names == self._members:
            return
        ring = sorted((_hash(f"{n}#{i}"), n) for n in names for i in range(self.vnodes))
        self._points = [p for p, _ in ring]
        self._owners = [n for _, n in ring]
        self._members = names
        self._key_start.clear()

    def ring_order(self, key: str) -> list[str]:
        """Distinct node names in ring order starting from the key's point (its home first)."""
        start = self._key_start.get(key)
        if start is None:
            start = bisect.bisect(self._points, _hash(key)) % max(1, len(self._points))
            if len(self._key_start) < 100_000:
                self._key_start[key] = start
        seen: list[str] = []
        owners = self._owners
        for i in range(len(owners)):
            owner = owners[(start + i) % len(owners)]
            if owner not in seen:
                seen.append(owner)
                if len(seen) == len(self._members):
                    break
        return seen

    def choose(self, candidates: Sequence[T], load: Callable[[T], float], name: Callable[[T], str] = str,
               key: str | None = None, cost: float = 1.0, weight: Callable[[T], float] | None = None) -> T:
        if len(candidates) == 1:
            return candidates[0]
        by_name = {name(c): c for c in candidates}
        if not self._members.issuperset(by_name):  # rebuild the ring only when a new node appears
            self._ring(self._members | frozenset(by_name))
        if key is None:
            return min(candidates, key=_scorer(load, cost, weight))
        loads = {n: load(c) for n, c in by_name.items()}
        weights = {n: max(weight(c), 1e-6) if weight else 1.0 for n, c in by_name.items()}
        # Bounded load per unit of weight: a warming node's share of the capacity is its weight.
        capacity = math.ceil(self.balance_factor * (sum(loads.values()) + cost) / sum(weights.values()))
        order = [n for n in self.ring_order(key) if n in by_name]
        for node_name in order:
            if (loads[node_name] + cost) / weights[node_name] <= capacity:
                return by_name[node_name]
        return by_name[min(order, key=lambda n: (loads[n] + cost) / weights[n])]
