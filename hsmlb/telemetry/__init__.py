"""Telemetry beside the request path: OpenTelemetry spans for sampled operations, Prometheus metrics,
and the status page, all off unless configured. See service.py for how the daemon assembles them."""
