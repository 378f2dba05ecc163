"""Failover against real SoftHSM2 tokens and a real daemon on loopback: a token that really fails
under load (its directory moved away and its library finalized), the last holder of a key, every
node down, and the retry budget.

Timings printed here are measurements on a shared 2-core machine; the only timing asserted is
bounds (ejection within 1 s, UNAVAILABLE within 50 ms median), not benchmarks.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests._routing_helpers import (
    DEK,
    NODES,
    ONLY_A,
    delta,
    encrypt_request,
    inject,
    nodes,
    not_routable,
    router_daemon,
    run_load,
    set_state,
    token_dirs,
    wait_state,
)
from tests.conftest import Cluster, DaemonProcess

EJECTION_BOUND_S = 1.0
READMISSION_BOUND_S = 15.0
LOAD_MAX_S = 20.0
LAST_HOLDER_S = 5.0
BUDGET_N = 1000
BUDGET_RATIO = 0.1
BUDGET_MIN_PER_S = 0.1
BUDGET_WINDOW_S = 10.0
NEVER = 1_000_000  # outlier ejection, breaker and active checks effectively off
BUDGET_ROUTER = {
    "retry": {"budget_ratio": BUDGET_RATIO, "min_retries_per_s": BUDGET_MIN_PER_S, "window_s": BUDGET_WINDOW_S},
    "outlier": {"consecutive_node_faults": NEVER, "failure_rate": 1.0, "failure_rate_min_requests": NEVER},
    "breaker": {"fail_max": NEVER},
    # error_rate also fails the canaries; without this node-b would go unhealthy and get no traffic
    "health_check": {"unhealthy_threshold": NEVER},
}


@pytest.fixture
def budget_daemon(cluster: Cluster, tmp_path: Path) -> Iterator[DaemonProcess]:
    with router_daemon(cluster, tmp_path, BUDGET_ROUTER) as proc:
        yield proc


async def _timed_calls(stub: pb_grpc.OperationsStub, count: int, key: str) -> tuple[list[float], Counter[str]]:
    latencies: list[float] = []
    codes: Counter[str] = Counter()
    for _ in range(count):
        started = time.monotonic()
        try:
            await stub.EncryptData(encrypt_request(key), timeout=5)
            codes["OK"] += 1
        except grpc.aio.AioRpcError as exc:
            codes[exc.code().name] += 1
        latencies.append(time.monotonic() - started)
    return latencies, codes


async def _clear_fault(admin: pb_grpc.AdminStub, node: str, fault: str) -> bool:
    """Set `fault` back to 0; bounded retries, as the reset itself may be hit by error_rate (see below)."""
    for _ in range(20):
        try:
            await inject(admin, node, fault, 0.0)
            return True
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.01)
    return False


# -- 4. a token that really fails under load --------------------------------------------------------
async def test_real_token_failure_under_load_ejects_fast_and_fails_no_request(
        cluster: Cluster, fresh_daemon: DaemonProcess) -> None:
    address = fresh_daemon.address
    stop = asyncio.Event()
    with token_dirs(cluster, ("node-b",)) as dirs:
        async with grpc.aio.insecure_channel(address) as channel:
            admin = pb_grpc.AdminStub(channel)
            load = asyncio.ensure_future(run_load(address, 10**6, concurrency=16, max_s=LOAD_MAX_S, stop=stop))
            try:
                await asyncio.sleep(1.0)
                assert not load.done(), load
                dirs.away()
                failed_at = time.monotonic()
                try:
                    await inject(admin, "node-b", "finalize")
                    finalized = "finalized"
                except grpc.aio.AioRpcError as exc:  # live traffic found the token gone and recovery failed
                    finalized = f"already failed ({exc.details()})"
                ejected_at, at_ejection = await wait_state(
                    admin, "node-b", lambda s: s.state.startswith(("ejected", "unhealthy")), timeout_s=5.0)
                await asyncio.sleep(1.0)  # keep failing a while under load
                down = (await nodes(admin))["node-b"]

                dirs.back()
                back_at = time.monotonic()
                readmitted_at, readmitted = await wait_state(
                    admin, "node-b", lambda s: s.state.startswith("healthy") and s.ops_ok > down.ops_ok,
                    timeout_s=READMISSION_BOUND_S, step_s=0.05)
                await asyncio.sleep(0.5)
            finally:
                stop.set()
                result = await load
            final = await nodes(admin)

    ejection_s = None if ejected_at is None else ejected_at - failed_at
    readmission_s = None if readmitted_at is None else readmitted_at - back_at
    print(f"\nreal failure of node-b (directory moved away, then {finalized}): {at_ejection.state!r} after "
          f"{ejection_s if ejection_s is None else f'{ejection_s * 1000:.0f} ms'}; readmitted "
          f"({readmitted.state!r}, weight {readmitted.weight:.2f}) "
          f"{readmission_s if readmission_s is None else f'{readmission_s:.2f} s'} after its directory came back; "
          f"load: {result.ok} ok, {dict(result.errors)}; node-b retries_from {final['node-b'].retries_from}, "
          f"ops_failed {final['node-b'].ops_failed}")
    assert ejection_s is not None and ejection_s < EJECTION_BOUND_S, f"not ejected within 1 s: {at_ejection.state}"
    assert down.ops_failed > 0 and down.retries_from > 0, "node-b's faults were not seen and retried"
    assert result.errors == Counter(), f"client requests failed although 2 holders were serving: {result.errors}"
    assert result.ok > 1000, f"only {result.ok} requests in the load"
    assert readmission_s is not None, f"not readmitted within {READMISSION_BOUND_S} s: {readmitted.state}"
    assert final["node-b"].ops_ok > down.ops_ok
    assert all(final[n].backend_state == "up" for n in NODES)


# -- 5. the last holder of a key --------------------------------------------------------------------
@dataclass
class LastHolderRun:
    only_a: Counter[str] = field(default_factory=Counter)  # alias/only-node-a outcomes
    dek_failed: int = 0
    guarded_requests: int = 0  # alias/dek-aes256 requests sent while node-a was out of rotation
    guarded_node_a: int = 0  # ... of which reached node-a
    seconds: float = 0.0
    status: pb.NodeStatus | None = None

    @property
    def served(self) -> float:
        return self.only_a["OK"] / max(1, self.only_a.total())


async def _last_holder_run(address: str, seconds: float = LAST_HOLDER_S) -> LastHolderRun:
    """Sequential alias/only-node-a requests with node-a failing 30% of ops; between them, batches of
    alias/dek-aes256 bracketed by two ListNodes, counted when node-a was out of rotation at both ends."""
    run = LastHolderRun()
    async with grpc.aio.insecure_channel(address) as channel:
        admin, stub = pb_grpc.AdminStub(channel), pb_grpc.OperationsStub(channel)
        await inject(admin, "node-a", "error_rate", 0.3)
        started = time.monotonic()
        try:
            for _ in range(5000):
                if time.monotonic() - started > seconds:
                    break
                _, codes = await _timed_calls(stub, 10, ONLY_A)
                run.only_a.update(codes)
                before = (await nodes(admin))["node-a"]
                _, dek = await _timed_calls(stub, 10, DEK)
                after = (await nodes(admin))["node-a"]
                run.dek_failed += dek.total() - dek["OK"]
                if not_routable(before.state) and not_routable(after.state):
                    run.guarded_requests += 10
                    run.guarded_node_a += (after.ops_ok + after.ops_failed) - (before.ops_ok + before.ops_failed)
            run.seconds = time.monotonic() - started
            run.status = (await nodes(admin))["node-a"]
        finally:
            assert await _clear_fault(admin, "node-a", "error_rate")
    s = run.status
    print(f"\nlast holder node-a at error_rate 0.3 for {run.seconds:.1f} s: {ONLY_A} "
          f"{', '.join(f'{c} {n}' for c, n in run.only_a.most_common())} (served {run.served:.0%}); panic_routes "
          f"{s.panic_routes}, ejections {s.ejections}, breaker {s.breaker}; {run.guarded_requests} {DEK} requests "
          f"sent while node-a was out of rotation reached it {run.guarded_node_a} times")
    return run


async def test_traffic_avoids_an_out_of_rotation_node_whose_only_key_is_panic_routed(
        fresh_daemon: DaemonProcess) -> None:
    run = await _last_holder_run(fresh_daemon.address)
    assert run.status is not None
    assert set(run.only_a) <= {"OK", "UNAVAILABLE"}, run.only_a
    assert run.only_a["OK"] > 0, f"{ONLY_A} was not served at all"
    # Out of rotation by failed checks or by ejection, whichever comes first: both are random at 30%.
    assert run.status.panic_routes > 0, "node-a was never out of rotation, so nothing was panic-routed"
    assert run.dek_failed == 0, f"{DEK} has two other holders: no request of it may fail"
    assert run.guarded_requests >= 100, "node-a was too seldom out of rotation to check that others avoid it"
    assert run.guarded_node_a == 0, f"{DEK} traffic reached node-a while it was out of rotation"


async def test_last_holder_keeps_serving_most_requests_at_30pct_errors(fresh_daemon: DaemonProcess) -> None:
    """Only node-a holds the key, so a failed attempt cannot be retried elsewhere: ~30% UNAVAILABLE is
    expected, more is not. (Measured: 2-14% served with the bug; 70% with the breaker configured off.)"""
    async with grpc.aio.insecure_channel(fresh_daemon.address) as channel:
        admin = pb_grpc.AdminStub(channel)
        await inject(admin, "node-a", "error_rate", 0.3)
        try:
            load = await run_load(fresh_daemon.address, 10**6, concurrency=8, key=ONLY_A, max_s=LAST_HOLDER_S)
            status = (await nodes(admin))["node-a"]
        finally:
            assert await _clear_fault(admin, "node-a", "error_rate")
    served = load.ok / max(1, load.total)
    print(f"\nlast holder under load: {ONLY_A} {load.ok} ok, {dict(load.errors)} (served {served:.0%}); "
          f"panic_routes {status.panic_routes}, ejections {status.ejections}, breaker {status.breaker}")
    assert set(load.errors) <= {"UNAVAILABLE"}, load.errors
    assert status.panic_routes > 0, status  # it went out of rotation (checks or ejection) yet kept serving
    assert served >= 0.5, f"the last holder served only {served:.0%} of {ONLY_A}: {load.errors}"


# -- 6. every node down -----------------------------------------------------------------------------
async def test_every_node_down_answers_unavailable_fast_and_recovers(
        cluster: Cluster, fresh_daemon: DaemonProcess) -> None:
    """The 50 ms / 200 ms figures are bounds on failing fast, not a benchmark."""
    key = "alias/zek-aes128"  # held by all four nodes
    async with grpc.aio.insecure_channel(fresh_daemon.address) as channel:
        admin, stub = pb_grpc.AdminStub(channel), pb_grpc.OperationsStub(channel)
        for node in NODES:
            await set_state(admin, node, pb.FAIL)
        drill_latencies, drill_codes = await _timed_calls(stub, 20, key)
        for node in NODES:
            await set_state(admin, node, pb.RESTORE)
        _, healthy_codes = await _timed_calls(stub, 5, key)

        with token_dirs(cluster, NODES) as dirs:
            dirs.away()
            for node in NODES:
                await inject(admin, node, "kill_worker")
            all_down = True
            for node in NODES:
                at, _ = await wait_state(admin, node, lambda s: s.backend_state == "down", timeout_s=10)
                all_down = all_down and at is not None
            dead_latencies, dead_codes = await _timed_calls(stub, 20, key)
            await asyncio.sleep(1.0)  # a few failed respawns while the tokens are missing
            dirs.back()
            back_at = time.monotonic()
            for node in NODES:
                await set_state(admin, node, pb.RESTORE)
            recovered_at = None
            while recovered_at is None and time.monotonic() - back_at < 20:
                _, codes = await _timed_calls(stub, 1, key)
                recovered_at = time.monotonic() if codes["OK"] else None
                await asyncio.sleep(0.1)
        all_up = recovered_at is not None
        for node in NODES if all_up else ():
            at, _ = await wait_state(admin, node, lambda s: s.backend_state == "up", timeout_s=20, step_s=0.1)
            all_up = all_up and at is not None
        final = await nodes(admin)

    for name, latencies in (("drill", drill_latencies), ("workers dead", dead_latencies)):
        print(f"\nall down ({name}): UNAVAILABLE median {statistics.median(latencies) * 1000:.1f} ms, "
              f"max {max(latencies) * 1000:.1f} ms")
    print(f"recovered {recovered_at - back_at:.2f} s after the token directories came back; "
          f"states {[(n, s.backend_state, s.state) for n, s in final.items()]}" if recovered_at else "no recovery")
    assert drill_codes == Counter(UNAVAILABLE=20), drill_codes
    assert statistics.median(drill_latencies) < 0.05 and max(drill_latencies) < 0.2, drill_latencies
    assert healthy_codes == Counter(OK=5), healthy_codes
    assert all_down, "kill_worker with the tokens gone did not leave every node down"
    assert dead_codes == Counter(UNAVAILABLE=20), dead_codes
    assert statistics.median(dead_latencies) < 0.05 and max(dead_latencies) < 0.2, dead_latencies
    assert recovered_at is not None, "the daemon did not serve again within 20 s of the tokens coming back"
    assert all_up, f"not every worker came back: {[(n, s.backend_state, s.state) for n, s in final.items()]}"


# -- 7. the retry budget ----------------------------------------------------------------------------
async def test_retry_budget_bounds_retries_and_failures_show(budget_daemon: DaemonProcess) -> None:
    async with grpc.aio.insecure_channel(budget_daemon.address) as channel:
        admin = pb_grpc.AdminStub(channel)
        await inject(admin, "node-b", "error_rate", 1.0)
        try:
            before = await nodes(admin)
            started = time.monotonic()
            load = await run_load(budget_daemon.address, BUDGET_N, concurrency=4)
            took = time.monotonic() - started
            router = await admin.GetRouterStatus(pb.GetRouterStatusRequest(), timeout=5)
            after = await nodes(admin)
        finally:
            # Reset the injected fault;
            # the daemon is the test's own and is stopped next.
            await _clear_fault(admin, "node-b", "error_rate")

    attempts_b = after["node-b"].ops_failed - before["node-b"].ops_failed
    retried = after["node-b"].retries_from - before["node-b"].retries_from
    bound = BUDGET_RATIO * BUDGET_N + BUDGET_MIN_PER_S * BUDGET_WINDOW_S
    print(f"\nbudget: {BUDGET_N} requests in {took:.1f} s; node-b (error_rate 1.0) got {attempts_b}: {retried} "
          f"retried elsewhere, {load.failed} failed ({dict(load.errors)}); retries_in_window "
          f"{router.retries_in_window} (bound {bound:.0f}), retries_refused {router.retries_refused}; "
          f"ok per node {delta({n: s.ops_ok for n, s in before.items()}, {n: s.ops_ok for n, s in after.items()})}")
    assert load.total == BUDGET_N
    assert router.retries_in_window <= bound + 3, router
    assert router.retries_refused > 0, router
    assert set(load.errors) <= {"UNAVAILABLE"}, load.errors
    assert load.failed > 0, "node-b failed every request, so some must show once the budget is spent"
    assert load.failed == router.retries_refused, "each refused retry is one failed request, nothing hidden"
    assert attempts_b == retried + load.failed, "every request that reached node-b was retried or failed"
    assert after["node-b"].ops_ok == before["node-b"].ops_ok



async def test_error_rate_fault_can_be_cleared(fresh_daemon: DaemonProcess) -> None:
    async with grpc.aio.insecure_channel(fresh_daemon.address) as channel:
        admin = pb_grpc.AdminStub(channel)
        await inject(admin, "node-b", "error_rate", 1.0)
        await inject(admin, "node-b", "error_rate", 0.0)
