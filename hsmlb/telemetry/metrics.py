"""Prometheus metrics: per-operation counts from the seam, node state read from the router at scrape time.

Per operation the daemon pays what opcount.py says (a dict lookup, two additions, a bisect); no label
is formatted on the hot path. Everything the router already counts (ejections, retries, throttling,
skipped ops, breakers, key inventory) is not counted twice: a collector reads it when Prometheus
scrapes. The registry is the daemon's own, not prometheus_client's global one.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hsmlb.api.filters import Call, FilterBase, Item
from hsmlb.router import Router
from hsmlb.telemetry.opcount import _OK, DURATION_BUCKETS, OpCounts, OperationsCollector

__all__ = ["DURATION_BUCKETS", "Metrics", "MetricsFilter", "RouterCollector"]
_SHED = grpc.StatusCode.RESOURCE_EXHAUSTED
OPERATOR_STATES = ("active", "draining", "failed")
_QUANTILES = {"p50": "0.5", "p99": "0.99", "p999": "0.999"}


class Metrics:
    """The daemon's registry and the series fed from the seam; `register` adds collectors (shadowing's)."""

    def __init__(self, router: Router) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.counts = OpCounts()
        self.registry.register(OperationsCollector(self.counts))
        self.shed = Counter("hsmlb_shed", "Operations refused RESOURCE_EXHAUSTED, by reason", ("reason",),
                            registry=self.registry)
        self.admin_actions = Counter("hsmlb_admin_actions", "Admin actions (drills, fault injection)",
                                     ("action",), registry=self.registry)
        self.router_collector = RouterCollector(router)
        self.registry.register(self.router_collector)

    def register(self, collector: Collector) -> None:
        """An extension point: another concern's series (shadow outcomes) in the same exposition."""
        self.registry.register(collector)


class MetricsFilter(FilterBase):
    """Counts every operation at `done`, whatever its outcome."""

    def __init__(self, metrics: Metrics, drills: FilterBase | None = None) -> None:
        self.metrics = metrics
        self.record = metrics.counts.record
        self.ok_series = metrics.counts.ok_series
        self.drills = drills  # the status page's log of Admin actions: told here, not as a filter of its own

    def done(self, call: Call, items: Sequence[Item]) -> None:
        ok_series = self.ok_series
        field, nodes = None, None  # a batch's items are mostly one operation: look it up once per change
        for item in items:
            op = item.op
            if item.code is _OK and op is not None:  # OpCounts.record's common case, inlined
                if item.field != field:
                    field = item.field
                    nodes = ok_series.get(field)
                series = nodes.get(op.node) if nodes is not None else None
                if series is not None:
                    latency_s = item.ended - item.started
                    series.count += 1
                    series.total_s += latency_s
                    series.buckets[bisect_left(DURATION_BUCKETS, latency_s)] += 1
                    continue
            code = item.code
            self.record(item.field, op.node if op is not None else "", code, item.ended - item.started)
            if code is _SHED:
                self.metrics.shed.labels(item.reason or "other").inc()

    def admin(self, call: Call, action: str, target: str, code: grpc.StatusCode, detail: str) -> None:
        self.metrics.admin_actions.labels(action).inc()
        if self.drills is not None:
            self.drills.admin(call, action, target, code, detail)


def routable(health: Any) -> bool:
    """NodeHealth.routable without its side effect (a due readmission is the router's to make)."""
    return bool(health.operator == "active" and health.checks_healthy and health.ejected_until is None)


