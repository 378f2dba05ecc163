"""The verdict: TPS, p99 per op class and failure ratio against a profile's thresholds.

Pure functions, so they are unit-tested without Locust. Both drivers (Locust and the own stream
client) reduce their results to a `RunSummary`; `evaluate` turns it into one row per threshold and
`exit_code` is 0 only when every row passes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

from loadtest.profiles import Thresholds

QUANTILES = {"p50_ms": 0.50, "p90_ms": 0.90, "p99_ms": 0.99, "p999_ms": 0.999}


@dataclass(frozen=True)
class Latency:
    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float


@dataclass(frozen=True)
class RunSummary:
    requests: int
    failures: int
    duration_s: float  # the measured window
    latency: dict[str, Latency]  # per op class tag
    ops: dict[str, int] = field(default_factory=dict)  # requests per op name, for the report

    @property
    def tps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def failure_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 1.0


@dataclass(frozen=True)
class Row:
    metric: str
    target: str
    measured: str
    passed: bool


def class_of(name: str) -> str:
    """The op class tag of a request name ("sym:EncryptData/AES256-CBC" -> "sym")."""
    return name.split(":", 1)[0] if ":" in name else "other"


def percentile_from_histogram(hist: Mapping[float, int], q: float) -> float:
    """Nearest-rank percentile of a {value: count} histogram (Locust's response_times); NaN if empty."""
    total = sum(hist.values())
    if total <= 0:
        return math.nan
    rank = max(1, math.ceil(q * total))
    seen = 0
    for value in sorted(hist):
        seen += hist[value]
        if seen >= rank:
            return float(value)
    return float(max(hist))


def percentile_from_sorted(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted samples; NaN if empty."""
    if not samples:
        return math.nan
    return float(samples[max(1, math.ceil(q * len(samples))) - 1])


def latency_from_histogram(hist: Mapping[float, int]) -> Latency:
    return Latency(sum(hist.values()), **{k: percentile_from_histogram(hist, q) for k, q in QUANTILES.items()})


def latency_from_samples(samples_ms: Iterable[float]) -> Latency:
    ordered = sorted(samples_ms)
    return Latency(len(ordered), **{k: percentile_from_sorted(ordered, q) for k, q in QUANTILES.items()})


def merge_by_class(histograms: Iterable[tuple[str, Mapping[float, int]]]) -> dict[str, dict[float, int]]:
    """(request name, histogram) pairs -> per op class histograms. Pairs, not a dict: Locust keeps one
    entry per (request type, name), so "grpc" and "grpc-stream" rows may share a name."""
    merged: dict[str, dict[float, int]] = {}
    for name, hist in histograms:
        into = merged.setdefault(class_of(name), {})
        for value, count in hist.items():
            into[value] = into.get(value, 0) + count
    return merged


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.3g}"


def evaluate(summary: RunSummary, thresholds: Thresholds, classes: Iterable[str],
             extra: Sequence[Row] = ()) -> list[Row]:
    """One row per threshold: TPS, p99 of each class the profile drives, failure ratio, then `extra`."""
    rows = [Row("throughput (TPS)", f">= {_fmt(thresholds.min_tps)}", _fmt(summary.tps),
                summary.requests > 0 and summary.tps >= thresholds.min_tps)]
    for klass in sorted(set(classes)):
        limit = thresholds.p99_ms.get(klass)
        if limit is None:
            continue
        lat = summary.latency.get(klass)
        p99 = lat.p99_ms if lat is not None and lat.count else math.nan
        rows.append(Row(f"p99 {klass} (ms)", f"<= {_fmt(limit)}", _fmt(p99), not math.isnan(p99) and p99 <= limit))
    measured = f"{summary.failure_ratio:.4%} ({summary.failures:,}/{summary.requests:,})"
    rows.append(Row("failure ratio", f"<= {thresholds.max_failure_ratio:.4%}", measured,
                    summary.requests > 0 and summary.failure_ratio <= thresholds.max_failure_ratio))
    rows.extend(extra)
    return rows


def exit_code(rows: Sequence[Row]) -> int:
    return 0 if rows and all(r.passed for r in rows) else 1


def render(profile: str, rows: Sequence[Row], summary: RunSummary | None = None) -> str:
    """A plain-text table: the verdict line, one row per threshold, then latency per class."""
    header = ("METRIC", "TARGET", "MEASURED", "RESULT")
    body = [(r.metric, r.target, r.measured, "PASS" if r.passed else "FAIL") for r in rows]
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(4)]
    verdict = "PASS" if exit_code(rows) == 0 else "FAIL"
    lines = [f"=== loadtest verdict, profile {profile}: {verdict} ==="]
    lines += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in (header, *body)]
    if summary is not None:
        lines.append(f"window {summary.duration_s:.1f} s, {summary.requests:,} requests, "
                     f"{summary.failures:,} failures")
        for klass, lat in sorted(summary.latency.items()):
            lines.append(f"  {klass:<5} n={lat.count:,}  p50 {_fmt(lat.p50_ms)}  p90 {_fmt(lat.p90_ms)}  "
                         f"p99 {_fmt(lat.p99_ms)}  p99.9 {_fmt(lat.p999_ms)} ms")
    return "\n".join(lines)


def to_json(profile: str, rows: Sequence[Row], summary: RunSummary) -> str:
    return json.dumps({"profile": profile, "passed": exit_code(rows) == 0, "rows": [asdict(r) for r in rows],
                       "summary": {**asdict(summary), "tps": summary.tps, "failure_ratio": summary.failure_ratio}},
                      indent=1, allow_nan=True)


def from_json(text: str) -> tuple[str, list[Row], RunSummary]:
    data = json.loads(text)
    s = data["summary"]
    summary = RunSummary(s["requests"], s["failures"], s["duration_s"],
                         {k: Latency(**v) for k, v in s["latency"].items()}, s.get("ops", {}))
    return data["profile"], [Row(**r) for r in data["rows"]], summary
