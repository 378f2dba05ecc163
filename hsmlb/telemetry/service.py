"""Telemetry as the daemon assembles it: which filters join the seam, what listens, what runs beside.

Off unless configured: without `metrics:` there is no listener and no counting; with tracing
disabled (OTEL_SDK_DISABLED, exporter none, sampler always_off) no tracing filter joins the seam.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hsmlb.api.filters import Filter
from hsmlb.config import Config
from hsmlb.router import Router
from hsmlb.telemetry.tracing import Tracing, build_tracing

if TYPE_CHECKING:  # imported when metrics are configured: a daemon without them loads no prometheus_client
    from hsmlb.telemetry.hardware import HardwareInfo
    from hsmlb.telemetry.history import History
    from hsmlb.telemetry.http import TelemetryServer
    from hsmlb.telemetry.metrics import Metrics, MetricsFilter
    from hsmlb.telemetry.status import DrillLog

log = logging.getLogger("hsmlb.telemetry")


class Telemetry:
    def __init__(self, config: Config, router: Router) -> None:
        self.config = config
        self.router = router
        self.filters: list[Filter] = []
        self.metrics: Metrics | None = None
        self.history: History | None = None
        self.drills: DrillLog | None = None
        self.hardware: HardwareInfo | None = None
        self.server: TelemetryServer | None = None
        self.url: str | None = None
        self.extras: dict[str, Callable[[], Any]] = {}  # further status sections (shadowing's)
        self.tracing: Tracing | None = build_tracing(config.tracing.with_env(), router,
                                                     config.listen.rsplit(":", 1)[0].strip("[]"))
        if config.metrics is not None:
            from hsmlb.telemetry.hardware import HardwareInfo
            from hsmlb.telemetry.history import History
            from hsmlb.telemetry.http import TelemetryServer
            from hsmlb.telemetry.metrics import Metrics
            from hsmlb.telemetry.status import DrillLog

            self.metrics = Metrics(router)
            self.history = History(self.metrics, config.metrics.history_s)
            self.drills = DrillLog(router)
            self.hardware = HardwareInfo(router, config.router.health_check.interval_s)
            self.filters.append(self.metrics_filter())  # one filter per operation: each costs a call
            self.server = TelemetryServer(config.metrics.listen, self.metrics.registry, self.status)
            self._add_shadow()
        if self.tracing is not None:
            self.filters.append(self.tracing.filter)
            if self.metrics is not None:
                self.metrics.register(self.tracing.collector())

    def _add_shadow(self) -> None:
        """Shadowing's counters (hsmlb/shadow/) in /metrics and the page, where the router has them."""
        shadow = getattr(self.router, "shadow", None)
        table = getattr(self.router, "routes", None)
        if shadow is not None and self.metrics is not None:
            from hsmlb.telemetry.metrics import ShadowCollector

            self.metrics.register(ShadowCollector(shadow.stats))
            self.extras["shadow"] = lambda: {**shadow_section(shadow.stats), "budget": shadow.budget.stats()}
        if table is not None and hasattr(table, "routes"):
            self.extras["routes"] = lambda: [{"op": r.op, "primary": r.primary, "failover": list(r.failover),
                                              "candidate": r.candidate, "candidate_percent": r.candidate_percent,
                                              "shadow_percent": r.shadow_percent} for r in table.routes()]

    def metrics_filter(self) -> MetricsFilter:
        from hsmlb.telemetry.metrics import MetricsFilter

        assert self.metrics is not None
        return MetricsFilter(self.metrics, self.drills)

    def status(self) -> dict[str, Any]:
        from hsmlb.telemetry.status import status_document

        return status_document(self.router, self.history, self.drills,
                               self.hardware.snapshot if self.hardware is not None else None, self.extras,
                               balancer=self.config.router.balancer)

    async def start(self) -> str | None:
        """Start what runs beside the path; returns the status page's URL when there is one."""
        if self.server is None:
            return None
        assert self.history is not None and self.hardware is not None
        await self.server.start()
        self.history.start()
        self.hardware.start()
        log.info("metrics and status page on %s", self.server.url)
        return self.server.url

    async def stop(self) -> None:
        if self.history is not None:
            await self.history.close()
        if self.hardware is not None:
            await self.hardware.close()
        if self.server is not None:
            await self.server.stop()
        if self.tracing is not None:
            self.tracing.shutdown()


def shadow_section(stats: Any) -> dict[str, Any]:
    """Per op and side: samples, agreement, discrepancies, errors, p99s; and the latest discrepancy records
    (names, KCVs, field and lengths: never a value)."""
    from dataclasses import asdict

    records = list(stats.records)[-20:]
    return {"operations": stats.report(), "discrepancies": [asdict(r) for r in reversed(records)]}
