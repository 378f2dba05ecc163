"""Routing against real SoftHSM2 tokens and a real daemon on loopback: least-outstanding spread,
key affinity (home node, spill, single holder) and operator drills (FAIL, RESTORE, DRAIN, CLI).

Shares are measured with each node's ops_ok before and after a run; health checks do not go
through the pools, so they never show in ops_ok.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests._routing_helpers import (
    DEK,
    ONLY_A,
    PRIMARY,
    delta,
    encrypt_request,
    inject,
    nodes,
    ops_ok,
    router_daemon,
    run_load,
    set_state,
)
from tests.conftest import Cluster, DaemonProcess

AFFINITY_KEYS = (DEK, "alias/dek-tdes2", "alias/dek-tdes3", "alias/zek-aes128")


@pytest.fixture
def affinity_daemon(cluster: Cluster, tmp_path: Path) -> Iterator[DaemonProcess]:
    with router_daemon(cluster, tmp_path, {"balancer": "key_affinity"}) as proc:
        yield proc


def _shares(counts: dict[str, int]) -> dict[str, float]:
    total = sum(counts.values()) or 1
    return {name: round(n / total, 3) for name, n in counts.items()}


# -- 1. spread --------------------------------------------------------------------------------------
async def test_least_outstanding_spreads_evenly_and_sheds_a_slow_node(fresh_daemon: DaemonProcess) -> None:
    async with grpc.aio.insecure_channel(fresh_daemon.address) as channel:
        admin = pb_grpc.AdminStub(channel)
        before = await ops_ok(admin)
        load = await run_load(fresh_daemon.address, 3000, concurrency=16)
        even = delta(before, await ops_ok(admin))
        assert load.ok == 3000, load.errors
        assert even["node-d"] == 0, "node-d does not hold alias/dek-aes256"
        assert sum(even.values()) == 3000
        print(f"\nspread, uniform load: {even} shares {_shares(even)}")
        assert max(even.values()) <= 0.45 * 3000, f"one node took more than 45%: {even}"

        await inject(admin, "node-b", "delay", 0.005)
        try:
            before = await ops_ok(admin)
            load = await run_load(fresh_daemon.address, 3000, concurrency=16)
            slow = delta(before, await ops_ok(admin))
        finally:
            await inject(admin, "node-b", "delay", 0.0)
        assert load.ok == 3000, load.errors
        others = statistics.mean([slow["node-a"], slow["node-c"]])
        print(f"spread, node-b +5 ms/op: {slow} shares {_shares(slow)}; node-b / mean(a, c) = "
              f"{slow['node-b'] / others:.2f}")
        assert slow["node-b"] < 0.7 * others, f"the slow node was not shed: {slow}"


# -- 2. key affinity --------------------------------------------------------------------------------
async def test_key_affinity_sends_each_key_home_and_spills_when_home_is_slow(affinity_daemon: DaemonProcess) -> None:
    address = affinity_daemon.address
    async with grpc.aio.insecure_channel(address) as channel:
        admin = pb_grpc.AdminStub(channel)
        homes: dict[str, str] = {}
        for key in AFFINITY_KEYS:
            before = await ops_ok(admin)
            load = await run_load(address, 200, concurrency=1, key=key)
            counts = delta(before, await ops_ok(admin))
            assert load.ok == 200, (key, load.errors)
            home = max(counts, key=counts.__getitem__)
            homes[key] = home
            print(f"\naffinity {key}: sequential {counts}")
            assert counts[home] >= 0.95 * 200, f"{key}: no home node took 95%: {counts}"

        home = homes[DEK]
        await inject(admin, home, "delay", 0.01)
        try:
            before = await ops_ok(admin)
            load = await run_load(address, 600, concurrency=16, key=DEK)
            spill = delta(before, await ops_ok(admin))
        finally:
            await inject(admin, home, "delay", 0.0)
        assert load.ok == 600, load.errors
        elsewhere = sum(n for name, n in spill.items() if name != home)
        print(f"affinity {DEK}: home {home} slowed by 10 ms/op, concurrency 16: {spill}")
        assert elsewhere >= 0.3 * 600, f"no spill off the slow home {home}: {spill}"
        assert spill["node-d"] == 0, "node-d does not hold alias/dek-aes256"


async def test_key_affinity_single_holder_key_never_leaves_its_node(affinity_daemon: DaemonProcess) -> None:
    async with grpc.aio.insecure_channel(affinity_daemon.address) as channel:
        admin = pb_grpc.AdminStub(channel)
        before = await ops_ok(admin)
        load = await run_load(affinity_daemon.address, 400, concurrency=16, key=ONLY_A)
        counts = delta(before, await ops_ok(admin))
    assert load.ok == 400, load.errors
    assert counts == {"node-a": 400, "node-b": 0, "node-c": 0, "node-d": 0}


# -- 3. drills --------------------------------------------------------------------------------------
def _cli(address: str, action: str, node: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hsmlb", "node", action, node, "--address", address],
                          capture_output=True, text=True, timeout=60)


async def test_fail_and_restore_drill(fresh_daemon: DaemonProcess) -> None:
    address = fresh_daemon.address
    async with grpc.aio.insecure_channel(address) as channel:
        admin = pb_grpc.AdminStub(channel)
        failed = await set_state(admin, "node-b", pb.FAIL)
        assert failed.operator == "failed" and failed.state.startswith("failed by operator"), failed.state
        before = await nodes(admin)
        load = await run_load(address, 1000, concurrency=8)
        after = await nodes(admin)
        assert load.ok == 1000, load.errors
        assert after["node-b"].ops_ok == before["node-b"].ops_ok, "a request reached the failed node"
        assert after["node-b"].ops_failed == before["node-b"].ops_failed

        restored = await set_state(admin, "node-b", pb.RESTORE)
        listed = (await nodes(admin))["node-b"]
        for status in (restored, listed):
            assert status.operator == "active"
            assert "slow start" in status.state and status.weight < 1.0, (status.state, status.weight)
        before = await ops_ok(admin)
        load = await run_load(address, 600, concurrency=4)
        counts = delta(before, await ops_ok(admin))
        assert load.ok == 600, load.errors
        print(f"\nafter RESTORE of node-b (weight {restored.weight:.2f}): {counts}")
        # Slow start: scored as (load + cost) / weight, a cold node loses every light-load comparison...
        assert counts["node-b"] < min(counts["node-a"], counts["node-c"]), counts
        # ...and takes its share again as its weight ramps up (bounded wait: slow_start_s is 5 s).
        for _ in range(80):
            if (await nodes(admin))["node-b"].weight >= 1.0:
                break
            await asyncio.sleep(0.1)
        before = await ops_ok(admin)
        load = await run_load(address, 600, concurrency=4)
        counts = delta(before, await ops_ok(admin))
        assert load.ok == 600, load.errors
        print(f"after slow start: {counts}")
        assert counts["node-b"] > 0, "the restored node got no traffic once warm"


async def test_cli_fail_and_restore_are_logged_with_who_asked(fresh_daemon: DaemonProcess) -> None:
    address = fresh_daemon.address
    async with grpc.aio.insecure_channel(address) as channel:
        admin = pb_grpc.AdminStub(channel)
        done = await asyncio.to_thread(_cli, address, "fail", "node-c")
        assert done.returncode == 0, done.stderr
        status = (await nodes(admin))["node-c"]
        assert status.operator == "failed" and status.state.startswith("failed by operator ("), status.state
        assert "@" in status.state, status.state

        done = await asyncio.to_thread(_cli, address, "restore", "node-c")
        assert done.returncode == 0, done.stderr
        status = (await nodes(admin))["node-c"]
        assert status.operator == "active" and status.state.startswith("healthy"), status.state
    log = fresh_daemon.log_text()
    asked = re.findall(r"drill: node node-c (\w+) -> (\w+), requested by (\S+)", log)
    assert [(a, b) for a, b, _ in asked] == [("active", "failed"), ("failed", "active")], asked
    assert all("@" in who for _, _, who in asked), asked


async def test_drain_lets_in_flight_requests_finish_and_takes_no_new_ones(fresh_daemon: DaemonProcess) -> None:
    address = fresh_daemon.address
    async with grpc.aio.insecure_channel(address) as channel:
        admin, ops = pb_grpc.AdminStub(channel), pb_grpc.OperationsStub(channel)
        for other in ("node-a", "node-c"):  # so that the slow requests all land on node-b
            await set_state(admin, other, pb.DRAIN)
        await inject(admin, "node-b", "delay", 0.2)
        try:
            before = (await nodes(admin))["node-b"].ops_ok
            slow = [asyncio.ensure_future(ops.EncryptData(encrypt_request(), timeout=30)) for _ in range(8)]
            deadline = time.monotonic() + 5
            while (await nodes(admin))["node-b"].outstanding < 8 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            for other in ("node-a", "node-c"):
                await set_state(admin, other, pb.RESTORE)
            drained = await set_state(admin, "node-b", pb.DRAIN)
            assert drained.operator == "draining" and drained.state == "draining"
            assert drained.outstanding > 0, "the slow requests were no longer in flight at the drain"
            fresh = await run_load(address, 300, concurrency=8)
            replies = await asyncio.gather(*slow, return_exceptions=True)
            after = (await nodes(admin))["node-b"].ops_ok
        finally:
            await inject(admin, "node-b", "delay", 0.0)
            for node in PRIMARY:
                await set_state(admin, node, pb.RESTORE)
    errors = [r for r in replies if isinstance(r, BaseException)]
    assert errors == [], f"in-flight requests failed across the drain: {errors[:3]}"
    assert all(r.cipher_text for r in replies)
    assert fresh.ok == 300, fresh.errors
    # The 4 on its sessions finish there; the 4 queued behind them (0.2 s) wait past the node's queue-wait
    # bound (limits.max_queue_wait_ms) and move to a node with room, unless they got a session first.
    assert 4 <= after - before <= 8, f"node-b served {after - before} requests; only the 8 in flight may finish there"
