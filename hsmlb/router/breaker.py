"""One pybreaker circuit breaker per node, driven without ever holding its lock across an await.

pybreaker counts consecutive failures and owns the state and listeners; we feed it outcomes
after the await with a no-op `call` (its lock is held for microseconds), and decide the
open -> half-open timing ourselves from the injected clock, so tests need no sleeping.
Half-open admits a single probe; its outcome closes or re-opens the breaker.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import pybreaker

from hsmlb.clock import Clock

log = logging.getLogger("hsmlb.breaker")
NEVER = 10**9  # pybreaker's own timer is never used


class _Fault(Exception):
    pass


def _raise_fault() -> None:
    raise _Fault()


def _ok() -> None:
    return None


class _StateListener(pybreaker.CircuitBreakerListener):
    def __init__(self, owner: NodeBreaker) -> None:
        self.owner = owner

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: object, new_state: object) -> None:
        old = getattr(old_state, "name", str(old_state))
        new = getattr(new_state, "name", str(new_state))
        if new == "open":
            self.owner.opened_at = self.owner.clock()
        log.warning("breaker %s: %s -> %s", cb.name, old, new)
        for callback in self.owner.on_change:
            callback(self.owner.name, old, new)


class NodeBreaker:
    def __init__(self, name: str, clock: Clock, fail_max: int = 5, reset_timeout_s: float = 2.0) -> None:
        self.name = name
        self.clock = clock
        self.reset_timeout_s = reset_timeout_s
        self.opened_at = 0.0
        self.probe_in_flight = False
        self.on_change: list[Callable[[str, str, str], None]] = []
        # Closed, with no failure counted and no probe out: then allows() is True and a success
        # changes nothing, so the hot path skips pybreaker, which takes a lock on every call.
        self._clean = True
        self._cb = pybreaker.CircuitBreaker(fail_max=fail_max, reset_timeout=NEVER, name=name,
                                            listeners=[_StateListener(self)])

    @property
    def state(self) -> str:
        return str(self._cb.current_state)

    def allows(self) -> bool:
        """May a request go to this node now? Reserves the single half-open probe when it says yes."""
        if self._clean:
            return True
        state = self._cb.current_state
        if state == "closed":
            return True
        if state == "open":
            if self.clock() - self.opened_at < self.reset_timeout_s:
                return False
            self._cb.half_open()
        if self.probe_in_flight:
            return False
        self.probe_in_flight = True
        return True

    def would_allow(self) -> bool:
        """Like allows(), without reserving the probe: for eligibility snapshots."""
        if self._clean:
            return True
        state = self._cb.current_state
        if state == "closed":
            return True
        if state == "open":
            return self.clock() - self.opened_at >= self.reset_timeout_s
        return not self.probe_in_flight

    def record(self, node_fault: bool) -> None:
        """Feed one outcome after the await; only node faults count as failures."""
        if self._clean and not node_fault:
            return
        was_probe = self.probe_in_flight
        self.probe_in_flight = False
        if self._cb.current_state == "open" and not was_probe:
            return  # a straggler from before the breaker opened
        with contextlib.suppress(_Fault, pybreaker.CircuitBreakerError):
            self._cb.call(_raise_fault if node_fault else _ok)
        self._clean = not node_fault and self._cb.current_state == "closed"

    def release_probe(self) -> None:
        """The reserved probe was not used (the request went elsewhere or was refused)."""
        self.probe_in_flight = False
