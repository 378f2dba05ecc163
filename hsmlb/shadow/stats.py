"""Shadow outcomes per operation and side: counters, latency histograms, the discrepancy ring and the
windowed counts the promotion gate reads.

Sides: "candidate" (the shadowed pool) and "noise" (a second node of the primary pool: the noise baseline).
A discrepancy record names the operation, key alias, both nodes, both KCVs, the field that differed and
its lengths, and the time; never a value, a PAN, a PIN block or key bytes (it is built from names only).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from hsmlb.shadow.histogram import LatencyHistogram

SKIP_REASONS = ("no_capability", "key_missing", "quota", "shed", "unavailable", "budget")  # what skip() is given
_BUCKET_S = 10


@dataclass(slots=True)
class OpStats:
    samples: int = 0
    matches: int = 0
    discrepancies: int = 0
    key_drift: int = 0
    not_comparable: int = 0
    primary_errors: int = 0
    candidate_errors: dict[str, int] = field(default_factory=dict)  # gRPC status name -> count
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    primary_latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    candidate_latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    window: deque[list[float]] = field(default_factory=deque)  # [bucket start, samples, discrepancies+drift]

    def windowed(self, now: float, window_s: float) -> tuple[int, int]:
        """(samples, discrepancies incl. key drift) over the last window_s."""
        samples = bad = 0
        for start, n, d in self.window:
            if start > now - window_s - _BUCKET_S:
                samples += int(n)
                bad += int(d)
        return samples, bad

    def _tick(self, now: float, bad: bool, horizon_s: float) -> None:
        window = self.window
        start = now - now % _BUCKET_S
        if not window or window[-1][0] != start:
            window.append([start, 0, 0])
            while window and window[0][0] < now - horizon_s - _BUCKET_S:
                window.popleft()
        window[-1][1] += 1
        if bad:
            window[-1][2] += 1

    def report(self, op: str, side: str) -> dict[str, Any]:
        p, c = self.primary_latency.summary_ms(), self.candidate_latency.summary_ms()
        return {"op": op, "side": side, "samples": self.samples, "matches": self.matches,
                "discrepancies": self.discrepancies, "key_drift": self.key_drift,
                "candidate_errors": sum(self.candidate_errors.values()),
                "candidate_errors_by_status": dict(self.candidate_errors), "primary_errors": self.primary_errors,
                "not_comparable": self.not_comparable, "skipped": dict(self.skipped),
                "primary_p50_ms": p["p50"], "primary_p99_ms": p["p99"], "primary_p999_ms": p["p999"],
                "candidate_p50_ms": c["p50"], "candidate_p99_ms": c["p99"], "candidate_p999_ms": c["p999"],
                "p99_difference_ms": round(c["p99"] - p["p99"], 3)}


@dataclass(frozen=True, slots=True)
class Discrepancy:
    at: float  # wall-clock seconds
    op: str
    side: str
    key_alias: str
    primary_node: str
    candidate_node: str
    primary_kcv: str
    candidate_kcv: str
    outcome: str  # discrepancy | key_drift
    field: str
    primary_length: int
    candidate_length: int


class ShadowStats:
    def __init__(self, ring_size: int = 100, horizon_s: float = 600.0) -> None:
        self.ops: dict[tuple[str, str], OpStats] = {}
        self.records: deque[Discrepancy] = deque(maxlen=ring_size)
        self.horizon_s = horizon_s

    def of(self, op: str, side: str = "candidate") -> OpStats:
        stats = self.ops.get((op, side))
        if stats is None:
            stats = self.ops[(op, side)] = OpStats()
        return stats

    def skip(self, op: str, side: str, reason: str) -> None:
        skipped = self.of(op, side).skipped
        skipped[reason] = skipped.get(reason, 0) + 1

    def outcome(self, op: str, side: str, outcome: str, now: float, primary_s: float, candidate_s: float) -> None:
        stats = self.of(op, side)
        stats.samples += 1
        if outcome == "match":
            stats.matches += 1
        elif outcome == "discrepancy":
            stats.discrepancies += 1
        elif outcome == "key_drift":
            stats.key_drift += 1
        else:
            stats.not_comparable += 1
        stats.primary_latency.record(primary_s)
        if candidate_s >= 0:
            stats.candidate_latency.record(candidate_s)
        stats._tick(now, outcome in ("discrepancy", "key_drift"), self.horizon_s)

    def candidate_error(self, op: str, side: str, status: str, candidate_s: float) -> None:
        stats = self.of(op, side)
        stats.candidate_errors[status] = stats.candidate_errors.get(status, 0) + 1
        stats.candidate_latency.record(candidate_s)

    def record(self, discrepancy: Discrepancy) -> None:
        self.records.append(discrepancy)

    def gate(self, ops: list[str] | None, now: float, window_s: float) -> tuple[int, int]:
        """(samples, discrepancies incl. key drift) of the candidate side over the window, for `ops`
        (None: every op)."""
        samples = bad = 0
        for (op, side), stats in self.ops.items():
            if side == "candidate" and (ops is None or op in ops):
                n, d = stats.windowed(now, window_s)
                samples += n
                bad += d
        return samples, bad

    def report(self) -> list[dict[str, Any]]:
        return [stats.report(op, side) for (op, side), stats in sorted(self.ops.items())]

    def discrepancy_records(self) -> list[Discrepancy]:
        return list(self.records)


def wall_time() -> float:
    return time.time()
