"""NodePool depth (a backend's pipeline_depth): several operations per session in flight, so that a batch
reaches a token worker in one write; sessions handed to the backend stay within pool_size, and slow
operations (RSA) still hold at most size - 1 sessions."""

from __future__ import annotations

import pytest

from hsmlb.backends.pkcs11 import Pkcs11Backend
from hsmlb.errors import Overloaded
from hsmlb.ops import CostClass, Operation, OpKind
from hsmlb.pool import NodePool
from tests.test_unit_policy import FakeBackend, _op


async def test_depth_puts_size_times_depth_in_flight_on_sessions_within_size():
    backend = FakeBackend()
    pool = NodePool(backend, size=2, queue_limit=1, depth=3)
    started = [pool.perform(_op()) for _ in range(6)]
    assert len(backend.calls) == 6 and pool.in_use == 6 and pool.queued == 0
    slots = [slot for _, slot in backend.calls]
    assert set(slots) == {0, 1} and slots[:2] == [0, 1]  # both sessions first, then more on each
    queued = pool.perform(_op())
    assert pool.queued == 1
    with pytest.raises(Overloaded):
        await pool.perform(_op())
    backend.results[0].set_result(b"x")
    assert await started[0] == b"x"
    assert len(backend.calls) == 7 and backend.calls[6][1] in (0, 1)  # the queued op started on the freed slot
    for result in backend.results[1:]:
        result.set_result(b"y")
    assert await queued == b"y"
    assert pool.in_use == 0 and pool.load == 0


async def test_depth_does_not_let_rsa_take_every_session():
    backend = FakeBackend()
    pool = NodePool(backend, size=2, queue_limit=4, depth=4)
    rsa = Operation(OpKind.SIGN, "alias/r", ("RSASSA_PKCS1_V1_5_SHA_256", b"m"), cost=CostClass.RSA)
    pool.perform(rsa)
    pool.perform(rsa)
    assert len(backend.calls) == 1 and pool.queued == 1  # size - 1 = 1 session for RSA, depth or not
    pool.perform(_op())
    assert len(backend.calls) == 2  # a fast op still gets a slot at once


def test_token_nodes_pipeline():
    assert Pkcs11Backend.pipeline_depth > 1
