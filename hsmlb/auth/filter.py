"""The authorization and rate-limit filter: first in the seam (api/filters.py).

open(call): the caller's identity from its certificate and its grant from the policy, once per RPC
(a whole Stream or batch pays this once); the Admin service refuses a caller that is not admin.
admit(call, item): per operation, the operation and every key it touches against the grant, then
the caller's token bucket. Refusals name the caller, the operation and the alias, never request
data; they reach `done` (and so the audit) with PERMISSION_DENIED or RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import logging

from hsmlb.api.filters import Call, FilterBase, Item
from hsmlb.auth.config import AuthConfig
from hsmlb.auth.identity import identity_of
from hsmlb.auth.policy import Grant, Policy
from hsmlb.auth.ratelimit import TokenBucket
from hsmlb.clock import Clock, monotonic
from hsmlb.errors import Overloaded, PermissionDenied

log = logging.getLogger("hsmlb.auth")
ADMIN_SERVICE = "/hsmlb.v1.Admin/"
PUSHBACK = "grpc-retry-pushback-ms"
_PER_ITEM = ("/Stream", "/StreamBatch", "/Batch")  # a refusal there is one item's Status, not the RPC's


class RateLimited(Overloaded):
    """A caller over its own rate: RESOURCE_EXHAUSTED, with when to come back."""

    reason = "rate_limit"

    def __init__(self, message: str, retry_after_ms: int) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class AuthFilter(FilterBase):
    def __init__(self, config: AuthConfig, clock: Clock = monotonic) -> None:
        self.policy = Policy(config)
        self.log_only = config.log_only
        self.clock = clock
        self._limits = {i: rule.rate_limit for i, rule in enumerate(config.callers)}
        self.buckets: dict[str, TokenBucket] = {}  # per identity (a pattern's callers each get their own)
        self.denied = 0  # counted refusals (PERMISSION_DENIED), and in log_only mode the would-be ones
        self.rate_limited = 0

    # -- per RPC ---------------------------------------------------------------------------------
    def open(self, call: Call) -> None:
        identity = call.identity = identity_of(call.context)
        grant = self.policy.resolve(identity)
        bucket = None
        if grant is not None and grant.rule is not None and (limit := grant.rule.rate_limit) is not None:
            bucket = self.buckets.get(identity)
            if bucket is None:
                bucket = self.buckets[identity] = TokenBucket(limit.per_s, limit.burst, self.clock)
        call.state["auth"] = (grant, bucket)
        if call.method.startswith(ADMIN_SERVICE) and (grant is None or not grant.admin):
            method = call.method[len(ADMIN_SERVICE):]
            self._refuse(f"caller {identity} may not use the Admin service ({method})")

    # -- per operation ---------------------------------------------------------------------------
    def admit(self, call: Call, item: Item) -> None:
        grant: Grant | None
        grant, bucket = call.state["auth"]
        op = item.op
        if grant is None:
            alias = op.key_alias if op is not None else None
            self._refuse(f"caller {call.identity} may not call {item.field}" + (f" with key {alias}" if alias else ""))
            return
        if grant.rule is None:
            return
        if op is not None and (reason := grant.decide(item.field, op.key_alias, op.other_keys)):
            self._refuse(reason)
            return
        if bucket is not None and (wait := bucket.take()):
            self._limited(call, item, wait)

    def _refuse(self, reason: str) -> None:
        self.denied += 1
        if self.log_only:
            log.warning("log_only: would deny: %s", reason)
            return
        log.info("denied: %s", reason)
        raise PermissionDenied(reason)

    def _limited(self, call: Call, item: Item, wait_s: float) -> None:
        self.rate_limited += 1
        ms = max(1, int(wait_s * 1000 + 0.999))
        if self.log_only:
            log.warning("log_only: would rate-limit caller %s (%s)", call.identity, item.field)
            return
        if call.context is not None and not call.method.endswith(_PER_ITEM):
            call.context.set_trailing_metadata(((PUSHBACK, str(ms)),))
        raise RateLimited(f"caller {call.identity} is over its rate limit for {item.field}; retry after {ms} ms",
                          ms)
