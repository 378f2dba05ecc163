"""Daemon-wide overload shedding: a bound on unary calls in flight in the daemon's handlers.

Why a count and not the node queues: under a burst of unary calls the bottleneck is the daemon's
own event loop (~170 us of gRPC work per call), not the nodes (~20 us per symmetric op), so node
queues stay short while calls pile up in the handlers. Beyond `limit` calls in flight a new unary
call is answered RESOURCE_EXHAUSTED before any decoding or routing, which costs a fraction of a
served call, so the backlog drains instead of every call waiting seconds. (grpc.aio's own
maximum_concurrent_rpcs stops taking calls instead of refusing them: grpc core then cancels them.)
Pure bookkeeping: enter/leave around each unary call.
"""

from __future__ import annotations


class InFlightLimit:
    __slots__ = ("in_flight", "limit", "shed")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0
        self.shed = 0  # calls refused so far

    def enter(self) -> bool:
        """Admit one call (True; the caller must leave()), or count it as shed (False)."""
        if self.in_flight >= self.limit:
            self.shed += 1
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight -= 1
