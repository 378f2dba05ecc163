"""Health, breaker, retry budget and key-affinity policy, driven by a fake clock and fake nodes."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from hsmlb.clock import FakeClock
from hsmlb.health import HealthPolicy, NodeHealth
from hsmlb.router import KeyAffinity, NodeBreaker, RetryBudget
from hsmlb.router.retry import backoff_s

POLICY = HealthPolicy(unhealthy_threshold=2, healthy_threshold=3, consecutive_faults=5, failure_rate=0.5,
                      failure_rate_min_requests=20, window_s=10, base_ejection_s=1, max_ejection_s=8, slow_start_s=4)


def test_consecutive_faults_eject_with_exponential_backoff_and_checked_readmission():
    clock = FakeClock()
    health = NodeHealth("n", POLICY, clock())
    assert [health.record_result(True, clock()) for _ in range(5)] == [False] * 4 + [True]
    assert not health.routable(clock()) and health.ejected_until == clock() + 1
    clock.advance(1.5)
    assert not health.routable(clock())  # time served, but no healthy checks yet
    for _ in range(3):
        health.record_check(True, clock())
    assert health.routable(clock()) and health.describe(clock()) == "healthy (slow start)"
    for _ in range(5):
        health.record_result(True, clock())
    assert health.ejected_until == clock() + 2  # second ejection: twice as long


def test_backoff_is_capped_and_resets_after_a_stable_period():
    clock = FakeClock()
    health = NodeHealth("n", POLICY, clock())
    for expected in (1, 2, 4, 8, 8):
        for _ in range(5):
            health.record_result(True, clock())
        assert health.ejected_until == pytest.approx(clock() + expected)
        clock.advance(expected)
        for _ in range(3):
            health.record_check(True, clock())
        assert health.routable(clock())
    clock.advance(POLICY.max_ejection_s + 1)
    for _ in range(5):
        health.record_result(True, clock())
    assert health.ejected_until == pytest.approx(clock() + 1)


def test_failure_rate_ejects_but_successes_break_the_streak():
    clock = FakeClock()
    health = NodeHealth("n", POLICY, clock())
    ejected = False
    for i in range(30):
        ejected = health.record_result(i % 3 != 0, clock()) or ejected  # 2 of 3 fail, never 5 in a row
        clock.advance(0.01)
    assert ejected and "failure rate" in health.last_reason


def test_caller_errors_never_count_and_cap_or_observe_only_block_ejection():
    clock = FakeClock()
    health = NodeHealth("n", POLICY, clock())
    for _ in range(50):
        assert not health.record_result(False, clock())
    for _ in range(10):
        assert not health.record_result(True, clock(), may_eject=False)
    assert health.routable(clock()) and health.would_eject > 0 and "ejection cap" in health.last_reason
    observing = NodeHealth("o", HealthPolicy(observe_only=True), clock())
    for _ in range(10):
        observing.record_result(True, clock())
    assert observing.routable(clock()) and "observe only" in observing.last_reason


def test_active_checks_mark_unhealthy_and_healthy_by_thresholds():
    clock = FakeClock()
    health = NodeHealth("n", POLICY, clock())
    health.record_check(False, clock())
    assert health.routable(clock())
    health.record_check(False, clock())
    assert not health.routable(clock()) and health.describe(clock()) == "unhealthy"
    health.record_check(True, clock())
    health.record_check(True, clock())
    assert not health.routable(clock())
    health.record_check(True, clock())
    assert health.routable(clock())


def test_operator_drills_and_slow_start_ramp():
    clock = FakeClock()
    health = NodeHealth("n", POLICY, clock())
    health.set_operator("failed", "alice@ops", clock())
    assert not health.routable(clock()) and health.describe(clock()) == "failed by operator (alice@ops)"
    health.set_operator("draining", "alice@ops", clock())
    assert not health.routable(clock()) and health.describe(clock()) == "draining"
    health.set_operator("active", "alice@ops", clock())
    assert health.routable(clock()) and health.weight(clock()) == pytest.approx(0.1)
    clock.advance(2)
    assert health.weight(clock()) == pytest.approx(0.55)
    clock.advance(2)
    assert health.weight(clock()) == 1.0 and health.describe(clock()) == "healthy"


def test_breaker_opens_then_admits_one_probe_after_timeout():
    clock = FakeClock()
    breaker = NodeBreaker("n", clock, fail_max=3, reset_timeout_s=2)
    changes: list[tuple[str, str]] = []
    breaker.on_change.append(lambda name, old, new: changes.append((old, new)))
    for _ in range(3):
        assert breaker.allows()
        breaker.record(node_fault=True)
    assert breaker.state == "open" and not breaker.allows()
    clock.advance(2.1)
    assert breaker.allows() and breaker.state == "half-open"
    assert not breaker.allows()  # a single probe at a time
    breaker.record(node_fault=True)
    assert breaker.state == "open" and not breaker.allows()
    clock.advance(2.1)
    assert breaker.allows()
    breaker.record(node_fault=False)
    assert breaker.state == "closed" and breaker.allows()
    assert changes[0] == ("closed", "open") and changes[-1] == ("half-open", "closed")


def test_retry_budget_ratio_and_floor():
    budget = RetryBudget(ratio=0.2, min_per_s=0.5, window_s=10)
    now = 100.0
    for _ in range(100):
        budget.record_request(now)
    granted = sum(budget.try_withdraw(now) for _ in range(100))
    assert granted == 25  # 20% of 100 plus the floor of 0.5/s over 10 s
    assert budget.refused == 75
    now += 11  # the window has passed: only the floor remains
    assert sum(budget.try_withdraw(now) for _ in range(10)) == 5


def test_backoff_is_jittered_and_bounded():
    rng = random.Random(5)
    samples = [backoff_s(attempt, 0.001, 0.02, rng) for attempt in (1, 2, 3, 10) for _ in range(200)]
    assert max(samples) <= 0.02 and min(samples) >= 0 and len(set(samples)) > 100


def test_key_affinity_is_sticky_bounded_and_stable():
    balancer = KeyAffinity(balance_factor=1.5)
    nodes = ["a", "b", "c"]
    loads = dict.fromkeys(nodes, 0.0)
    homes = {f"alias/k{i}": balancer.choose(nodes, loads.__getitem__, str, f"alias/k{i}", 1.0) for i in range(300)}
    assert all(balancer.choose(nodes, loads.__getitem__, str, k, 1.0) == h for k, h in homes.items())
    spread = Counter(homes.values())
    assert all(50 < spread[n] < 150 for n in nodes), spread  # keys spread over the ring
    key, home = next(iter(homes.items()))
    loads[home] = 10.0  # saturated home: spill to the next node on the ring
    spilled = balancer.choose(nodes, loads.__getitem__, str, key, 1.0)
    assert spilled != home and spilled == balancer.ring_order(key)[1]
    loads[home] = 0.0
    survivors = [n for n in nodes if n != "c"]  # removing c moves only c's keys
    moved = [k for k, h in homes.items() if h != "c" and balancer.choose(survivors, loads.__getitem__, str, k, 1) != h]
    assert moved == []
