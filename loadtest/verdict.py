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
    def ok_tps(self) -> float:
        """Successful requests per second: what a capacity claim means (a fast failure is no transaction)."""
        return (self.requests - self.failures) / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def failure_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 1.0


@dataclass(frozen=True)
class Row:
    metric: str
    target: str
    measured: str
    passed: bool
    loosened: bool = False  # the target is looser than the profile's (a command-line override)


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


def bucket_upper(value: float) -> float:
    """The largest response time Locust files under the bucket `value`.

    Locust rounds to about two significant digits (10.4 ms is kept as 10, 104 ms as 100), so a
    bucket read as-is understates a percentile by up to half a bucket and a missed target could
    pass; the verdict judges the bucket's upper edge instead.
    """
    half = 0.5 if value < 100 else 5.0 if value < 1000 else 50.0 if value < 10_000 else 500.0
    return value + half


def latency_from_histogram(hist: Mapping[float, int]) -> Latency:
    """Percentiles of Locust's rounded histogram, each the upper edge of its bucket (never optimistic)."""
    return Latency(sum(hist.values()),
                   **{k: bucket_upper(percentile_from_histogram(hist, q)) for k, q in QUANTILES.items()})


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
             extra: Sequence[Row] = (), profile: Thresholds | None = None) -> list[Row]:
    """One row per threshold: TPS (successful requests only), p99 of each class the profile drives,
    failure ratio, then `extra`. With `profile` (the thresholds before overrides), a target looser
    than the profile's says so, and so does the verdict line: a loosened PASS is not the claim."""
    base = profile or thresholds
    rows = [Row("throughput (TPS)", _target(">=", thresholds.min_tps, base.min_tps, lower_is_looser=True),
                _fmt(summary.ok_tps), summary.requests > summary.failures and summary.ok_tps >= thresholds.min_tps,
                thresholds.min_tps < base.min_tps)]
    for klass in sorted(set(classes)):
        limit = thresholds.p99_ms.get(klass)
        if limit is None:
            continue
        was = base.p99_ms.get(klass, limit)
        lat = summary.latency.get(klass)
        p99 = lat.p99_ms if lat is not None and lat.count else math.nan
        rows.append(Row(f"p99 {klass} (ms)", _target("<=", limit, was), _fmt(p99),
                        not math.isnan(p99) and p99 <= limit, limit > was))
    measured = f"{summary.failure_ratio:.4%} ({summary.failures:,}/{summary.requests:,})"
    ratio, was_ratio = thresholds.max_failure_ratio, base.max_failure_ratio
    target = f"<= {ratio:.4%}" + (f" (profile {was_ratio:.4%})" if ratio > was_ratio else "")
    rows.append(Row("failure ratio", target, measured,
                    summary.requests > 0 and summary.failure_ratio <= ratio, ratio > was_ratio))
    rows.extend(extra)
    return rows


def _target(op: str, value: float, profile: float, lower_is_looser: bool = False) -> str:
    looser = value < profile if lower_is_looser else value > profile
    return f"{op} {_fmt(value)}" + (f" (profile {_fmt(profile)})" if looser else "")


def exceptions_row(count: int) -> Row:
    """A user task that raised sent no request: with it the run offers less load than the profile
    says, and the other rows could pass on what was left; Locust's own error exit is replaced by ours."""
    return Row("user exceptions", "== 0", f"{count:,}", count == 0)


def exit_code(rows: Sequence[Row]) -> int:
    return 0 if rows and all(r.passed for r in rows) else 1


def render(profile: str, rows: Sequence[Row], summary: RunSummary | None = None) -> str:
    """A plain-text table: the verdict line, one row per threshold, then latency per class."""
    header = ("METRIC", "TARGET", "MEASURED", "RESULT")
    body = [(r.metric, r.target, r.measured, "PASS" if r.passed else "FAIL") for r in rows]
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(4)]
    verdict = "PASS" if exit_code(rows) == 0 else "FAIL"
    if any(r.loosened for r in rows):
        verdict += " (thresholds loosened from the profile's)"
    lines = [f"=== loadtest verdict, profile {profile}: {verdict} ===",
             "TPS = crypto operations completed successfully per second over the measured window (a failure "
             "is no transaction; a batch of N operations counts N)"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in (header, *body)]
    if summary is not None:
        lines.append(f"window {summary.duration_s:.1f} s, {summary.requests:,} requests, "
                     f"{summary.failures:,} failures")
        for klass, lat in sorted(summary.latency.items()):
            lines.append(f"  {klass:<5} n={lat.count:,}  p50 {_fmt(lat.p50_ms)}  p90 {_fmt(lat.p90_ms)}  "
                         f"p99 {_fmt(lat.p99_ms)}  p99.9 {_fmt(lat.p999_ms)} ms")
    return "\n".join(lines)


def to_json(profile: str, rows: Sequence[Row], summary: RunSummary) -> str:
    return json.dumps({"profile": profile, "passed": exit_code(rows) == 0,
                       "loosened": any(r.loosened for r in rows), "rows": [asdict(r) for r in rows],
                       "summary": {**asdict(summary), "tps": summary.tps, "ok_tps": summary.ok_tps,
                                   "failure_ratio": summary.failure_ratio}},
                      indent=1, allow_nan=True)


def from_json(text: str) -> tuple[str, list[Row], RunSummary]:
    data = json.loads(text)
    s = data["summary"]
    summary = RunSummary(s["requests"], s["failures"], s["duration_s"],
                         {k: Latency(**v) for k, v in s["latency"].items()}, s.get("ops", {}))
    return data["profile"], [Row(**r) for r in data["rows"]], summary
