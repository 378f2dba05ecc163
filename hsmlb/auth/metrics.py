"""Security series for /metrics (when telemetry serves it): denials, rate-limit refusals, and the audit
writer's state, read from the filters' own counters at scrape time (nothing added to the hot path)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hsmlb.audit.filter import AuditFilter
from hsmlb.auth.filter import AuthFilter


class SecurityCollector(Collector):
    def __init__(self, filters: Iterable[object]) -> None:
        filters = list(filters)
        self.auth = next((f for f in filters if isinstance(f, AuthFilter)), None)
        self.audit = next((f for f in filters if isinstance(f, AuditFilter)), None)

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        if self.auth is not None:
            denied = CounterMetricFamily("hsmlb_auth_denied", "Operations and Admin calls refused "
                                         "PERMISSION_DENIED (in log_only mode: that would have been)")
            denied.add_metric([], float(self.auth.denied))
            yield denied
            limited = CounterMetricFamily("hsmlb_auth_rate_limited", "Operations refused RESOURCE_EXHAUSTED "
                                          "by their caller's rate limit")
            limited.add_metric([], float(self.auth.rate_limited))
            yield limited
        if self.audit is not None:
            w = self.audit.writer
            for name, doc, value in (
                    ("hsmlb_audit_records", "Audit records sealed into the chain", w.records),
                    ("hsmlb_audit_alarms", "Times the audit log became unwritable (each an AUDIT ALARM)", w.alarms),
                    ("hsmlb_audit_write_failures", "Failed attempts to write the audit log", w.write_failures),
                    ("hsmlb_audit_dropped", "Audit records given up beyond audit.max_pending", w.dropped)):
                family = CounterMetricFamily(name, doc)
                family.add_metric([], float(value))
                yield family
            healthy = GaugeMetricFamily("hsmlb_audit_writable", "1 while the audit log is being written, "
                                        "0 while writes fail (fail_closed: operations refused)")
            healthy.add_metric([], 1.0 if w.healthy else 0.0)
            yield healthy
