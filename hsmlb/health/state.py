"""Per-node health as a pure state machine: values in, decisions out, time from an injected clock.

Three inputs decide whether a node is routable:
- the operator (drills): active, failed (as if checks failed), draining (no new requests);
- active checks: `unhealthy_threshold` consecutive failed canaries mark it unhealthy,
  `healthy_threshold` consecutive good ones mark it healthy again;
- outlier detection on live traffic: `consecutive_faults` node faults in a row, or a failure
  rate above `failure_rate` over the window, eject it for base * 2^(n-1) seconds (capped).
  After that time it is readmitted only once `healthy_threshold` checks in a row have passed.

Readmission and restore start a slow start: the node's weight ramps from 10% to 100%.
Only node faults count; caller errors and busy (queue full) answers never do.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

OperatorState = Literal["active", "failed", "draining"]


@dataclass(frozen=True)
class HealthPolicy:
    unhealthy_threshold: int = 2
    healthy_threshold: int = 3
    consecutive_faults: int = 5
    failure_rate: float = 0.5
    failure_rate_min_requests: int = 20
    window_s: float = 10.0
    base_ejection_s: float = 1.0
    max_ejection_s: float = 60.0
    slow_start_s: float = 5.0
    observe_only: bool = False  # report ejections without acting on them


class NodeHealth:
    def __init__(self, name: str, policy: HealthPolicy, now: float) -> None:
        self.name = name
        self.policy = policy
        self.operator: OperatorState = "active"
        self.operator_actor = ""
        self.checks_healthy = True
        self._check_ok_streak = 0
        self._check_fail_streak = 0
        self._fault_streak = 0
        self._window: deque[tuple[float, bool]] = deque()
        self._window_faults = 0  # node faults in _window, kept as it changes: O(1) per request, not O(window)
        self.ejected_until: float | None = None
        self.ejections = 0
        self.ejections_total = 0  # never reset, unlike `ejections` (the back-off's count): for metrics
        self.would_eject = 0  # observe-only decisions
        self.slow_start_at: float | None = None
        self.last_reason = ""
        self._readmitted_at: float | None = None

    # -- inputs -------------------------------------------------------------------------------
    def record_check(self, ok: bool, now: float, reason: str = "") -> None:
        """One canary's outcome; `reason` (a failed one's safe message) shows in the node's detail."""
        if ok:
            self._check_ok_streak += 1
            self._check_fail_streak = 0
            if not self.checks_healthy and self._check_ok_streak >= self.policy.healthy_threshold:
                self.checks_healthy = True
                self.slow_start_at = now
            self._maybe_readmit(now)
        else:
            self._check_fail_streak += 1
            self._check_ok_streak = 0
            if self.checks_healthy and self._check_fail_streak >= self.policy.unhealthy_threshold:
                self.checks_healthy = False
            if not self.checks_healthy:  # kept current: the cause may change while the node is down
                because = f": {reason}" if reason else ""
                self.last_reason = f"{self._check_fail_streak} health checks failed{because}"

    def record_result(self, node_fault: bool, now: float, may_eject: bool = True) -> bool:
        """One live request's outcome; returns True when this outcome ejects the node."""
        window = self._window
        window.append((now, node_fault))
        self._window_faults += node_fault
        horizon = now - self.policy.window_s
        while window and window[0][0] < horizon:
            self._window_faults -= window.popleft()[1]
        if not node_fault:
            self._fault_streak = 0
            return False
        self._fault_streak += 1
        if self.is_ejected(now):
            return False
        reason = self._outlier_reason()
        if reason is None:
            return False
        if self.policy.observe_only or not may_eject:
            self.would_eject += 1
            self.last_reason = f"{reason} (not ejected: {'observe only' if may_eject else 'ejection cap'})"
            return False
        self.eject(now, reason)
        return True

    def eject(self, now: float, reason: str) -> None:
        if self._readmitted_at is not None and now - self._readmitted_at > self.policy.max_ejection_s:
            self.ejections = 0  # stable for a while: back-off starts over
        self.ejections += 1
        self.ejections_total += 1
        # A float power, its exponent bounded: an int 2**1024 cannot become a float (OverflowError)
        # after a day of flapping; base * 2.0**1000 is at worst inf, and min() caps it.
        backoff = self.policy.base_ejection_s * 2.0 ** min(self.ejections - 1, 1000)
        self.ejected_until = now + min(backoff, self.policy.max_ejection_s)
        self._check_ok_streak = 0
        self._fault_streak = 0
        self._window.clear()
        self._window_faults = 0
        self.last_reason = reason

    def set_operator(self, state: OperatorState, actor: str, now: float) -> None:
        if state == "active" and self.operator != "active":
            self.slow_start_at = now
        self.operator = state
        self.operator_actor = actor

    # -- decisions ----------------------------------------------------------------------------
    def is_ejected(self, now: float) -> bool:
        return self.ejected_until is not None

    def routable(self, now: float) -> bool:
        if self.ejected_until is not None:  # the hot path's common case skips the call
            self._maybe_readmit(now)
        return self.operator == "active" and self.checks_healthy and self.ejected_until is None

    def weight(self, now: float) -> float:
        """Slow start: 0.1 -> 1.0 over slow_start_s after readmission or restore."""
        if self.slow_start_at is None or self.policy.slow_start_s <= 0:
            return 1.0
        progress = (now - self.slow_start_at) / self.policy.slow_start_s
        if progress >= 1:
            self.slow_start_at = None
            return 1.0
        return 0.1 + 0.9 * max(progress, 0.0)

    def describe(self, now: float) -> str:
        if self.operator == "failed":
            return f"failed by operator ({self.operator_actor})" if self.operator_actor else "failed by operator"
        if self.operator == "draining":
            return "draining"
        if self.ejected_until is not None:
            if now < self.ejected_until:
                return f"ejected for {self.ejected_until - now:.1f}s more"
            return "ejected, awaiting healthy checks"
        if not self.checks_healthy:
            return "unhealthy"
        if self.slow_start_at is not None and self.weight(now) < 1.0:
            return "healthy (slow start)"
        return "healthy"

    # -- internals ----------------------------------------------------------------------------
    def _outlier_reason(self) -> str | None:
        if self._fault_streak >= self.policy.consecutive_faults:
            return f"{self._fault_streak} consecutive node faults"
        total = len(self._window)
        if total >= self.policy.failure_rate_min_requests:
            faults = self._window_faults
            if faults / total > self.policy.failure_rate:
                return f"failure rate {faults}/{total} over {self.policy.window_s:.0f}s"
        return None

    def _maybe_readmit(self, now: float) -> None:
        if (self.ejected_until is not None and now >= self.ejected_until
                and self._check_ok_streak >= self.policy.healthy_threshold):
            self.ejected_until = None
            self.slow_start_at = self._readmitted_at = now
            self.last_reason = "readmitted"
