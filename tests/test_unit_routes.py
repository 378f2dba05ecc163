"""Pools, priority, candidate weight, promotion, switch, gates and the automatic weight drop, as pure
policy: scripted stand-in nodes (no tokens, no sockets) and a fake clock."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from hsmlb.clock import FakeClock
from hsmlb.config import parse_config
from hsmlb.errors import NodeFault
from hsmlb.health import HealthPolicy, NodeHealth
from hsmlb.ops import KeyInfo, Operation, OpKind
from hsmlb.pool import NodePool
from hsmlb.router import LeastOutstanding
from hsmlb.router.breaker import NodeBreaker
from hsmlb.router.cluster import Cluster, Member
from hsmlb.router.control import GateRefused, RouteControl
from hsmlb.router.router import Router
from hsmlb.router.routes import RouteError, RouteTable
from hsmlb.router.routes_config import RouteConfig, ShadowConfig
from hsmlb.shadow.shadower import Shadower
from tests._scripted import ScriptedBackend

AES = KeyInfo("alias/zek", "alias/zek", "AES", "ABCDEF", frozenset({"encrypt", "decrypt"}))
ROUTE = RouteConfig(op="*", primary="hsm", failover=["apc"], candidate="apc")


def _setup(tmp_path: Path | None = None, route: RouteConfig = ROUTE, **shadow: object,
           ) -> tuple[Router, RouteControl, dict[str, ScriptedBackend], FakeClock]:
    clock = FakeClock()
    backends = {n: ScriptedBackend(n, [AES], outcome=b"\x01" * 16) for n in ("t1", "t2", "r1", "r2")}
    members = [Member(NodePool(b, size=4, queue_limit=8), NodeHealth(b.name, HealthPolicy(), clock()),
                      NodeBreaker(b.name, clock), pool_name="hsm" if n.startswith("t") else "apc")
               for n, b in backends.items()]
    router = Router(Cluster(members), LeastOutstanding(random.Random(1)), clock, rng=random.Random(7))
    config = ShadowConfig(state_file=tmp_path / "hsmlb.state.json" if tmp_path else None, **shadow)  # type: ignore[arg-type]
    shadower = Shadower(router.cluster, router.balancer, clock, rng=random.Random(3))
    control = RouteControl([route], ["hsm", "hsm", "apc", "apc"], config, clock, shadower.stats)
    router.routes, router.shadow, router.watch, router.control = control.table, shadower, control.watch, control
    return router, control, backends, clock


def _enc() -> Operation:
    return Operation(OpKind.ENCRYPT, "alias/zek", ("ECB", b"", b"\x00" * 16))


def _served(backends: dict[str, ScriptedBackend]) -> dict[str, int]:
    return {"hsm": backends["t1"].calls + backends["t2"].calls, "apc": backends["r1"].calls + backends["r2"].calls}


async def test_primary_pool_serves_while_it_can_then_the_failover_pool():
    router, _, backends, clock = _setup()
    for _ in range(50):
        await router.execute(_enc())
    assert _served(backends) == {"hsm": 50, "apc": 0}
    for name in ("t1", "t2"):
        router.cluster.by_name[name].health.set_operator("failed", "test", clock())
    for _ in range(20):
        await router.execute(_enc())
    assert _served(backends) == {"hsm": 50, "apc": 20}


async def test_stream_entry_follows_the_same_priority():
    router, _, _backends, _ = _setup()
    attempts = [router.start(_enc()) for _ in range(10)]
    await asyncio.gather(*(a.future for a in attempts))
    assert {a.member.pool_name for a in attempts} == {"hsm"}


async def test_a_node_fault_on_the_primary_retries_within_the_primary_pool_first():
    router, _, backends, _ = _setup()
    backends["t1"].outcome = NodeFault("t1 broke")
    for _ in range(10):
        await router.execute(_enc())
    assert backends["r1"].calls + backends["r2"].calls == 0


def test_no_routes_means_one_pool_of_every_node():
    table = RouteTable([], ["hsm", "apc"])
    assert not table and table.route("encrypt") is None


async def test_weight_sends_its_share_to_the_candidate(tmp_path: Path):
    router, control, backends, _ = _setup(tmp_path)
    control.set_weight("encrypt", 10, "tester", force=True, reason="unit test")
    for _ in range(2000):
        await router.execute(_enc())
    share = _served(backends)["apc"] / 2000 * 100
    assert 7 <= share <= 13, share


def test_gate_refuses_without_samples_or_with_discrepancies_unless_forced():
    _, control, _, clock = _setup(gate_min_samples=5)
    with pytest.raises(GateRefused, match="fewer than 5"):
        control.set_weight("encrypt", 10, "tester")
    stats = control.stats
    assert stats is not None
    for _ in range(10):
        stats.outcome("encrypt", "candidate", "match", clock(), 0.001, 0.002)
    assert control.set_weight("encrypt", 10, "tester").candidate_percent == 10
    stats.outcome("encrypt", "candidate", "discrepancy", clock(), 0.001, 0.002)
    with pytest.raises(GateRefused, match="1 discrepancies"):
        control.set_weight("encrypt", 20, "tester")
    with pytest.raises(RouteError, match="reason"):
        control.set_weight("encrypt", 20, "tester", force=True)
    assert control.set_weight("encrypt", 20, "tester", force=True, reason="known noise").candidate_percent == 20
    clock.advance(700)  # the discrepancy leaves the window; so do the samples
    with pytest.raises(GateRefused, match="fewer than"):
        control.set_weight("encrypt", 30, "tester")
    assert control.set_weight("encrypt", 0, "tester").candidate_percent == 0  # lowering is never gated


def test_promote_switch_rollback_and_their_state_survive_a_restart(tmp_path: Path):
    _, control, _, _ = _setup(tmp_path)
    route = control.promote("encrypt", "tester")
    assert (route.primary, route.candidate, route.failover) == ("apc", "hsm", ("hsm",))
    assert control.table.route("decrypt").primary == "hsm"  # only that op
    control.switch("apc", "tester")
    assert {r.primary for r in control.table.routes()} == {"apc"}
    with pytest.raises(RouteError):
        control.switch("nope", "tester")
    saved = json.loads((tmp_path / "hsmlb.state.json").read_text())
    assert saved["switch_to"] == "apc" and saved["promoted"] == ["encrypt"]
    _, again, _, _ = _setup(tmp_path)  # a restart reads the state file
    assert {r.primary for r in again.table.routes()} == {"apc"}
    assert again.rollback("tester") == "apc"
    assert again.table.route("encrypt").primary == "apc" and again.table.route("decrypt").primary == "hsm"
    _, third, _, _ = _setup(tmp_path)
    assert third.table.route("encrypt").primary == "apc" and third.table.switch_to is None
    third.promote("encrypt", "tester")  # promoting again flips back
    assert third.table.route("encrypt").primary == "hsm"


def test_switch_without_configured_routes_makes_one():
    table = RouteTable([], ["hsm", "apc"])
    table.switch("apc")
    route = table.route("sign")
    assert route is not None and (route.primary, route.failover) == ("apc", ("hsm",))
    table.rollback()
    assert not table


async def test_failing_candidate_loses_its_weight_and_no_request_fails(tmp_path: Path):
    router, control, backends, _ = _setup(tmp_path, auto_drop_min_requests=5, auto_drop_error_rate=0.5)
    control.set_weight("encrypt", 50, "tester", force=True, reason="unit test")
    for name in ("r1", "r2"):
        backends[name].outcome = NodeFault(f"{name} broke")
    results = [await router.execute(_enc()) for _ in range(200)]  # raises if any request fails
    assert len(results) == 200
    assert control.table.route("encrypt").candidate_percent == 0
    assert control.watch.drops == 1
    assert json.loads((tmp_path / "hsmlb.state.json").read_text())["weights"] == {"encrypt": 0.0}
    calls = _served(backends)["apc"]
    for _ in range(50):
        await router.execute(_enc())
    assert _served(backends)["apc"] == calls  # weight 0: no more candidate traffic


def test_route_config_is_validated():
    with pytest.raises(Exception, match="op"):
        parse_config({"nodes": [{"name": "a", "module": "/x.so", "token_label": "a", "pin_env": "P"}],
                      "routes": [{"op": "encrypt_everything", "primary": "hsm"}]})
    with pytest.raises(Exception, match="candidate"):
        RouteConfig(primary="hsm", shadow_percent=50)
    config = parse_config({"nodes": [{"name": "a", "module": "/x.so", "token_label": "a", "pin_env": "P"},
                                     {"name": "r", "kind": "apc", "region": "us-east-1"}],
                           "routes": [{"primary": "hsm", "failover": ["apc"]}]})
    assert [n.pool for n in config.nodes] == ["hsm", "apc"]


def test_config_check_shows_the_file_routes_and_the_runtime_changes(tmp_path: Path):
    config = tmp_path / "hsmlb.yaml"
    config.write_text("nodes:\n  - {name: t1, module: /x.so, token_label: t1, pin_env: HOME}\n"
                      "  - {name: r1, kind: apc, region: us-east-1}\n"
                      "routes:\n  - {op: '*', primary: hsm, failover: [apc], candidate: apc, shadow_percent: 100}\n")
    (tmp_path / "hsmlb.state.json").write_text(json.dumps(
        {"version": 1, "weights": {"encrypt": 10}, "promoted": ["decrypt"], "switch_to": None}))
    done = subprocess.run([sys.executable, "-m", "hsmlb", "config", "check", str(config)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "route (file) *: primary hsm, failover apc, candidate apc weight 0% shadow 100%" in out
    assert "weights encrypt=10%; promoted decrypt; switched to none" in out
    assert "route (now)  decrypt: primary apc, failover hsm, candidate hsm" in out
    assert "route (now)  encrypt: primary hsm, failover apc, candidate apc weight 10%" in out
