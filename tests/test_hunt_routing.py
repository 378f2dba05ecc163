"""Bug hunt in routing and daemon assembly: KCV consensus, start with nodes missing, breaker probes,
retries and slow-start weights.

Pure routing policy runs on scripted stand-ins on the Backend protocol with a fake clock (as in
test_unit_capabilities.py); everything about the daemon runs a real daemon on loopback over real
SoftHSM2 tokens, with token directories moved away for a real token failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import socket
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from hsmlb.clock import FakeClock
from hsmlb.dev.regions import dev_credentials
from hsmlb.errors import NodeFault, Unavailable
from hsmlb.health import HealthPolicy, NodeHealth
from hsmlb.ops import KeyInfo, Operation, OpKind
from hsmlb.pool import NodePool
from hsmlb.router import LeastOutstanding, RetryBudget
from hsmlb.router.breaker import NodeBreaker
from hsmlb.router.cluster import Cluster, Member
from hsmlb.router.router import Router
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests._routing_helpers import DEK, ONLY_A, encrypt_request, inject, nodes, token_dirs, wait_state
from tests._scripted import ScriptedBackend
from tests.conftest import Cluster as DevCluster
from tests.conftest import DaemonProcess, start_daemon

ZEK = "alias/zek-aes128"  # all four tokens
RPC_S = 5.0

# ------------------------------------------------------------------------------ pure policy


def _key(kcv: str) -> KeyInfo:
    return KeyInfo("alias/k", "alias/k", "AES", kcv, frozenset({"encrypt", "decrypt"}))


def _router(*backends: ScriptedBackend, **kwargs: Any) -> tuple[Router, FakeClock]:
    clock = FakeClock()
    members = [Member(NodePool(b, size=4, queue_limit=64), NodeHealth(b.name, HealthPolicy(), clock()),
                      NodeBreaker(b.name, clock, fail_max=2, reset_timeout_s=1.0)) for b in backends]
    return Router(Cluster(members), LeastOutstanding(), clock, **kwargs), clock


def _encrypt(alias: str = "alias/k") -> Operation:
    return Operation(OpKind.ENCRYPT, alias, ("ECB", b"", b"\0" * 16))


async def test_a_kcv_outlier_never_serves_the_alias_when_the_agreeing_holders_go_down() -> None:
    """a and b agree on the key; c holds another key under the alias. With a and b down, c must not
    become the holder: its answers would be made with the wrong key (silently wrong crypto)."""
    a, b, c = (ScriptedBackend(n, [_key(kcv)]) for n, kcv in (("a", "AAAAAA"), ("b", "AAAAAA"), ("c", "CCCCCC")))
    router, _ = _router(a, b, c)
    assert router.cluster.by_name["c"].kcv_conflicts == ["alias/k"]
    for _ in range(6):
        await router.execute(_encrypt())
    assert c.calls == 0 and a.calls + b.calls == 6
    a.state = b.state = "down"
    router.cluster.rebuild()
    with pytest.raises(Unavailable):
        await router.execute(_encrypt())
    assert c.calls == 0
    assert router.cluster.by_name["c"].kcv_conflicts == ["alias/k"]
    a.state = "up"
    router.cluster.rebuild()
    assert (await router.execute(_encrypt()))[0] == b"ok"
    assert c.calls == 0


async def test_a_kcv_tie_serves_nobody() -> None:
    """Two holders, two different keys under one alias: no majority says which is right, so neither serves
    (UNAVAILABLE, both flagged) until a third holder breaks the tie."""
    a, b = ScriptedBackend("a", [_key("AAAAAA")]), ScriptedBackend("b", [_key("BBBBBB")])
    router, _ = _router(a, b)
    assert [router.cluster.by_name[n].kcv_conflicts for n in ("a", "b")] == [["alias/k"], ["alias/k"]]
    with pytest.raises(Unavailable):
        await router.execute(_encrypt())
    assert a.calls == b.calls == 0
    c = ScriptedBackend("c", [_key("BBBBBB")])
    router, _ = _router(a, b, c)
    assert (await router.execute(_encrypt()))[0] == b"ok"
    assert a.calls == 0 and router.cluster.by_name["a"].kcv_conflicts == ["alias/k"]


async def test_a_node_whose_inventory_is_unknown_makes_an_unknown_alias_unavailable_not_not_found() -> None:
    """A node that never came up may hold the alias: NOT_FOUND would tell the caller it does not exist."""
    up, never = ScriptedBackend("up", [_key("AAAAAA")]), ScriptedBackend("never", [])
    never.state = "down"
    router, _ = _router(up, never)
    with pytest.raises(Unavailable, match="alias/elsewhere"):
        await router.execute(_encrypt("alias/elsewhere"))
    never.state = "up"  # its inventory is known now (it holds nothing): the alias really is unknown
    router.cluster.rebuild()
    with pytest.raises(Exception, match="no node holds") as raised:
        await router.execute(_encrypt("alias/elsewhere"))
    assert raised.value.status.name == "NOT_FOUND"
    never.state = "down"  # down again, but its (empty) inventory was read: still NOT_FOUND, not a retry
    router.cluster.rebuild()
    with pytest.raises(Exception, match="no node holds") as again:
        await router.execute(_encrypt("alias/elsewhere"))
    assert again.value.status.name == "NOT_FOUND"


async def test_half_open_breaker_admits_exactly_one_probe_under_concurrency() -> None:
    slow = ScriptedBackend("slow", [_key("AAAAAA")], outcome=NodeFault("node slow: broken"))
    steady = ScriptedBackend("steady", [_key("AAAAAA")])
    router, clock = _router(slow, steady, max_attempts=1)
    breaker = router.cluster.by_name["slow"].breaker
    for _ in range(40):  # bounded: until the breaker has opened on two faults
        with contextlib.suppress(NodeFault):
            await router.execute(_encrypt())
        if breaker.state == "open":
            break
    assert breaker.state == "open"
    clock.advance(1.5)
    slow.outcome, slow.gate = b"ok", asyncio.Event()
    before = slow.calls
    tasks = [asyncio.ensure_future(router.execute(_encrypt())) for _ in range(20)]
    await asyncio.sleep(0.01)
    assert slow.calls - before == 1 and breaker.probe_in_flight
    slow.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert all(r[0] == b"ok" for r in results)
    assert breaker.state == "closed" and not breaker.probe_in_flight


async def test_retries_never_return_to_a_node_that_failed_and_end_with_the_node_fault() -> None:
    nodes_ = [ScriptedBackend(n, [_key("AAAAAA")], outcome=NodeFault(f"node {n}: broken")) for n in "abc"]
    router, _ = _router(*nodes_, max_attempts=5, backoff_base_s=0.0, backoff_max_s=0.0)
    with pytest.raises(NodeFault) as raised:
        await router.execute(_encrypt())
    assert [n.calls for n in nodes_] == [1, 1, 1]
    assert raised.value.status.name == "UNAVAILABLE"


async def test_an_empty_retry_budget_fails_at_once_without_a_retry_storm() -> None:
    bad = ScriptedBackend("bad", [_key("AAAAAA")], outcome=NodeFault("node bad: broken"))
    good = ScriptedBackend("good", [])
    router, _ = _router(bad, good, budget=RetryBudget(ratio=0.0, min_per_s=0.0, window_s=10.0))
    for _ in range(5):
        with pytest.raises(NodeFault):
            await router.execute(_encrypt())
    assert bad.calls == 5 and router.budget.refused == 5 and router.budget.retries_in_window == 0


def test_slow_start_weight_stays_in_range_at_its_boundaries_and_with_the_clock_going_back() -> None:
    policy = HealthPolicy(slow_start_s=1e-9)
    health = NodeHealth("n", policy, 0.0)
    health.set_operator("failed", "t", 0.0)
    health.set_operator("active", "t", 100.0)
    for now in (-1e18, 0.0, 99.0, 100.0, 100.0 + 5e-10, 100.0 + 1e-9, 1e18):
        weight = health.weight(now)
        assert 0.1 <= weight <= 1.0 and not math.isnan(weight), (now, weight)
    long = NodeHealth("m", HealthPolicy(slow_start_s=float("inf")), 0.0)
    long.set_operator("failed", "t", 0.0)
    long.set_operator("active", "t", 1.0)
    assert long.weight(1e9) == pytest.approx(0.1)


# ------------------------------------------------------------------------------ real daemons


@contextlib.contextmanager
def _listening(config: Path, log_path: Path) -> Iterator[DaemonProcess]:
    """A daemon that need not have every node up: waits only for it to listen (bounded)."""
    daemon = start_daemon(config, log_path, wait_nodes_up=False)
    try:
        yield daemon
    finally:
        daemon.stop(signal.SIGTERM, 20)


async def _code(call: Any, verbose: bool = False) -> str:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code().name if not verbose else f"{exc.code().name}: {exc.details()}"
    return "OK"


async def _until_ok(stub: pb_grpc.OperationsStub, key: str, within_s: float) -> list[str]:
    codes: list[str] = []
    deadline = time.monotonic() + within_s
    for _ in range(400):  # bounded in count and time
        codes.append(await _code(stub.EncryptData(encrypt_request(key), timeout=RPC_S)))
        if codes[-1] == "OK" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    return codes


async def test_kcv_outlier_token_is_excluded_and_stays_excluded_when_the_others_go_down(
        cluster: DevCluster, tmp_path: Path) -> None:
    """node-c's config maps zek-aes128 and dek-aes256 to each other's labels (a mislabelled token):
    it must be flagged and serve neither alias, also once node-a and node-b are down."""
    def mislabel_node_c(data: dict[str, Any]) -> None:
        for node in data["nodes"]:
            if node["name"] == "node-c":
                node["key_labels"] = {ZEK: DEK, DEK: ZEK}

    config = cluster.write_variant(tmp_path / "hsmlb-hunt-routing.yaml", mutate=mislabel_node_c)
    daemon = start_daemon(config, tmp_path / "d.log")
    try:
        async with grpc.aio.insecure_channel(daemon.address) as channel:
            admin, stub = pb_grpc.AdminStub(channel), pb_grpc.OperationsStub(channel)
            table = await nodes(admin)
            reference = (await stub.EncryptData(encrypt_request(DEK), timeout=RPC_S)).cipher_text
            with token_dirs(cluster, ("node-a", "node-b")) as dirs:
                dirs.away()
                for node in ("node-a", "node-b"):
                    await inject(admin, node, "kill_worker")
                downs = [(await wait_state(admin, n, lambda s: s.backend_state == "down", timeout_s=10))[0]
                         for n in ("node-a", "node-b")]
                during = {key: await _code(stub.EncryptData(encrypt_request(key), timeout=RPC_S))
                          for key in (DEK, ZEK)}
                ciphers = {}
                for key in (DEK, ZEK):
                    with contextlib.suppress(grpc.aio.AioRpcError):
                        ciphers[key] = (await stub.EncryptData(encrypt_request(key), timeout=RPC_S)).cipher_text
                after = await nodes(admin)
    finally:
        daemon.stop()
    assert sorted(table["node-c"].kcv_conflicts) == sorted([DEK, ZEK]), table["node-c"]
    assert all(not table[n].kcv_conflicts for n in ("node-a", "node-b", "node-d"))
    assert all(downs), "node-a and node-b did not go down"
    # node-d agrees with the token majority on zek; node-c must never serve either alias.
    assert during == {DEK: "UNAVAILABLE", ZEK: "OK"}, (during, {n: s.kcv_conflicts for n, s in after.items()})
    assert DEK not in ciphers and reference
    assert after["node-c"].kcv_conflicts and not after["node-d"].kcv_conflicts, after


async def test_a_token_missing_at_start_is_unavailable_then_picked_up(cluster: DevCluster, tmp_path: Path) -> None:
    """node-a's token is away when the daemon starts: the rest serve, its only key is UNAVAILABLE
    (not NOT_FOUND: the key exists, its node is down), and node-a joins once the token is back."""
    with token_dirs(cluster, ("node-a",)) as dirs:
        dirs.away()
        with _listening(cluster.write_variant(tmp_path / "hsmlb-hunt-routing.yaml"), tmp_path / "d.log") as daemon:
            async with grpc.aio.insecure_channel(daemon.address) as channel:
                admin, stub = pb_grpc.AdminStub(channel), pb_grpc.OperationsStub(channel)
                # wait_for_ready: the first call on a fresh channel must not fail on connecting
                shared = await _code(stub.EncryptData(encrypt_request(DEK), timeout=RPC_S, wait_for_ready=True),
                                     verbose=True)
                only_a = await _code(stub.EncryptData(encrypt_request(ONLY_A), timeout=RPC_S))
                state = (await nodes(admin))["node-a"].backend_state
                dirs.back()
                recovered = await _until_ok(stub, ONLY_A, within_s=15)
                up_at, _ = await wait_state(admin, "node-a", lambda s: s.state.startswith("healthy"), timeout_s=15)
    assert shared == "OK" and state != "up", (shared, state)
    assert only_a == "UNAVAILABLE", only_a
    assert recovered[-1] == "OK" and set(recovered[:-1]) <= {"UNAVAILABLE"}, recovered
    assert up_at is not None


async def test_every_token_missing_at_start_fails_fast_with_unavailable_and_recovers(
        cluster: DevCluster, tmp_path: Path) -> None:
    labels = ("node-a", "node-b", "node-c", "node-d")
    with token_dirs(cluster, labels) as dirs:
        dirs.away()
        with _listening(cluster.write_variant(tmp_path / "hsmlb-hunt-routing.yaml"), tmp_path / "d.log") as daemon:
            async with grpc.aio.insecure_channel(daemon.address) as channel:
                stub = pb_grpc.OperationsStub(channel)
                started = time.monotonic()
                codes = [await _code(stub.EncryptData(encrypt_request(ZEK), timeout=RPC_S)) for _ in range(5)]
                took = time.monotonic() - started
                dirs.back()
                recovered = await _until_ok(stub, ZEK, within_s=15)
    assert codes == ["UNAVAILABLE"] * 5, codes
    assert took < 2.0, took
    assert recovered[-1] == "OK", recovered


async def test_a_region_slower_than_start_timeout_does_not_stop_the_daemon_serving(
        cluster: DevCluster, tmp_path: Path) -> None:
    """A region that accepts connections and never answers (a black hole) is slower to discover than
    start_timeout_s: the daemon must start and serve from the tokens, with the region not up."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)  # never accepted: the kernel completes the handshakes, nobody ever answers
    port = hole.getsockname()[1]
    region = {"name": "apc-void", "kind": "apc", "region": "us-east-2", "endpoint_url": f"http://127.0.0.1:{port}",
              "credentials_file": str(dev_credentials(tmp_path / "creds")[2]), "connections": 1,
              "request_timeout_s": 4.0, "connect_timeout_s": 2.0}
    config = cluster.write_variant(tmp_path / "hsmlb-hunt-routing.yaml", extra_nodes=[region], start_timeout_s=1.0)
    try:
        with _listening(config, tmp_path / "d.log") as daemon:
            hole.close()  # the half-open connections are reset: the region's discovery ends now
            async with grpc.aio.insecure_channel(daemon.address) as channel:
                admin, stub = pb_grpc.AdminStub(channel), pb_grpc.OperationsStub(channel)
                code = await _code(stub.EncryptData(encrypt_request(DEK), timeout=RPC_S))
                table = await nodes(admin)
    finally:
        hole.close()
    assert code == "OK"
    assert table["apc-void"].backend_state != "up"
    assert all(table[n].backend_state == "up" for n in ("node-a", "node-b", "node-c")), table


