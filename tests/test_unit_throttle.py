"""The APC quota buckets: pure policy driven by a fake clock (no sleeping, no I/O)."""

from __future__ import annotations

import pytest

from hsmlb.apc.throttle import KeyClass, RegionQuotas, TokenBucket, key_class
from hsmlb.clock import FakeClock


def test_bucket_starts_full_and_grants_its_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=100, burst_s=0.2, clock=clock)
    assert bucket.capacity == 20
    assert [bucket.acquire(0.0) for _ in range(20)] == [0.0] * 20
    assert bucket.acquire(0.0) is None
    assert bucket.granted == 20 and bucket.refused == 1


def test_bucket_refills_at_its_rate_and_caps_at_capacity() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=100, burst_s=0.2, clock=clock)
    for _ in range(20):
        bucket.acquire(0.0)
    clock.advance(0.05)  # 5 tokens
    assert bucket.available() == pytest.approx(5)
    clock.advance(10.0)
    assert bucket.available() == pytest.approx(20)  # never more than the burst


def test_short_wait_reserves_a_token_in_arrival_order() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=100, burst_s=0.01, clock=clock)  # capacity 1
    assert bucket.acquire(0.05) == 0.0
    first = bucket.acquire(0.05)
    second = bucket.acquire(0.05)
    assert first == pytest.approx(0.01) and second == pytest.approx(0.02)
    assert bucket.delayed == 2
    # a waiter that cannot afford the queue ahead of it takes nothing
    assert bucket.acquire(0.025) is None
    assert bucket.available() == pytest.approx(-2)
    clock.advance(0.03)
    assert bucket.available() == pytest.approx(1)


def test_wait_beyond_max_wait_is_refused_without_taking() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=20, burst_s=0.05, clock=clock)  # capacity 1, 50 ms per token
    assert bucket.acquire(0.0) == 0.0
    assert bucket.acquire(0.049) is None
    assert bucket.acquire(0.05) == pytest.approx(0.05)


def test_drain_pauses_grants_for_about_the_given_time() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=500, burst_s=0.2, clock=clock)
    bucket.drain(0.1)
    assert bucket.acquire(0.05) is None
    clock.advance(0.1)
    assert bucket.acquire(0.0) is None  # back to zero, not yet one whole token
    clock.advance(0.0025)  # one more token at 500/s
    assert bucket.acquire(0.0) == 0.0


def test_drain_keeps_outstanding_reservations() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=100, burst_s=0.01, clock=clock)
    bucket.acquire(0.0)
    bucket.acquire(0.05)  # reserved: debt of one token
    bucket.drain(0.1)
    assert bucket.available() == pytest.approx(-11)


def test_clock_going_backwards_does_not_mint_tokens() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=100, burst_s=0.01, clock=clock)
    bucket.acquire(0.0)
    clock.advance(-5.0)
    assert bucket.available() == pytest.approx(0)


def test_invalid_rates_are_refused() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst_s=1)
    with pytest.raises(ValueError):
        TokenBucket(rate=1, burst_s=0)


def test_region_quotas_split_by_key_class() -> None:
    clock = FakeClock()
    quotas = RegionQuotas(symmetric_per_s=500, asymmetric_per_s=20, burst_s=0.2, clock=clock)
    assert key_class("AES") is KeyClass.SYMMETRIC
    assert key_class("GENERIC_SECRET") is KeyClass.SYMMETRIC
    assert key_class("RSA") is KeyClass.ASYMMETRIC and key_class("EC") is KeyClass.ASYMMETRIC
    assert quotas.bucket("DES3").capacity == 100
    assert quotas.bucket("RSA").capacity == 4
    for _ in range(4):
        assert quotas.bucket("EC").acquire(0.0) == 0.0
    assert quotas.bucket("RSA").acquire(0.0) is None  # asymmetric exhausted...
    assert quotas.bucket("AES").acquire(0.0) == 0.0  # ...symmetric untouched
    stats = quotas.stats()
    assert stats["asymmetric"]["granted"] == 4 and stats["asymmetric"]["refused"] == 1