class RouterCollector(Collector):
    """Node, routing and key-inventory series, read from the router's own state at scrape time."""

    def __init__(self, router: Router) -> None:
        self.router = router

    def describe(self) -> list[Metric]:
        return []  # series appear and go with nodes and keys; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        router = self.router
        now = router.clock()
        members = router.cluster.members

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ("node",)) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=labels)

        def counter(name: str, doc: str, labels: tuple[str, ...] = ("node",)) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=labels)

        up = gauge("hsmlb_node_up", "1 when the node's backend is up (started, logged in, reachable)")
        healthy = gauge("hsmlb_node_healthy", "1 when the node is routable now: up, checks healthy, not ejected, "
                        "not drained or failed by an operator")
        outstanding = gauge("hsmlb_node_outstanding", "Operations in flight or queued on the node")
        in_use = gauge("hsmlb_node_sessions_in_use", "Sessions (connections) busy on the node")
        pool_size = gauge("hsmlb_node_pool_size", "Sessions (connections) the node keeps warm")
        breaker = gauge("hsmlb_node_breaker_open", "1 when the node's circuit breaker is open")
        ejected = gauge("hsmlb_node_ejected", "1 while the node is ejected by outlier detection")
        weight = gauge("hsmlb_node_weight", "Slow-start weight (0.1 -> 1 after readmission)")
        operator = gauge("hsmlb_node_operator_state", "1 for the node's operator state (drills)", ("node", "state"))
        keys = gauge("hsmlb_node_keys", "Keys in the node's discovered inventory")
        ejections = counter("hsmlb_node_ejections", "Ejections of the node by outlier detection")
        ok = counter("hsmlb_node_ops_ok", "Operations the node answered")
        failed = counter("hsmlb_node_ops_failed", "Operations that failed on the node by its fault")
        retries = counter("hsmlb_retries", "Retries on another node after a node fault here")
        throttled = counter("hsmlb_throttled", "Requests the node pushed back (quota, throttling)")
        panic = counter("hsmlb_panic_routes", "Requests served by the node as last holder while unhealthy")
        skipped = counter("hsmlb_skipped_ops", "Requests the node held the key for but could not serve",
                          ("node", "capability"))
        holders: dict[str, int] = {}
        conflicts: dict[str, int] = {}
        for m in members:
            name, pool, health = m.name, m.pool, m.health
            is_up = m.up
            up.add_metric([name], float(is_up))
            healthy.add_metric([name], float(is_up and routable(health)))
            outstanding.add_metric([name], float(pool.outstanding))
            in_use.add_metric([name], float(pool.in_use))
            pool_size.add_metric([name], float(pool.size))
            breaker.add_metric([name], float(m.breaker.state == "open"))
            ejected.add_metric([name], float(health.ejected_until is not None))
            weight.add_metric([name], health.weight(now))
            for state in OPERATOR_STATES:
                operator.add_metric([name, state], float(health.operator == state))
            inventory = pool.backend.keys
            keys.add_metric([name], float(len(inventory)))
            ejections.add_metric([name], float(health.ejections_total))
            ok.add_metric([name], float(pool.stats.ops_ok))
            failed.add_metric([name], float(pool.stats.ops_failed))
            retries.add_metric([name], float(m.retries_from))
            throttled.add_metric([name], float(m.throttled))
            panic.add_metric([name], float(m.panic_routes))
            for capability, count in sorted(m.skipped.items()):
                skipped.add_metric([name, str(capability)], float(count))
            for alias in m.kcv_conflicts:
                conflicts[alias] = conflicts.get(alias, 0) + 1
            if is_up:
                for alias in inventory:
                    if alias not in m.kcv_conflicts:
                        holders[alias] = holders.get(alias, 0) + 1
            for alias in inventory:
                holders.setdefault(alias, 0)
                conflicts.setdefault(alias, 0)
        key_holders = gauge("hsmlb_key_holders", "Nodes up that hold the alias with the agreed KCV", ("alias",))
        kcv_conflicts = gauge("hsmlb_kcv_conflicts", "Nodes excluded for the alias: KCV differs from the majority",
                              ("alias",))
        for alias in sorted(holders):
            key_holders.add_metric([alias], float(holders[alias]))
            kcv_conflicts.add_metric([alias], float(conflicts.get(alias, 0)))
        budget = router.budget
        refused = counter("hsmlb_retries_refused", "Retries the retry budget refused", ())
        refused.add_metric([], float(budget.refused))
        yield from (up, healthy, outstanding, in_use, pool_size, breaker, ejected, weight, operator, keys,
                    ejections, ok, failed, retries, throttled, panic, skipped, key_holders, kcv_conflicts, refused)


class SpanCollector(Collector):
    """The span exporter's own counts: exported, dropped (full queue or failed export), export failures."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        counts = self.processor.counters()
        for name, doc in (("exported", "Spans exported"), ("dropped", "Spans dropped: export queue full or "
                                                                        "export failed"),
                          ("failures", "Span exports that failed")):
            family = CounterMetricFamily(f"hsmlb_spans_{name}" if name != "failures" else "hsmlb_span_export_failures",
                                         doc, labels=())
            family.add_metric([], float(counts[name]))
            yield family
        queued = GaugeMetricFamily("hsmlb_spans_queued", "Spans waiting for export")
        queued.add_metric([], float(counts["queued"]))
        yield queued


class ShadowCollector(Collector):
    """Shadow outcomes and latencies per operation and side, read from the shadow's own counters at scrape."""

    def __init__(self, stats: Any) -> None:
        self.stats = stats

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        outcomes = CounterMetricFamily("hsmlb_shadow_outcomes", "Shadow comparisons by outcome",
                                       labels=("op", "side", "outcome"))
        errors = CounterMetricFamily("hsmlb_shadow_candidate_errors", "Shadow calls that failed, by gRPC status",
                                     labels=("op", "side", "code"))
        skipped = CounterMetricFamily("hsmlb_shadow_skipped", "Operations not shadowed, by reason",
                                      labels=("op", "side", "reason"))
        latency = GaugeMetricFamily("hsmlb_shadow_latency_seconds", "Latency quantiles of the primary and the "
                                    "shadowed call", labels=("op", "side", "path", "quantile"))
        for (op, side), s in sorted(self.stats.ops.items()):
            for outcome, count in (("match", s.matches), ("discrepancy", s.discrepancies),
                                   ("key_drift", s.key_drift), ("not_comparable", s.not_comparable)):
                outcomes.add_metric([op, side, outcome], float(count))
            for code, count in sorted(s.candidate_errors.items()):
                errors.add_metric([op, side, code], float(count))
            for reason, count in sorted(s.skipped.items()):
                skipped.add_metric([op, side, reason], float(count))
            for path, histogram in (("primary", s.primary_latency), ("candidate", s.candidate_latency)):
                for name, value in histogram.summary_ms().items():
                    latency.add_metric([op, side, path, _QUANTILES[name]], value / 1000)
        yield from (outcomes, errors, skipped, latency)