class _CountingWindow(deque[tuple[float, bool]]):
    """The outcome window, counting how often something walks through it."""

    walks = 0

    def __iter__(self) -> Iterator[tuple[float, bool]]:
        self.walks += 1
        return super().__iter__()


def test_failure_rate_check_stays_cheap_in_a_fault_storm_that_does_not_eject() -> None:
    """A busy node failing 30% of its requests (under the rate, never 5 in a row) is never ejected, so
    its window fills: each fault used to re-count the whole window, O(window) per request on the hot
    path (100k requests in 10 s took ~30 s of CPU here). Counted, not timed: no outcome may walk the window."""
    policy = HealthPolicy(consecutive_faults=10**6, failure_rate=0.5, failure_rate_min_requests=20, window_s=10.0)
    health = NodeHealth("busy", policy, 0.0)
    health._window = window = _CountingWindow()
    now = 0.0
    for i in range(100_000):
        now += 1e-4  # 10k requests/s: the whole run stays inside the 10 s window
        assert not health.record_result(i % 10 in (0, 3, 6), now)
    assert window.walks == 0 and len(window) == 100_000
    for _ in range(40_000):  # only faults now: the rate passes 50% once ~29k old outcomes have left
        now += 1e-4
        health.record_result(True, now, may_eject=False)
    assert health.would_eject > 0 and "failure rate" in health.last_reason, health.last_reason
    # Exactly the outcomes inside the window count: 20 faults, then (after they expired) 10 ok + 10 faults.
    exact = NodeHealth("exact", policy, 0.0)
    assert not any(exact.record_result(True, 0.0, may_eject=False) for _ in range(20))
    assert exact.would_eject == 1  # the 20th: 20/20 faults
    for i in range(20):
        exact.record_result(i >= 10, 11.0 + i * 0.01, may_eject=False)
    assert exact.would_eject == 1, exact.last_reason  # 10/20 is not above 50%: the expired faults are gone
