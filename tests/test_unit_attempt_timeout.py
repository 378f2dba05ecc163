"""Per-attempt timeout (issue 10, item 2): the limit follows the node's recent latency within a floor
and a ceiling; an attempt past it fails with NodeFault while its slot stays held; the router retries it
on another node and counts the fault against the slow one."""

from __future__ import annotations

import asyncio

import pytest

from hsmlb.clock import FakeClock
from hsmlb.errors import NodeFault
from hsmlb.health import HealthPolicy, NodeHealth
from hsmlb.limits import LimitsConfig, attempt_timeout
from hsmlb.ops import KeyInfo, Operation, OpKind
from hsmlb.pool import NodePool
from hsmlb.pool.attempt_timeout import AttemptTimeout
from hsmlb.router import LeastOutstanding
from hsmlb.router.breaker import NodeBreaker
from hsmlb.router.cluster import Cluster, Member
from hsmlb.router.router import Router
from tests._scripted import ScriptedBackend
from tests.test_unit_policy import FakeBackend, _op, _settle


def test_the_limit_is_the_floor_until_the_node_has_answered():
    policy = AttemptTimeout(multiplier=10, floor_s=0.25, ceiling_s=2.0)
    assert policy.limit_s(slow=False) == policy.limit_s(slow=True) == 0.25


def test_the_limit_follows_the_node_within_floor_and_ceiling():
    policy = AttemptTimeout(multiplier=10, floor_s=0.25, ceiling_s=2.0, alpha=0.5)
    policy.observe(0.001, slow=False)
    assert policy.limit_s(slow=False) == 0.25  # 10 x 1 ms is under the floor
    policy.observe(0.1, slow=True)
    assert policy.limit_s(slow=True) == pytest.approx(1.0)  # 10 x 100 ms; fast ops keep their own
    assert policy.limit_s(slow=False) == 0.25
    policy.observe(0.5, slow=True)  # EWMA (alpha 0.5): 0.3 s -> 3 s, bounded by the ceiling
    assert policy.limit_s(slow=True) == 2.0


def test_the_config_builds_one_policy_per_node_or_none():
    assert attempt_timeout(LimitsConfig(attempt_timeout_multiplier=0)) is None
    first, second = attempt_timeout(LimitsConfig()), attempt_timeout(LimitsConfig())
    assert first is not None and first is not second and first.limit_s(False) == 0.5
    with pytest.raises(ValueError):
        AttemptTimeout(multiplier=10, floor_s=0.5, ceiling_s=0.1)


async def test_an_overdue_attempt_fails_with_node_fault_and_keeps_its_slot():
    backend = FakeBackend()
    policy = AttemptTimeout(multiplier=10, floor_s=0.02, ceiling_s=0.05)
    pool = NodePool(backend, size=2, queue_limit=8, attempt_timeout=policy)  # the real clock: the timer is real
    hung = pool.perform(_op())
    with pytest.raises(NodeFault, match="no answer within"):
        await asyncio.wait_for(hung, 2)
    assert (policy.timed_out, pool.in_use, pool.stats.ops_failed) == (1, 1, 1)  # the session is still busy
    backend.results[0].set_result(b"late")  # the node answers at last: the slot comes back, nothing else
    await _settle()
    assert pool.in_use == 0 and policy.ewma_s == [0.0, 0.0]  # a timed-out attempt does not teach the EWMA


async def test_answered_attempts_teach_the_limit_and_are_never_failed():
    clock = FakeClock()
    backend = FakeBackend()
    policy = AttemptTimeout(multiplier=10, floor_s=0.02, ceiling_s=5.0)
    pool = NodePool(backend, size=1, queue_limit=8, clock=clock, attempt_timeout=policy)
    first = pool.perform(_op())
    clock.advance(0.01)
    backend.results[0].set_result(b"x")
    assert await first == b"x"
    assert policy.ewma_s[0] == pytest.approx(0.01) and policy.limit_s(False) == pytest.approx(0.1)
    assert policy.timed_out == 0 and not pool._running


async def test_an_overdue_attempt_with_nowhere_to_go_waits_as_before():
    """The router says no other node may take it (the only holder, no attempt or budget left): no timeout."""
    backend = FakeBackend()
    policy = AttemptTimeout(multiplier=10, floor_s=0.01, ceiling_s=0.01)
    pool = NodePool(backend, size=1, queue_limit=8, attempt_timeout=policy)
    asked: list[str] = []
    pool.may_move = lambda op, node: asked.append(node) is not None  # always False
    waiting = pool.perform(_op())
    await asyncio.sleep(0.1)
    assert asked == ["fake"] and not waiting.done() and policy.timed_out == 0
    backend.results[0].set_result(b"x")
    assert await waiting == b"x"


def _key() -> KeyInfo:
    return KeyInfo("alias/k", "alias/k", "AES", "KCV", frozenset({"encrypt", "decrypt"}))


async def test_the_router_moves_a_timed_out_attempt_to_another_node_and_blames_the_slow_one():
    clock = FakeClock()
    slow, quick = ScriptedBackend("slow", [_key()]), ScriptedBackend("quick", [_key()])
    slow.gate = asyncio.Event()  # never set: the slow node does not answer within the test
    policy = AttemptTimeout(multiplier=10, floor_s=0.02, ceiling_s=0.05)
    members = [Member(NodePool(b, size=4, queue_limit=64, attempt_timeout=p),
                      NodeHealth(b.name, HealthPolicy(), clock()),
                      NodeBreaker(b.name, clock, fail_max=5, reset_timeout_s=1.0))
               for b, p in ((slow, policy), (quick, AttemptTimeout(10, 0.02, 0.05)))]
    router = Router(Cluster(members), LeastOutstanding(), clock)
    quick_member = members[1]
    quick_member.pool.load = 1.0  # the balancer tries the slow node first
    op = Operation(OpKind.ENCRYPT, "alias/k", ("ECB", b"", b"\0" * 16))
    result, _ = await asyncio.wait_for(router.execute(op), 2)
    assert result == b"ok" and op.node == "quick" and op.attempts == 2
    assert not router.may_move(op, "quick")  # a second attempt is the last (max_attempts 2)
    assert policy.timed_out == 1 and members[0].retries_from == 1
    assert members[0].health._fault_streak == 1 and members[0].breaker._cb.fail_counter == 1  # outlier score grew
    slow.gate.set()
    await _settle()
