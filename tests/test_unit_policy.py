"""Pure policy and plumbing, without tokens or sockets: balancer, pool, wire framing, config."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import hsmlb.dev
from hsmlb.backends import wire
from hsmlb.backends.base import NodeStats
from hsmlb.clock import FakeClock
from hsmlb.config import ConfigError, parse_config
from hsmlb.dev.cluster import default_keys_file
from hsmlb.errors import NodeFault, Overloaded
from hsmlb.health import HealthPolicy, NodeHealth
from hsmlb.keys import KeyEntry, load_keys, token_material
from hsmlb.ops import CostClass, KeyInfo, Operation, OpKind
from hsmlb.pool import NodePool
from hsmlb.router import KeyAffinity, LeastOutstanding


def test_p2c_never_picks_the_busier_of_two():
    balancer = LeastOutstanding(random.Random(7))
    loads = {"a": 0, "b": 5, "c": 9}
    picks = Counter(balancer.choose(list(loads), loads.__getitem__) for _ in range(3000))
    assert picks["c"] == 0  # c is the busier of any pair it is sampled in
    assert picks["a"] > picks["b"] > 0  # a wins every pair it is in; b only beats c


def test_p2c_spreads_equal_load():
    balancer = LeastOutstanding(random.Random(1))
    picks = Counter(balancer.choose(["a", "b", "c"], lambda _: 0) for _ in range(3000))
    assert all(800 < picks[n] < 1200 for n in "abc"), picks


def _restored_cluster(clock: FakeClock) -> dict[str, NodeHealth]:
    """Three nodes; c was failed and restored just now, so it slow-starts over 10 s."""
    health = {n: NodeHealth(n, HealthPolicy(slow_start_s=10.0), clock()) for n in "abc"}
    health["c"].set_operator("failed", "test", clock())
    health["c"].set_operator("active", "test", clock())
    return health


def test_slow_start_gives_an_idle_restored_node_a_smaller_share():
    """Idle cluster (each request done before the next): load is 0 everywhere, so load / weight
    cannot tell a warming node from a warm one; (load + cost) / weight can."""
    clock = FakeClock()
    health = _restored_cluster(clock)
    balancer = LeastOutstanding(random.Random(11))

    def shares() -> Counter[str]:
        return Counter(balancer.choose(list("abc"), lambda _: 0.0, str, None, 1.0,
                                       weight=lambda n: health[n].weight(clock())) for _ in range(3000))

    warming = shares()
    assert warming["c"] < min(warming["a"], warming["b"]) / 5, warming
    clock.advance(4.0)  # weight 0.46: still warming
    assert shares()["c"] < 300
    clock.advance(6.0)  # slow start over: an equal share again
    warm = shares()
    assert all(800 < warm[n] < 1200 for n in "abc"), warm


def test_slow_start_under_load_gives_a_share_that_grows_with_weight():
    """Requests pile up (none completes): a warming node takes fewer of them, more as it warms."""
    clock = FakeClock()
    health = _restored_cluster(clock)
    balancer = LeastOutstanding(random.Random(3))

    def share_of_c() -> int:
        load = dict.fromkeys("abc", 0.0)
        for _ in range(600):
            load[balancer.choose(list("abc"), load.__getitem__, str, None, 1.0,
                                 weight=lambda n: health[n].weight(clock()))] += 1.0
        return int(load["c"])

    early = share_of_c()
    clock.advance(5.0)
    later = share_of_c()
    assert early < 100 < later < 200, (early, later)  # 200 would be an equal third


def test_key_affinity_spills_a_warming_home_node_and_returns_when_warm():
    clock = FakeClock()
    health = _restored_cluster(clock)
    balancer = KeyAffinity(balance_factor=1.5)
    nodes = list("abc")
    balancer.choose(nodes, lambda _: 0.0, str, "alias/k0", 1.0)  # builds the ring
    key = next(f"alias/k{i}" for i in range(1000) if balancer.ring_order(f"alias/k{i}")[0] == "c")

    def pick() -> str:
        return balancer.choose(nodes, lambda _: 0.0, str, key, 1.0, weight=lambda n: health[n].weight(clock()))

    assert pick() == balancer.ring_order(key)[1]  # c is the key's home, but it is warming
    clock.advance(10.0)
    assert pick() == "c"


class FakeBackend:
    """A scriptable backend on the Backend protocol: each op waits on a future the test controls."""

    kind = "fake"

    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.state = "up"
        self.keys: dict[str, KeyInfo] = {}
        self.stats = NodeStats()
        self.calls: list[tuple[Operation, int]] = []
        self.results: list[asyncio.Future[Any]] = []

    def perform(self, op: Operation, slot: int) -> asyncio.Future[Any]:
        self.calls.append((op, slot))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.results.append(future)
        return future

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def inject_fault(self, fault: str, value: float = 0.0) -> None: ...


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def _op() -> Operation:
    return Operation(OpKind.RANDOM, None, (8,))


async def test_pool_hands_out_distinct_slots_then_queues_then_refuses():
    backend = FakeBackend()
    pool = NodePool(backend, size=2, queue_limit=1)
    first = asyncio.ensure_future(pool.perform(_op()))
    second = asyncio.ensure_future(pool.perform(_op()))
    third = asyncio.ensure_future(pool.perform(_op()))
    await asyncio.sleep(0)
    assert sorted(slot for _, slot in backend.calls) == [0, 1]
    assert (pool.in_use, pool.queued, pool.outstanding) == (2, 1, 3)
    with pytest.raises(Overloaded):
        await pool.perform(_op())
    backend.results[0].set_result(b"x")
    assert await first == b"x"
    await asyncio.sleep(0)
    assert len(backend.calls) == 3 and backend.calls[2][1] == backend.calls[0][1]  # the freed slot is reused
    backend.results[1].set_exception(NodeFault("device error"))
    with pytest.raises(NodeFault):
        await second
    backend.results[2].set_result(b"y")
    assert await third == b"y"
    assert (pool.in_use, pool.queued) == (0, 0)
    assert (pool.stats.ops_ok, pool.stats.ops_failed) == (2, 1)


async def test_cancelled_waiter_does_not_leak_a_slot():
    backend = FakeBackend()
    pool = NodePool(backend, size=1, queue_limit=4)
    running = asyncio.ensure_future(pool.perform(_op()))
    waiting = asyncio.ensure_future(pool.perform(_op()))
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.sleep(0)
    backend.results[0].set_result(b"done")
    await running
    assert pool.in_use == 0 and pool.queued == 0
    later = asyncio.ensure_future(pool.perform(_op()))
    await asyncio.sleep(0)
    backend.results[-1].set_result(b"later")
    assert await later == b"later"


def test_wire_frames_survive_arbitrary_splits():
    batches = [[(i, 0, "encrypt", "alias/x", ("ECB", b"", bytes(16)), 0.0)] for i in range(50)]
    stream = b"".join(wire.encode(b) for b in batches)
    decoder = wire.FrameDecoder()
    rng = random.Random(3)
    out: list[Any] = []
    pos = 0
    while pos < len(stream):
        step = rng.randint(1, 97)
        out.extend(decoder.feed(stream[pos:pos + step]))
        pos += step
    assert out == batches


def test_wire_rejects_oversized_frame():
    with pytest.raises(ValueError, match="exceeds"):
        wire.FrameDecoder().feed(wire.HEADER.pack(wire.MAX_FRAME + 1))


NODE = {"name": "n1", "module": "/usr/lib/softhsm/libsofthsm2.so", "token_label": "t", "pin_env": "PIN"}


@pytest.mark.parametrize(("change", "field"), [
    ({"pool_size": 0}, "nodes.0.pool_size"),
    ({"pin": "1234"}, "PIN may not be written"),
    ({"pin_env": None}, "exactly one of pin_env or pin_file"),
    ({"token_label": None}, "token_label or token_serial"),
    ({"name": "bad name"}, "nodes.0.name"),
])
def test_config_errors_name_the_field(change: dict[str, Any], field: str):
    node = {**NODE, **change}
    with pytest.raises(ConfigError, match=field):
        parse_config({"nodes": [{k: v for k, v in node.items() if v is not None}]})


def test_config_rejects_duplicate_names_and_unknown_keys():
    with pytest.raises(ConfigError, match="unique: n1"):
        parse_config({"nodes": [NODE, NODE]})
    with pytest.raises(ConfigError, match="colour"):
        parse_config({"nodes": [NODE], "colour": "blue"})


def test_pin_comes_from_env_only_when_set(monkeypatch: pytest.MonkeyPatch):
    config = parse_config({"nodes": [NODE]})
    monkeypatch.delenv("PIN", raising=False)
    with pytest.raises(ConfigError, match="PIN is not set"):
        config.nodes[0].read_pin()
    monkeypatch.setenv("PIN", "98765432")
    assert config.nodes[0].read_pin() == "98765432"


async def test_rsa_never_takes_the_last_slot_and_fast_waiters_go_first():
    backend = FakeBackend()
    pool = NodePool(backend, size=2, queue_limit=8)
    rsa = Operation(OpKind.SIGN, "alias/r", ("RSASSA_PKCS1_V1_5_SHA_256", b"m"), cost=CostClass.RSA)
    first_rsa = asyncio.ensure_future(pool.perform(rsa))
    second_rsa = asyncio.ensure_future(pool.perform(rsa))
    await _settle()
    assert len(backend.calls) == 1 and pool.queued == 1  # one slot stays free of RSA
    fast = asyncio.ensure_future(pool.perform(_op()))
    blocked = asyncio.ensure_future(pool.perform(_op()))
    await _settle()
    assert [op.kind for op, _ in backend.calls] == [OpKind.SIGN, OpKind.RANDOM]
    backend.results[0].set_result(b"sig")  # the RSA slot frees: the waiting fast op goes first
    await _settle()
    assert [op.kind for op, _ in backend.calls][2] is OpKind.RANDOM
    for result in backend.results[1:]:
        result.set_result(b"ok")
    await _settle()
    backend.results[-1].set_result(b"sig2")
    assert [await f for f in (first_rsa, fast, blocked, second_rsa)] == [b"sig", b"ok", b"ok", b"sig2"]
    assert pool.in_use == 0 and pool._slow_in_use == 0


def test_token_material_pads_hmac_keys_to_64_bytes_with_the_same_macs():
    """SoftHSM2 wants HMAC keys of at least the digest length (64 bytes for SHA-512); zero padding
    up to the hash's block size is what HMAC does to a short key anyway (RFC 2104 s.2)."""
    raw = bytes.fromhex("00112233445566778899AABBCCDDEEFF")
    entry = KeyEntry(alias="alias/h", algorithm="HMAC_SHA256", usage="TR31_M7_HMAC_KEY", material_hex=raw.hex())
    padded = token_material(entry)
    assert padded == raw + bytes(64 - len(raw))
    message = random.Random(9).randbytes(200)
    for digest in (hashlib.sha224, hashlib.sha256, hashlib.sha384, hashlib.sha512):
        assert hmac.new(padded, message, digest).digest() == hmac.new(raw, message, digest).digest()
    aes = KeyEntry(alias="alias/a", algorithm="AES_128", usage="TR31_D0_SYMMETRIC_DATA_ENCRYPTION_KEY",
                   material_hex=raw.hex())
    assert token_material(aes) == raw


def test_dev_keys_file_is_package_data_and_the_documented_path_is_the_same_file():
    path = default_keys_file()
    assert path.parent == Path(hsmlb.dev.__file__).resolve().parent  # so a wheel install finds it
    assert load_keys(path)
    root = Path(__file__).resolve().parents[1]
    package_data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert path.name in package_data["hsmlb.dev"]
    # No top-level config/ in the checkout: run from the directory holding a checkout named hsmlb, it
    # became the namespace package hsmlb.config and hid the config module (issue 10).
    assert not (root / "config").exists()
