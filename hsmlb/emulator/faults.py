"""Fault injection and request accounting, so tests can put a region into an outage on demand.

Why: the daemon's failover between APC regions can only be proven against an endpoint that fails
when told to. Faults are off unless configured; the runtime switch exists only with
`--fault-injection`, so a plain emulator never changes behaviour under a test's feet.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

from hsmlb.emulator.errors import ApiError

MAX_LATENCY_MS = 60_000
# Result members a corrupt_rate fault may flip one byte of (the first one present), to prove that
# shadowing catches a candidate answering wrong crypto.
CORRUPTIBLE = ("CipherText", "PlainText", "Mac", "ValidationData", "PinBlock", "AuthResponseValue")
_RATES = ("error_rate", "throttle_rate", "corrupt_rate")


@dataclass(slots=True)
class FaultConfig:
    latency_ms: float = 0.0
    error_rate: float = 0.0
    throttle_rate: float = 0.0
    corrupt_rate: float = 0.0  # fraction of results with one byte flipped (counted per operation)

    def validated(self) -> FaultConfig:
        if not 0 <= self.latency_ms <= MAX_LATENCY_MS:
            raise ValueError(f"latency_ms must be between 0 and {MAX_LATENCY_MS}")
        for name in _RATES:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        return self

    def update(self, changes: dict[str, Any]) -> FaultConfig:
        """A new config with `changes` applied; unknown names or non-numbers raise ValueError."""
        unknown = set(changes) - {"latency_ms", *_RATES}
        if unknown:
            raise ValueError(f"unknown fault settings: {', '.join(sorted(unknown))}")
        merged = asdict(self)
        for name, value in changes.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number")
            try:
                merged[name] = float(value)
            except OverflowError:  # a JSON integer too big for a float is out of range all the same
                raise ValueError(f"{name} is out of range") from None
        return FaultConfig(**merged).validated()


class Faults:
    """The live fault settings plus per-operation outcome counters."""

    def __init__(self, config: FaultConfig, rng: random.Random | None = None) -> None:
        self.config = config.validated()
        self._rng = rng or random.Random()
        self.counts: defaultdict[str, defaultdict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.injected: defaultdict[str, int] = defaultdict(int)

    async def apply(self) -> None:
        """Sleep and/or raise as configured; a no-op (no awaits) when everything is zero."""
        config = self.config
        if config.latency_ms > 0:
            self.injected["latency"] += 1
            await asyncio.sleep(config.latency_ms / 1000)
        if config.error_rate > 0 and self._rng.random() < config.error_rate:
            self.injected["InternalServerException"] += 1
            raise ApiError("InternalServerException", "Injected fault: internal server error.")
        if config.throttle_rate > 0 and self._rng.random() < config.throttle_rate:
            self.injected["ThrottlingException"] += 1
            raise ApiError("ThrottlingException", "Rate exceeded.")

    def corrupt(self, operation: str, result: dict[str, Any]) -> dict[str, Any]:
        """`result`, or (at corrupt_rate) a copy with the first byte of its first CORRUPTIBLE member flipped,
        counted as injected `corrupted:<operation>`."""
        rate = self.config.corrupt_rate
        if rate <= 0 or self._rng.random() >= rate:
            return result
        for name in CORRUPTIBLE:
            value = result.get(name)
            if isinstance(value, str) and len(value) >= 2:
                self.injected[f"corrupted:{operation}"] += 1
                return {**result, name: f"{int(value[:2], 16) ^ 0x01:02X}{value[2:]}"}
        return result

    def record(self, operation: str, outcome: str) -> None:
        self.counts[operation][outcome] += 1

    def stats(self) -> dict[str, Any]:
        operations = {op: dict(outcomes) for op, outcomes in self.counts.items()}
        return {
            "requests": sum(sum(o.values()) for o in operations.values()),
            "operations": operations,
            "injected": dict(self.injected),
            "faults": asdict(self.config),
        }
