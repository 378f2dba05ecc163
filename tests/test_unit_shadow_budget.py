"""The shadow budget as pure policy (a fake clock, plain values), and the shadower counting what it skips
as `budget`, apart from `no_capability`."""

from __future__ import annotations

import asyncio

import pytest

from hsmlb.clock import FakeClock
from hsmlb.ops import NATIVE_CAPABILITIES, Capability, Operation, OpKind
from hsmlb.shadow.budget import LoopLagProbe, ShadowBudget
from tests.test_unit_routes import _enc, _setup
from tests.test_unit_shadow import SHADOW, _settle


def test_the_bucket_lets_through_its_rate_and_no_more():
    clock = FakeClock()
    budget = ShadowBudget(clock, max_per_s=100, burst_s=0.05)  # 5 at once, then 100/s
    taken = 0
    while budget.ready("apc"):
        budget.take("apc")
        taken += 1
        assert taken <= 5
    assert taken == 5
    clock.advance(0.011)  # one more token (and a tenth)
    assert budget.ready("apc")
    budget.take("apc")
    assert not budget.ready("apc")
    clock.advance(10.0)  # a long quiet spell refills the burst, not ten seconds' worth
    assert sum(budget.ready("apc") and (budget.take("apc") or True) for _ in range(20)) == 5


def test_calls_in_flight_are_bounded_per_candidate_pool():
    clock = FakeClock()
    budget = ShadowBudget(clock, in_flight_per_candidate=2)
    for _ in range(2):
        assert budget.ready("apc")
        budget.take("apc")
    assert not budget.ready("apc")
    assert budget.ready("other")  # another candidate has its own room
    budget.release("apc")
    assert budget.ready("apc")


def test_lag_or_a_backlog_cuts_the_rate_to_its_floor_and_quiet_grows_it_back_to_its_ceiling():
    clock = FakeClock()
    budget = ShadowBudget(clock, max_per_s=1000, min_per_s=5, lag_high_s=0.004, increase=1.2)
    assert budget.rate == 1000  # an idle daemon shadows everything from the first request
    budget.observe(0.010)
    assert budget.rate == 1000 and budget.cuts == 0  # one busy probe alone holds the rate
    budget.observe(0.0)
    budget.observe(0.010)
    assert budget.rate == 1000  # busy, quiet, busy: never two in a row
    budget.observe(0.0, backlog=True)  # lag, then a backlog: two in a row
    assert budget.rate == 500 and budget.cuts == 1 and budget.backlogs == 1
    budget.observe(0.010)
    assert budget.rate == 250
    for _ in range(20):
        budget.observe(0.050)
    assert budget.rate == 5 and budget.cuts == 8  # at the floor, further probes are no new cuts
    budget.observe(0.003)  # under the threshold: grow
    assert budget.rate == 7
    for _ in range(10):
        budget.observe(0.0005)
    assert 5 < budget.rate < 1000
    budget.observe(0.0, quiet_probes=60)  # the first probe after three idle seconds
    assert budget.rate == 1000


def test_a_cut_starts_from_the_calls_actually_made_not_the_ceiling():
    clock = FakeClock()
    budget = ShadowBudget(clock, max_per_s=2000, min_per_s=5)
    budget.observe(0.0, backlog=True)  # the first busy probe holds
    for _ in range(20):  # 20 calls in 50 ms: 400/s used, far under the 2000/s allowed
        budget.take("apc")
    clock.advance(0.05)
    budget.observe(0.0, backlog=True)
    assert budget.rate == pytest.approx(200)


def test_a_fixed_budget_ignores_load():
    budget = ShadowBudget(FakeClock(), max_per_s=300, adaptive=False)
    budget.observe(1.0, backlog=True)
    assert budget.rate == 300 and budget.cuts == 0


async def test_the_probe_reports_a_late_timer_and_stops_when_shadowing_stops():
    seen: list[tuple[float, bool, int]] = []
    probe = LoopLagProbe(lambda lag, backlog, quiet: seen.append((lag, backlog, quiet)), lambda: True,
                         interval_s=0.001)
    probe.poke()
    await asyncio.sleep(0.02)
    assert len(seen) == 1  # one probe after the poke, none after it (no poke since): an idle daemon has no timer
    assert seen[0][0] >= 0 and seen[0][1] is True
    probe.poke()  # an idle spell counts as the quiet probes it would have made, at once
    assert len(seen) == 2 and seen[1][1:] == (False, seen[1][2]) and seen[1][2] >= 10
    await asyncio.sleep(0.01)
    assert len(seen) == 3 and seen[2][2] >= 1
    probe.poke()
    probe.close()
    await asyncio.sleep(0.01)
    assert len(seen) == 4  # the poke's idle spell, then no timer after close


async def test_skips_for_the_budget_are_counted_apart_from_missing_capabilities():
    router, _, backends, _ = _setup(route=SHADOW)
    for name in ("r1", "r2"):
        backends[name].capabilities = NATIVE_CAPABILITIES - {Capability.RANDOM}
    shadow = router.shadow
    assert shadow is not None
    shadow.budget = budget = ShadowBudget(shadow.clock, max_per_s=100, burst_s=0.03, adaptive=False)
    for _ in range(10):  # the fake clock stands still: three tokens, then nothing
        await router.execute(_enc())
    await router.execute(Operation(OpKind.RANDOM, None, (8,)))  # with the bucket empty: still "no capability"
    await _settle()
    stats = shadow.stats.of("encrypt")
    assert (stats.matches, stats.skipped) == (3, {"budget": 7})
    assert shadow.stats.of("random").skipped == {"no_capability": 1}
    assert budget.in_flight == {"apc": 0}
    report = {(r["op"], r["side"]): r for r in shadow.stats.report()}
    assert report[("encrypt", "candidate")]["skipped"] == {"budget": 7}
