"""Telemetry settings: the metrics/status listener, traces, the log format.

Traces follow the OpenTelemetry conventions: every field here has its standard `OTEL_*` variable,
and a variable that is set wins over the file (an operator can turn tracing up or off for one run
without editing the config). Our defaults differ from OpenTelemetry's on purpose: sampling is a
local trace-id ratio of 1%, so a caller sending sampled trace contexts cannot turn on 100% tracing;
following the caller's flag is the explicit `parentbased_*` choice.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SAMPLERS = ("always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off",
            "parentbased_traceidratio")
Sampler = Literal["always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off",
                  "parentbased_traceidratio"]


class _Frozen(BaseModel):  # as hsmlb.config._Frozen (not imported: config.py imports this module)
    model_config = ConfigDict(frozen=True, extra="forbid")


class MetricsConfig(_Frozen):
    """Prometheus exposition (`/metrics`) and the status page (`/`, `/status.json`) on their own listener."""

    listen: str = Field(pattern=r"^[^:\s]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$",
                        description="HOST:PORT of the metrics and status listener (port 0: any free port)")
    history_s: int = Field(300, ge=10, le=3600, description="how far back the status page's charts go")


class TracingConfig(_Frozen):
    """OpenTelemetry traces; each field's OTEL_* variable, when set, overrides it."""

    enabled: bool = Field(True, description="OTEL_SDK_DISABLED=true turns tracing off")
    service_name: str = Field("hsmlb", description="OTEL_SERVICE_NAME")
    exporter: Literal["otlp", "console", "none"] = Field("otlp", description="OTEL_TRACES_EXPORTER")
    endpoint: str | None = Field(None, description="OTEL_EXPORTER_OTLP_ENDPOINT (default: the protocol's "
                                 "localhost port, 4317 for grpc, 4318 for http/protobuf)")
    protocol: Literal["grpc", "http/protobuf"] = Field("grpc", description="OTEL_EXPORTER_OTLP_PROTOCOL")
    sampler: Sampler = Field("traceidratio", description="OTEL_TRACES_SAMPLER")
    sampler_arg: float = Field(0.01, ge=0, le=1, description="OTEL_TRACES_SAMPLER_ARG: the ratio")
    max_queue_size: int = Field(2048, ge=1, le=1_000_000, description="spans waiting for export; more are "
                                "dropped and counted (hsmlb_spans_dropped_total)")
    export_interval_s: float = Field(2.0, gt=0, le=60)
    max_export_batch_size: int = Field(512, ge=1, le=100_000)
    export_timeout_s: float = Field(5.0, gt=0, le=60)

    def with_env(self, env: dict[str, str] | os._Environ[str] | None = None) -> TracingConfig:
        """This config with the standard OTEL_* variables applied over it."""
        env = os.environ if env is None else env
        update: dict[str, object] = {}
        if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            update["enabled"] = False
        names = {"OTEL_SERVICE_NAME": "service_name", "OTEL_TRACES_EXPORTER": "exporter",
                 "OTEL_EXPORTER_OTLP_ENDPOINT": "endpoint", "OTEL_EXPORTER_OTLP_PROTOCOL": "protocol",
                 "OTEL_TRACES_SAMPLER": "sampler", "OTEL_TRACES_SAMPLER_ARG": "sampler_arg"}
        for var, name in names.items():
            value = env.get(var, "").strip()
            if value:
                update[name] = value.lower() if name in ("exporter", "protocol", "sampler") else value
        if not update:
            return self
        return type(self).model_validate({**self.model_dump(), **update})


class LoggingConfig(_Frozen):
    format: Literal["text", "json"] = Field("text", description="json: one object per line, with the trace id "
                                            "where an operation is traced (`--log-format` overrides)")
