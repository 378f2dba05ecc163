"""The cluster view (Envoy's cluster manager): members, who holds which key, who may serve now.

Rebuilt when a node's state or inventory changes, never per request. A node whose KCV for an
alias differs from the majority of holders is flagged and excluded for that alias.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from hsmlb.errors import InvalidArgument, KeyNotFound
from hsmlb.health import NodeHealth
from hsmlb.ops import OP_TRAITS, KeyInfo, Operation
from hsmlb.pool import NodePool
from hsmlb.router.breaker import NodeBreaker

log = logging.getLogger("hsmlb.cluster")


@dataclass(eq=False)
class Member:
    pool: NodePool
    health: NodeHealth
    breaker: NodeBreaker
    panic_routes: int = 0
    retries_from: int = 0
    kcv_conflicts: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.pool.name

    @property
    def up(self) -> bool:
        return self.pool.backend.state == "up"

    def __repr__(self) -> str:
        return f"Member({self.name})"


class Cluster:
    def __init__(self, members: list[Member]) -> None:
        self.members = members
        self.by_name = {m.name: m for m in members}
        self._holders: dict[str, list[Member]] = {}
        self._keys: dict[str, KeyInfo] = {}
        self.rebuild()

    def rebuild(self, *_: object) -> None:
        """Recompute alias -> holders from the live inventories of nodes that are up."""
        kcvs: dict[str, Counter[str]] = {}
        for member in self.members:
            if member.up:
                for alias, key in member.pool.backend.keys.items():
                    kcvs.setdefault(alias, Counter())[key.kcv] += 1
        holders: dict[str, list[Member]] = {}
        keys: dict[str, KeyInfo] = {}
        for member in self.members:
            member.kcv_conflicts = []
            if not member.up:
                continue
            for alias, key in member.pool.backend.keys.items():
                majority = kcvs[alias].most_common(1)[0][0]
                if key.kcv != majority:
                    member.kcv_conflicts.append(alias)
                    log.error("node %s: KCV of %s differs from the other holders; excluded for it", member.name,
                              alias)
                    continue
                holders.setdefault(alias, []).append(member)
                keys.setdefault(alias, key)
        self._holders, self._keys = holders, keys

    def key(self, alias: str | None) -> KeyInfo | None:
        return self._keys.get(alias) if alias else None

    def holders(self, op: Operation) -> list[Member]:
        """Nodes that hold the key (with the agreed KCV) and can do the op; raises for caller errors."""
        if op.key_alias is None:
            return [m for m in self.members if op.kind in m.pool.backend.capabilities]
        holders = self._holders.get(op.key_alias)
        if not holders:
            if any(op.key_alias in m.pool.backend.keys for m in self.members):
                return []  # known, but every holder is down: UNAVAILABLE, decided by the router
            raise KeyNotFound(f"no node holds a key with alias {op.key_alias}")
        key = self._keys[op.key_alias]
        usage = OP_TRAITS[op.kind].usage
        if usage and usage not in key.usages:
            allowed = ", ".join(sorted(key.usages)) or "none"
            raise InvalidArgument(f"key {op.key_alias} does not allow {op.kind.value} (its usages: {allowed})")
        return [m for m in holders if op.kind in m.pool.backend.capabilities]

    def ejected_count(self, now: float) -> int:
        return sum(1 for m in self.members if m.health.ejected_until is not None)
