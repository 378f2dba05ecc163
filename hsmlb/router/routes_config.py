"""The `routes:` and `shadow:` sections of the config: which pool serves an operation, and how a
candidate pool is shadowed, weighted and gated.

Why a module of its own: routing policy is the router's; config.py only names the fields.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hsmlb.ops import OpKind

ANY_OP = "*"
OP_NAMES = tuple(k.value for k in OpKind)
POOL_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RouteConfig(_Frozen):
    """One operation's (or every operation's, `*`) pools, Envoy priority style: `failover` pools are
    used, in order, only when no routable holder is left in the pools before them."""

    op: str = Field(ANY_OP, description=f"an operation ({', '.join(OP_NAMES)}) or * for every other one")
    primary: str = Field(pattern=POOL_PATTERN)
    failover: list[str] = Field(default_factory=list)
    candidate: str | None = Field(None, pattern=POOL_PATTERN, description="the pool shadowed and weighted")
    candidate_percent: float = Field(0.0, ge=0, le=100, description="share answered by the candidate pool")
    shadow_percent: float = Field(0.0, ge=0, le=100, description="share of primary answers shadowed to it")
    noise_percent: float = Field(0.0, ge=0, le=100, description="share also sent to a second primary node "
                                 "(the noise baseline: the primary's own disagreement)")

    @model_validator(mode="after")
    def _consistent(self) -> RouteConfig:
        if self.op != ANY_OP and self.op not in OP_NAMES:
            raise ValueError(f"op: must be * or one of {', '.join(OP_NAMES)}")
        pools = [self.primary, *self.failover]
        if len(set(pools)) != len(pools):
            raise ValueError("failover: a pool may appear once, and not as the primary too")
        if (self.candidate_percent or self.shadow_percent) and not self.candidate:
            raise ValueError("candidate: required when candidate_percent or shadow_percent is set")
        if self.candidate == self.primary:
            raise ValueError("candidate: must differ from primary")
        return self


class ShadowConfig(_Frozen):
    """Bounds of shadow work, the promotion gates and the automatic weight drop."""

    max_in_flight: int = Field(256, ge=0, description="shadow calls in flight at once; more are skipped (shed)")
    timeout_s: float = Field(2.0, gt=0, le=60, description="a shadow call's own deadline")
    discrepancy_records: int = Field(100, ge=0, le=10_000, description="bounded ring shown on request")
    gate_min_samples: int = Field(100, ge=0, description="shadow samples a route needs before weight > 0")
    gate_window_s: float = Field(600.0, gt=0, description="window of the gate's samples and discrepancies")
    auto_drop_error_rate: float = Field(0.2, gt=0, le=1, description="candidate error rate that drops weight to 0")
    auto_drop_min_requests: int = Field(10, ge=1)
    auto_drop_window_s: float = Field(30.0, gt=0)
    budget_max_per_s: float = Field(2000.0, gt=0, description="shadow calls per second at most (token bucket)")
    budget_min_per_s: float = Field(5.0, ge=0, description="the rate a saturated daemon still shadows at")
    budget_in_flight_per_candidate: int = Field(64, ge=1, description="shadow calls in flight to one candidate "
                                                "pool; more are skipped (budget)")
    budget_adaptive: bool = Field(True, description="cut the shadow rate while the event loop lags, grow it back "
                                  "when it does not: at saturation the shadow sample shrinks, not the primary")
    budget_lag_ms: float = Field(4.0, gt=0, description="event-loop lag that cuts the shadow rate")
    executor: bool = Field(True, description="shadow calls to APC regions run in a child process of their own "
                           "(shadow/executor.py), not on the primary's event loop")
    executor_nice: int = Field(10, ge=0, le=19, description="added to the daemon's niceness for the executor process")
    executor_cpus: list[int] | None = Field(None, description="CPUs the executor process may run on "
                                           "(sched_setaffinity): cores the primary's loop and token workers do not "
                                           "use; default: any")
    state_file: Path | None = Field(None, description="runtime route changes (weights, promotions, switch); "
                                    "default: beside the config file, <name>.state.json")


def check_routes(routes: list[RouteConfig]) -> list[RouteConfig]:
    ops = [r.op for r in routes]
    dupes = sorted({o for o in ops if ops.count(o) > 1})
    if dupes:
        raise ValueError(f"routes: one route per operation: {', '.join(dupes)}")
    return routes
