"""Issue 10's bounds as pure policy, with a fake clock: a node queue's wait bound (shed when a slot
frees too late, swept when none frees, refused up front when the estimated wait is over it), the
daemon-wide in-flight bound, the grpc options derived from the descriptor limit, the health
checker's bounded stop, and the descriptor limit raised within the hard limit."""

from __future__ import annotations

import asyncio
import resource

import pytest

from hsmlb.clock import FakeClock
from hsmlb.errors import Overloaded
from hsmlb.health import HealthPolicy, NodeHealth
from hsmlb.health.checker import HealthChecker
from hsmlb.limits import FD_RESERVE, LimitsConfig, connection_cap, grpc_server_options, raise_fd_limit
from hsmlb.ops import CostClass
from hsmlb.pool import NodePool
from hsmlb.pool.overload import InFlightLimit
from tests.test_unit_policy import FakeBackend, _op, _settle


async def test_an_op_that_waited_past_the_bound_is_shed_when_a_slot_frees():
    clock = FakeClock()
    backend = FakeBackend()
    pool = NodePool(backend, size=1, queue_limit=8, max_wait_s=0.02, clock=clock)
    running = pool.perform(_op())
    waiting = pool.perform(_op())
    clock.advance(0.05)  # longer than the bound: when the slot frees, the waiter is shed, not started
    backend.results[0].set_result(b"x")
    assert await running == b"x"
    with pytest.raises(Overloaded, match="no session within"):
        await waiting
    assert (len(backend.calls), pool.queued, pool.in_use, pool.shed, pool.load) == (1, 0, 0, 1, 0)


async def test_a_waiter_within_the_bound_starts_on_the_freed_slot():
    clock = FakeClock()
    backend = FakeBackend()
    pool = NodePool(backend, size=1, queue_limit=8, max_wait_s=0.02, clock=clock)
    pool.perform(_op())
    waiting = pool.perform(_op())
    clock.advance(0.01)
    backend.results[0].set_result(b"x")
    await asyncio.sleep(0)
    assert len(backend.calls) == 2 and pool.shed == 0
    backend.results[1].set_result(b"y")
    assert await waiting == b"y"


async def test_the_queue_is_swept_when_no_slot_ever_frees():
    """A node that stopped answering frees no slot: its waiters are shed by the pool's timer."""
    backend = FakeBackend()
    pool = NodePool(backend, size=1, queue_limit=8, max_wait_s=0.02)  # the real clock: the timer is real
    pool.perform(_op())
    waiting = [pool.perform(_op()) for _ in range(3)]
    results = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 2)
    assert all(isinstance(r, Overloaded) for r in results)
    assert (pool.queued, pool.shed, pool.in_use) == (0, 3, 1)


async def test_slow_ops_may_wait_longer_than_fast_ones():
    """An RSA signature queued behind others is not shed at the symmetric bound (it costs ~25 of them)."""
    clock = FakeClock()
    backend = FakeBackend()
    pool = NodePool(backend, size=2, queue_limit=8, max_wait_s=0.02, clock=clock)
    pool.perform(_op())
    pool.perform(_op())
    slow = pool.perform(_rsa())
    fast = pool.perform(_op())
    clock.advance(0.1)  # past the fast bound, within the slow one
    backend.results[0].set_result(b"x")
    await _settle()
    with pytest.raises(Overloaded):
        await fast
    assert len(backend.calls) == 3 and backend.calls[2][0].cost.name == "RSA" and not slow.done()
    backend.results[2].set_result(b"sig")
    assert await slow == b"sig"


def _rsa():
    from hsmlb.ops import Operation, OpKind

    op = Operation(OpKind.SIGN, "alias/rsa", (b"m",))
    op.cost = CostClass.RSA
    return op


def test_in_flight_limit_admits_up_to_its_bound_and_counts_the_rest():
    limit = InFlightLimit(2)
    assert limit.enter() and limit.enter()
    assert not limit.enter() and limit.shed == 1
    limit.leave()
    assert limit.enter() and limit.in_flight == 2


def test_connection_cap_leaves_descriptors_for_the_daemon():
    limits = LimitsConfig()
    assert connection_cap(limits, 1024) == 1024 - FD_RESERVE
    assert connection_cap(limits, 1 << 20) == limits.max_connections
    options = dict(grpc_server_options(LimitsConfig(idle_timeout_s=2.5), 1024))
    assert options["grpc.max_connection_idle_ms"] == 2500
    assert options["grpc.max_allowed_incoming_connections"] == 1024 - FD_RESERVE
    assert options["grpc.server.max_pending_requests"] == options["grpc.server.max_pending_requests_hard_limit"]


def test_fd_limit_is_raised_to_the_hard_limit_never_beyond():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        raised = raise_fd_limit()
        assert raised == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert raised == hard or hard == resource.RLIM_INFINITY
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_health_checker_close_is_bounded_even_with_a_probe_that_never_ends():
    """close() stops the loops by an event and gives up on a stuck one after its timeout."""
    never = asyncio.Event()

    async def stuck_probe() -> None:
        await never.wait()

    checker = HealthChecker(interval_s=0.01, jitter_s=0.0, timeout_s=30.0, clock=FakeClock())
    checker.watch(NodeHealth("n", HealthPolicy(), 0.0), stuck_probe, lambda: None)
    await asyncio.sleep(0.05)  # the probe is in flight, and will not end for 30 s
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(checker.close(timeout_s=0.2), 5)
    assert loop.time() - started < 2


async def test_health_checker_loops_stop_on_the_event_between_checks():
    calls = 0

    async def probe() -> None:
        nonlocal calls
        calls += 1

    checker = HealthChecker(interval_s=0.01, jitter_s=0.0, timeout_s=1.0, clock=FakeClock())
    checker.watch(NodeHealth("n", HealthPolicy(), 0.0), probe, lambda: None)
    await asyncio.sleep(0.1)
    await asyncio.wait_for(checker.close(timeout_s=1.0), 2)
    seen = calls
    await asyncio.sleep(0.05)
    assert seen > 0 and calls == seen


def test_a_failed_respawn_says_what_really_failed(tmp_path):
    """A full descriptor table is reported as such, not as a PIN problem."""
    import errno

    from hsmlb.backends.pkcs11 import _why
    from hsmlb.config import ConfigError, PinSource

    assert _why(OSError(errno.EMFILE, "Too many open files")) == "OSError: Too many open files (EMFILE)"
    with pytest.raises(ConfigError, match="Is a directory"):
        PinSource(pin_file=tmp_path).read_pin()
