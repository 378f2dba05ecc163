"""Shadowing: the candidate call off the response path, the crypto-aware comparator and its counters."""

from hsmlb.shadow.compare import DISCREPANCY, KEY_DRIFT, MATCH, NOT_COMPARABLE, compare
from hsmlb.shadow.shadower import Shadower
from hsmlb.shadow.stats import Discrepancy, ShadowStats

__all__ = ["DISCREPANCY", "KEY_DRIFT", "MATCH", "NOT_COMPARABLE", "Discrepancy", "ShadowStats", "Shadower",
           "compare"]
