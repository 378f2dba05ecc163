"""Who may do what: a pure decision over plain values (identity, operation, key aliases).

Order, as gRPC's authorization policies and Envoy's RBAC have it: deny patterns first, then the
first caller rule whose identity matches; no rule matches -> denied. With no caller rules at all the
policy is open (a dev daemon). `log_only` decides the same way but only reports.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from hsmlb.auth.config import AuthConfig, CallerRule


def _matcher(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern))  # case-sensitive, unlike fnmatch.fnmatch on some systems


@dataclass(frozen=True, slots=True)
class Grant:
    """What one resolved caller may do (the rule that matched its identity), fixed for an RPC."""

    identity: str
    rule: CallerRule | None  # None: open policy (no callers configured), everything allowed
    all_ops: bool
    ops: frozenset[str]
    keys: tuple[re.Pattern[str], ...]
    all_keys: bool
    decisions: dict[tuple[str, str | None, tuple[str, ...]], str] = field(default_factory=dict, compare=False)

    @property
    def admin(self) -> bool:
        return self.rule is None or self.rule.admin

    def decide(self, operation: str, alias: str | None, others: tuple[str, ...]) -> str:
        """op_denied, remembered: a caller uses few (operation, key) pairs, so the hot path is one dict lookup."""
        key = (operation, alias, others)
        reason = self.decisions.get(key)
        if reason is None:
            reason = self.op_denied(operation, (alias, *others))
            if len(self.decisions) < 4096:
                self.decisions[key] = reason
        return reason

    def op_denied(self, operation: str, aliases: Iterable[str | None]) -> str:
        """Why `operation` on `aliases` is refused ('' when allowed). Names the op and alias only."""
        if self.rule is None:
            return ""
        if not self.all_ops and operation not in self.ops:
            return f"caller {self.identity} may not call {operation}"
        if self.all_keys:
            return ""
        for alias in aliases:
            if alias and not any(p.fullmatch(alias) for p in self.keys):
                return f"caller {self.identity} may not use key {alias} for {operation}"
        return ""


OPEN = "open"


class Policy:
    def __init__(self, config: AuthConfig) -> None:
        self.open = not config.callers
        self.log_only = config.log_only
        self._deny = tuple(_matcher(p) for p in config.deny)
        self._rules = tuple((_matcher(r.identity), r) for r in config.callers)
        self._cache: dict[str, Grant | None] = {}

    def resolve(self, identity: str) -> Grant | None:
        """The caller's grant, or None when it is denied outright (a deny pattern, no rule)."""
        cached = self._cache.get(identity, OPEN)
        if cached is not OPEN:
            return cached  # type: ignore[return-value]
        grant = self._resolve(identity)
        if len(self._cache) < 10_000:  # identities come from certificates we issued: few; bounded anyway
            self._cache[identity] = grant
        return grant

    def _resolve(self, identity: str) -> Grant | None:
        if any(p.fullmatch(identity) for p in self._deny):
            return None
        if self.open:
            return Grant(identity, None, True, frozenset(), (), True)
        for pattern, rule in self._rules:
            if pattern.fullmatch(identity):
                return Grant(identity, rule, "*" in rule.operations, frozenset(rule.operations),
                             tuple(_matcher(k) for k in rule.keys), "*" in rule.keys)
        return None
