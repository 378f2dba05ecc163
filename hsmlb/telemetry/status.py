"""The status page's document (`/status.json`): nodes, key inventory, drills, hardware, history.

Read from the router at request time, like ListNodes (it reuses ListNodes's own `node_status`, so
the page and `hsmlb nodes` cannot disagree). Nothing here is sensitive: names, states, counts,
key aliases and their 3-byte check values, token model and firmware.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import grpc

from hsmlb.api.admin import node_status
from hsmlb.api.filters import Call, FilterBase
from hsmlb.router import Router
from hsmlb.telemetry.history import TOTAL, History

MAX_DRILLS = 50


class DrillLog(FilterBase):
    """Remembers the last Admin actions (drills, fault injection) and who asked, for the page."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.recent: deque[dict[str, Any]] = deque(maxlen=MAX_DRILLS)

    def admin(self, call: Call, action: str, target: str, code: grpc.StatusCode, detail: str) -> None:
        member = self.router.cluster.by_name.get(target)
        requested_by = member.health.operator_actor if member is not None and action == "set_node_state" else ""
        self.recent.appendleft({"t": round(time.time(), 1), "action": action, "node": target, "detail": detail,
                                "requested_by": requested_by, "identity": call.identity, "peer": call.peer,
                                "code": code.name})


def key_inventory(router: Router) -> list[dict[str, Any]]:
    """Per alias: which nodes hold it, which serve it (up, agreed KCV), the KCVs seen, conflicts."""
    aliases: dict[str, dict[str, Any]] = {}
    for m in router.cluster.members:
        for alias, key in m.pool.backend.keys.items():
            entry = aliases.setdefault(alias, {"alias": alias, "key_type": key.key_type, "nodes": [],
                                               "holders": [], "kcvs": {}, "conflicts": []})
            entry["nodes"].append(m.name)
            entry["kcvs"].setdefault(key.kcv or "-", []).append(m.name)
            if alias in m.kcv_conflicts:
                entry["conflicts"].append(m.name)
            elif m.up:
                entry["holders"].append(m.name)
    for entry in aliases.values():
        entry["kcv_agreed"] = len(entry["kcvs"]) <= 1
    return [aliases[a] for a in sorted(aliases)]


def _node(member: Any, now: float, history: History | None) -> dict[str, Any]:
    s = node_status(member, now)
    recent = history.last_minute(s.name) if history is not None else {}
    return {"name": s.name, "kind": s.kind, "state": s.state, "backend_state": s.backend_state,
            "operator": s.operator, "healthy": s.state.startswith("healthy"), "breaker": s.breaker,
            "ejections": member.health.ejections_total, "ejected_for_s": round(s.ejected_for_s, 1),
            "outstanding": s.outstanding, "sessions_in_use": s.sessions_in_use, "pool_size": s.pool_size,
            "queued": s.queued, "ops_ok": s.ops_ok, "ops_failed": s.ops_failed, "retries_from": s.retries_from,
            "throttled": s.throttled, "panic_routes": s.panic_routes, "weight": round(s.weight, 2),
            "capabilities": list(s.capabilities), "skipped_ops": dict(s.skipped_ops),
            "kcv_conflicts": list(s.kcv_conflicts), "keys": len(s.keys), "detail": s.detail,
            "tps": recent.get("tps"), "errors_per_s": recent.get("errors_per_s"), "p99_ms": recent.get("p99_ms")}


def status_document(router: Router, history: History | None, drills: DrillLog | None,
                    hardware: Callable[[], dict[str, Any]] | None = None,
                    extras: dict[str, Callable[[], Any]] | None = None, balancer: str = "") -> dict[str, Any]:
    """The whole page's data in one JSON-able dict. `extras`: further sections (shadowing's)."""
    now = router.clock()
    budget = router.budget
    doc: dict[str, Any] = {
        "t": round(time.time(), 1),
        "router": {"balancer": balancer, "retries_in_window": budget.retries_in_window,
                   "retries_refused": budget.refused},
        "nodes": [_node(m, now, history) for m in router.cluster.members],
        "keys": key_inventory(router),
        "drills": list(drills.recent) if drills is not None else [],
        "hardware": hardware() if hardware is not None else {},
        "history": history.series() if history is not None else [],
        "total": history.last_minute(TOTAL) if history is not None else {},
    }
    for name, section in (extras or {}).items():
        doc[name] = section()
    return doc
