"""The shadow budget: shadowing is best-effort (Envoy's request mirroring), so it may only use what the
primary leaves over. What does not fit is skipped and counted as `budget`, never queued.

Two bounds, both plain policy over an injected clock:
- shadow calls in flight per candidate pool (a slow or hung candidate cannot pile up work);
- a token bucket of shadow calls per second whose rate follows the daemon's load (AIMD, as TCP does),
  probed every 50 ms (`LoopLagProbe`; two busy probes in a row cut, one holds): the event loop's lag
  (how late a timer fires), its CPU share, and
  the primary's backlog (half the slots of the primary pools in use) say whether the primary has
  work waiting. Waiting: the rate is cut by `decrease`, from the calls actually made, down to `min_per_s` (a
  trickle, so the comparison never stops). Quiet: it grows by `increase` per probe, up to `max_per_s`
  (slower than it is cut: the shadow grows only while over three probes in four find the primary idle).
  So at light load every primary answer is shadowed, and at saturation the shadow sample shrinks
  instead of the primary's throughput.

Why three signals: a loop that does all the work is busy (its CPU share) or late (lag); a loop that waits
on token workers which the shadow's CPU (the daemon's, or on one host the candidate's) slows down shows a
full primary pool instead. On a shared machine the loop thread can be descheduled, so its own CPU share
reads low while callers wait; a late timer or a full pool is what a caller feels, whatever the cause.
At light load the pool is never full and the loop rarely busy or late, so light traffic is fully shadowed
(a lag spike from another process halves the rate for one probe; the next quiet one doubles it back).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from hsmlb.apc.throttle import TokenBucket
from hsmlb.clock import Clock


class ShadowBudget:
    def __init__(self, clock: Clock, *, max_per_s: float = 2000.0, min_per_s: float = 5.0, burst_s: float = 0.1,
                 in_flight_per_candidate: int = 64, lag_high_s: float = 0.004, decrease: float = 0.5,
                 increase: float = 1.25, adaptive: bool = True) -> None:
        self.clock = clock
        self.max_per_s = max_per_s
        self.min_per_s = min(min_per_s, max_per_s)
        self.in_flight_per_candidate = in_flight_per_candidate
        self.lag_high_s = lag_high_s
        self.decrease = decrease
        self.increase = increase
        self.adaptive = adaptive
        # optimistic: an idle daemon shadows everything from the first request
        self.bucket = TokenBucket(max_per_s, burst_s, clock)
        self.in_flight: dict[str, int] = {}
        self.cuts = 0  # times the rate was cut: how often the primary needed the room back
        self.lag_s = 0.0  # the last lag observed
        self.backlogs = 0  # probes that found the primary with a backlog
        self.taken = 0  # shadow calls since the last probe
        self._busy = False  # the last probe found the primary busy
        self._observed = clock()

    @property
    def rate(self) -> float:
        """Shadow calls a second allowed now."""
        return self.bucket.rate

    def ready(self, pool: str) -> bool:
        """Room for one more shadow call to `pool` now (refills the bucket; takes nothing)."""
        if self.in_flight.get(pool, 0) >= self.in_flight_per_candidate:
            return False
        return self.bucket.available() >= 1.0

    def take(self, pool: str) -> None:
        """A shadow call to `pool` starts: one token and one in-flight slot."""
        self.bucket.acquire(0.0)
        self.taken += 1
        self.in_flight[pool] = self.in_flight.get(pool, 0) + 1

    def release(self, pool: str) -> None:
        self.in_flight[pool] -= 1

    def observe(self, lag_s: float, backlog: bool = False, quiet_probes: int = 1) -> None:
        """One probe: cut the rate when the loop is late or the primary has a backlog, grow it when neither
        (by `quiet_probes` steps: a probe after an idle spell counts the probes that spell would have made,
        so a rate cut by a burst does not linger into the next, light, traffic)."""
        self.lag_s = lag_s
        self.backlogs += backlog
        if not self.adaptive:
            return
        now = self.clock()
        used = self.taken / (now - self._observed) if now > self._observed else self.rate
        self.taken, self._observed = 0, now
        busy = backlog or lag_s >= self.lag_high_s
        first, self._busy = busy and not self._busy, busy
        if first:
            return  # one busy probe alone (another process's hiccup, a burst) holds the rate; two in a row cut it
        if busy:
            if self.rate > self.min_per_s:
                self.cuts += 1
            # from what was used, not the ceiling: a rate far above the calls that fit would take many cuts to bite
            self.bucket.set_rate(max(self.min_per_s, min(self.rate, used) * self.decrease))
        else:
            rate = self.rate
            for _ in range(min(quiet_probes, 100)):
                rate = min(self.max_per_s, rate * self.increase + 1.0)
            self.bucket.set_rate(rate)

    def stats(self) -> dict[str, float]:
        return {"rate_per_s": round(self.rate, 1), "max_per_s": self.max_per_s, "min_per_s": self.min_per_s,
                "cuts": self.cuts, "backlogs": self.backlogs, "lag_ms": round(self.lag_s * 1000, 3),
                "in_flight": sum(self.in_flight.values())}


class LoopLagProbe:
    """How late the event loop runs a timer, every `interval_s`, fed to `observe` with whether the primary is
    busy: `backlog()`, or the loop thread's CPU over the interval at `busy_high` of the wall time. It runs
    only while shadowing is active: `poke()` on each shadow decision arms it, and a probe that saw no poke
    since the last one does not re-arm, so an idle daemon has no timer."""

    def __init__(self, observe: Callable[[float, bool, int], None], backlog: Callable[[], bool],
                 interval_s: float = 0.05, busy_high: float = 0.8) -> None:
        self.observe = observe
        self.backlog = backlog
        self.busy_high = busy_high
        self.interval_s = interval_s
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._poked = False
        self._last: float | None = None  # when the last probe fired
        self._cpu = 0.0  # the loop thread's CPU time then

    def poke(self) -> None:
        self._poked = True
        if self._handle is None:
            loop = asyncio.get_running_loop()
            if self._last is not None:  # back from an idle spell: it counts as the quiet probes it would have made
                now = time.perf_counter()
                quiet = int((now - self._last) / self.interval_s)
                if quiet > 1:
                    self._last = now
                    self.observe(0.0, False, quiet)
            self._arm(loop)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        self._poked = False
        self._due = time.perf_counter() + self.interval_s  # uvloop's loop.time() counts whole milliseconds
        self._handle = loop.call_later(self.interval_s, self._fire, loop)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._handle = None
        now, cpu = time.perf_counter(), time.thread_time()  # this thread's: the event loop's own CPU
        last = self._due - self.interval_s if self._last is None else self._last
        busy = (cpu - self._cpu) / (now - last) if self._last is not None and now > last else 0.0
        self._last, self._cpu = now, cpu
        self.observe(max(0.0, now - self._due), busy >= self.busy_high or self.backlog(),
                     max(1, int((now - last) / self.interval_s)))
        if self._poked:
            self._arm(loop)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
