"""The hsmlb-client SDK against a real daemon on loopback: results byte-identical to the unary path for every
operation (async and sync clients), typed errors, item timeouts, back-pressure, and a broken stream that fails
its in-flight calls with a clear error while the next call succeeds on a new stream."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import hsmlb_client
import pytest
from hsmlb_client._operations import OPERATIONS

from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from loadtest import ops as load_ops
from tests._daemon_helpers import NIST_ECB, NIST_KEY, NIST_PLAIN, NODES, inject
from tests._tcp_proxy import TcpProxy
from tests.conftest import DaemonProcess, sym

Case = tuple[str, str, Any]  # (label, StreamRequest field, request message)
ECB = {"symmetric": {"mode": "ECB"}}
WAIT_S = 30  # bound on every wait in these tests (never a timing assert)


def _nist(client: Any, **kw: Any) -> Any:
    return client.encrypt_data(key_identifier=NIST_KEY, plain_text=NIST_PLAIN, encryption_attributes=ECB, **kw)


@pytest.fixture(scope="module")
def cases(daemon: DaemonProcess) -> list[Case]:
    """Two requests of every operation: the load suite's builders (primed through the unary path), plus
    ReEncryptData and GenerateRandom, which the suite does not drive."""
    names = sorted(n for n, spec in load_ops.OPS.items() if load_ops.unavailable_reason(spec, stream=True) is None)
    pools = load_ops.build_pools(names, seed=3, size=2)
    with daemon.channel() as channel:
        stub = pb_grpc.OperationsStub(channel)
        load_ops.prime_pools(pools, lambda rpc, req: getattr(stub, rpc)(req, timeout=30))
    found = [(name, load_ops.OPS[name].stream_field, req) for name, pool in pools.items() for req in pool]
    found.append(("re-encrypt", "re_encrypt_data", pb.ReEncryptDataRequest(
        incoming_key_identifier=NIST_KEY, outgoing_key_identifier="alias/dek-aes256", cipher_text=NIST_ECB,
        incoming_encryption_attributes=pb.ReEncryptionAttributes(symmetric=sym(pb.ECB).symmetric),
        outgoing_encryption_attributes=pb.ReEncryptionAttributes(symmetric=sym(pb.ECB).symmetric))))
    found.append(("random", "generate_random", pb.GenerateRandomRequest(number_of_bytes=24)))
    assert {field for _, field, _ in found} == set(OPERATIONS), "an operation has no case"
    return found


def _check_same(stub: pb_grpc.OperationsStub, case: Case, got: Any) -> None:
    """The SDK's answer equals the unary path's byte for byte; ECDSA signatures and random bytes differ by
    nature, so those are checked by verification and by shape."""
    label, field, request = case
    rpc = OPERATIONS[field]
    unary = getattr(stub, rpc)(request, timeout=10)
    if field == "generate_random":
        assert len(got.random) == len(unary.random) == 48 and got.random == got.random.upper()
    elif field == "sign" and request.signing_algorithm == pb.ECDSA_SHA_256:
        assert (got.key_arn, got.signing_algorithm) == (unary.key_arn, unary.signing_algorithm)
        check = stub.Verify(pb.VerifyRequest(key_identifier=request.key_identifier, message=request.message,
                                             signature=got.signature, signing_algorithm=request.signing_algorithm),
                            timeout=10)
        assert check.verified, label
    else:
        assert got.SerializeToString(deterministic=True) == unary.SerializeToString(deterministic=True), label
    if "verified" in type(got).DESCRIPTOR.fields_by_name:
        assert got.verified, label


async def test_async_client_matches_the_unary_path_for_every_operation(daemon: DaemonProcess, ops: Any,
                                                                         cases: list[Case]) -> None:
    async with hsmlb_client.AsyncClient(daemon.address) as client:
        async with asyncio.timeout(WAIT_S):
            results = await asyncio.gather(*(getattr(client, field)(req) for _, field, req in cases))
        assert client.operations == len(cases) and client.batches < len(cases)  # they travelled together
    for case, got in zip(cases, results, strict=True):
        _check_same(ops, case, got)


def test_sync_client_matches_the_unary_path_for_every_operation(daemon: DaemonProcess, ops: Any,
                                                                 cases: list[Case]) -> None:
    with hsmlb_client.Client(daemon.address) as client, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda case: getattr(client, case[1])(case[2]), cases, timeout=WAIT_S))
    for case, got in zip(cases, results, strict=True):
        _check_same(ops, case, got)


# ----------------------------------------------------------------------------------- typed errors
async def test_item_errors_raise_typed_exceptions_with_code_and_message(daemon: DaemonProcess) -> None:
    def fields(over: dict[str, str]) -> dict[str, Any]:
        return {"key_identifier": NIST_KEY, "plain_text": NIST_PLAIN, "encryption_attributes": ECB, **over}

    async with hsmlb_client.AsyncClient(daemon.address) as client:
        outcomes = await asyncio.gather(client.encrypt_data(**fields({"key_identifier": "alias/no-such-key"})),
                                        client.encrypt_data(**fields({"plain_text": "ZZ"})), _nist(client),
                                        return_exceptions=True)
    with hsmlb_client.Client(daemon.address) as sync_client:
        sync_outcomes = []
        for over in ({"key_identifier": "alias/no-such-key"}, {"plain_text": "ZZ"}):
            with pytest.raises(hsmlb_client.HsmlbError) as raised:
                sync_client.encrypt_data(**fields(over))
            sync_outcomes.append(raised.value)
    for got in (outcomes[:2], sync_outcomes):
        assert isinstance(got[0], hsmlb_client.NotFound) and got[0].code == grpc.StatusCode.NOT_FOUND
        assert isinstance(got[1], hsmlb_client.InvalidArgument) and got[1].code == grpc.StatusCode.INVALID_ARGUMENT
        assert "plain_text" in got[1].message and "ZZ" not in got[1].message
    assert outcomes[2].cipher_text == NIST_ECB  # a bad neighbour fails only itself


async def test_a_request_field_that_does_not_exist_is_refused_before_sending(daemon: DaemonProcess) -> None:
    async with hsmlb_client.AsyncClient(daemon.address) as client:
        with pytest.raises(hsmlb_client.InvalidArgument, match="EncryptDataRequest"):
            await client.encrypt_data(key_identifier=NIST_KEY, plaintext=NIST_PLAIN)
        assert client.batches == 0


# ------------------------------------------------------------------------------------- timeouts
async def test_a_calls_timeout_reaches_the_daemon_as_the_items_timeout_ms(fresh_daemon: DaemonProcess) -> None:
    """Every node answers a second late: a call with a 0.2 s timeout ends DEADLINE_EXCEEDED (the daemon's
    answer to the item's timeout_ms, or the local deadline), in both clients; it never hangs."""
    with fresh_daemon.channel() as channel:
        inject(channel, NODES, "delay", 1.0)
    async with hsmlb_client.AsyncClient(fresh_daemon.address) as client:
        async with asyncio.timeout(WAIT_S):
            with pytest.raises(hsmlb_client.DeadlineExceeded) as raised:
                await _nist(client, timeout=0.2)
    assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    with hsmlb_client.Client(fresh_daemon.address) as sync_client:
        with pytest.raises(hsmlb_client.DeadlineExceeded):
            _nist(sync_client, timeout=0.2)
        with fresh_daemon.channel() as channel:
            inject(channel, NODES, "delay", 0.0)
        assert _nist(sync_client).cipher_text == NIST_ECB


async def test_a_call_whose_answer_never_comes_ends_at_its_local_deadline(daemon: DaemonProcess) -> None:
    """The answers stop at a proxy: each client gives up at the call's timeout (plus a small grace) with
    DeadlineExceeded, and the stream stays usable once answers flow again."""
    proxy = TcpProxy(daemon.address)
    try:
        async with hsmlb_client.AsyncClient(proxy.address) as client:
            assert (await _nist(client)).cipher_text == NIST_ECB
            proxy.hold_answers()
            async with asyncio.timeout(WAIT_S):
                outcomes = await asyncio.gather(*(_nist(client, timeout=0.2) for _ in range(3)),
                                                return_exceptions=True)
            assert all(isinstance(o, hsmlb_client.DeadlineExceeded) for o in outcomes), outcomes
            assert client.in_flight == 0
            proxy.release_answers()
            async with asyncio.timeout(WAIT_S):
                assert (await _nist(client)).cipher_text == NIST_ECB
        with hsmlb_client.Client(proxy.address) as sync_client:
            assert _nist(sync_client).cipher_text == NIST_ECB
            proxy.hold_answers()
            with pytest.raises(hsmlb_client.DeadlineExceeded):
                _nist(sync_client, timeout=0.2)
            assert sync_client.in_flight == 0
    finally:
        proxy.close()


async def test_calls_queue_behind_the_pipeline_and_leave_in_one_message(daemon: DaemonProcess) -> None:
    """pipeline=1: while a message waits for its answers (held at a proxy), calls made in later event-loop
    turns queue, and all of them leave together once it is answered."""
    proxy = TcpProxy(daemon.address)
    try:
        async with hsmlb_client.AsyncClient(proxy.address, streams=1, pipeline=1) as client:
            assert (await _nist(client)).cipher_text == NIST_ECB  # message 1
            proxy.hold_answers()
            first = asyncio.ensure_future(_nist(client))  # message 2, its answer held
            while client.batches < 2:
                await asyncio.sleep(0)
            later = []
            for _ in range(10):  # ten separate flushes
                later.append(asyncio.ensure_future(_nist(client)))
                await asyncio.sleep(0.001)
            assert client.batches == 2 and client.operations == 12
            proxy.release_answers()
            async with asyncio.timeout(WAIT_S):
                results = await asyncio.gather(first, *later)
            assert [r.cipher_text for r in results] == [NIST_ECB] * 11
            assert client.batches == 3
    finally:
        proxy.close()


# -------------------------------------------------------------------------------- back-pressure
async def test_async_back_pressure_fails_fast_beyond_max_in_flight(daemon: DaemonProcess) -> None:
    async with hsmlb_client.AsyncClient(daemon.address, max_in_flight=4, wait_when_full=False) as client:
        outcomes = await asyncio.gather(*(_nist(client) for _ in range(10)), return_exceptions=True)
    refused = [o for o in outcomes if isinstance(o, hsmlb_client.ResourceExhausted)]
    assert len(refused) == 6 and all("max_in_flight" in o.message for o in refused)
    assert [o.cipher_text for o in outcomes if not isinstance(o, BaseException)] == [NIST_ECB] * 4


async def test_async_back_pressure_waits_within_the_bound(daemon: DaemonProcess) -> None:
    seen: list[int] = []
    async with hsmlb_client.AsyncClient(daemon.address, max_in_flight=4) as client:
        async def sample() -> None:
            while True:
                seen.append(client.in_flight)
                await asyncio.sleep(0)

        sampler = asyncio.ensure_future(sample())
        async with asyncio.timeout(WAIT_S):
            outcomes = await asyncio.gather(*(_nist(client) for _ in range(40)))
        sampler.cancel()
    assert [o.cipher_text for o in outcomes] == [NIST_ECB] * 40
    assert max(seen) == 4


def test_sync_back_pressure_waits_within_the_bound(daemon: DaemonProcess) -> None:
    seen: list[int] = []
    done = threading.Event()
    with hsmlb_client.Client(daemon.address, max_in_flight=3) as client:
        def sample() -> None:
            while not done.wait(0.0005):
                seen.append(client.in_flight)
        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            with ThreadPoolExecutor(12) as pool:
                outcomes = list(pool.map(lambda _: _nist(client).cipher_text, range(60), timeout=WAIT_S))
        finally:
            done.set()
            sampler.join()
    assert outcomes == [NIST_ECB] * 60
    assert 0 < max(seen) <= 3


# ------------------------------------------------------------------------------- broken streams
def _wait(condition: Callable[[], bool]) -> None:
    for _ in range(WAIT_S * 100):
        if condition():
            return
        threading.Event().wait(0.01)
    raise AssertionError("condition not reached")


async def test_a_broken_stream_fails_its_calls_clearly_and_the_next_call_uses_a_new_stream(
        daemon: DaemonProcess) -> None:
    proxy = TcpProxy(daemon.address)
    try:
        async with hsmlb_client.AsyncClient(proxy.address, streams=1) as client:
            assert (await _nist(client)).cipher_text == NIST_ECB  # the stream is up
            proxy.hold_answers()  # the daemon answers; the answers stop at the proxy
            sent = proxy.sent_upstream
            calls = [asyncio.ensure_future(_nist(client)) for _ in range(20)]
            async with asyncio.timeout(WAIT_S):
                while proxy.sent_upstream == sent or client.in_flight < 20:
                    await asyncio.sleep(0.01)
                proxy.cut()
                outcomes = await asyncio.gather(*calls, return_exceptions=True)
            assert all(isinstance(o, hsmlb_client.Unavailable) for o in outcomes), outcomes
            assert all("broke" in o.message and "may or may not have run" in o.message for o in outcomes)
            proxy.release_answers()
            async with asyncio.timeout(WAIT_S):
                assert (await _nist(client)).cipher_text == NIST_ECB
            assert client.in_flight == 0
    finally:
        proxy.close()


def test_a_broken_connection_fails_sync_calls_clearly_and_the_next_call_succeeds(daemon: DaemonProcess) -> None:
    proxy = TcpProxy(daemon.address)
    try:
        with hsmlb_client.Client(proxy.address) as client, ThreadPoolExecutor(8) as pool:
            assert _nist(client).cipher_text == NIST_ECB
            proxy.hold_answers()
            sent = proxy.sent_upstream
            calls = [pool.submit(_nist, client) for _ in range(8)]
            _wait(lambda: proxy.sent_upstream > sent and client.operations == 9)
            proxy.cut()
            proxy.release_answers()
            # A batch on the cut connection fails; one that gRPC had not yet written may go out on the next.
            outcomes = [call.exception(timeout=WAIT_S) or call.result() for call in calls]
            failed = [o for o in outcomes if isinstance(o, BaseException)]
            assert failed and all(isinstance(e, hsmlb_client.Unavailable) and "may or may not have run" in e.message
                                  for e in failed), failed
            assert all(o.cipher_text == NIST_ECB for o in outcomes if not isinstance(o, BaseException))
            assert _nist(client).cipher_text == NIST_ECB
    finally:
        proxy.close()


async def test_closing_the_client_fails_what_is_unanswered_with_cancelled(daemon: DaemonProcess) -> None:
    proxy = TcpProxy(daemon.address)
    try:
        client = hsmlb_client.AsyncClient(proxy.address)
        assert (await _nist(client)).cipher_text == NIST_ECB
        proxy.hold_answers()
        calls = [asyncio.ensure_future(_nist(client)) for _ in range(5)]
        while client.in_flight < 5:
            await asyncio.sleep(0)
        await client.close()
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(o, hsmlb_client.Cancelled) for o in outcomes), outcomes
        with pytest.raises(hsmlb_client.Cancelled):
            await _nist(client)
    finally:
        proxy.close()


def test_random_inputs_travel_unchanged(daemon: DaemonProcess, ops: Any) -> None:
    """Many different plain texts in one batch come back each as its own unary answer (no crossed ids)."""
    rng = random.Random("sdk-ids")
    plains = [rng.randbytes(16 * rng.randint(1, 4)).hex() for _ in range(64)]
    with hsmlb_client.Client(daemon.address) as client, ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda p: client.encrypt_data(key_identifier=NIST_KEY, plain_text=p,
                                                          encryption_attributes=ECB).cipher_text, plains))
    want = [ops.EncryptData(pb.EncryptDataRequest(key_identifier=NIST_KEY, plain_text=p,
                                                  encryption_attributes=sym(pb.ECB)), timeout=10).cipher_text
            for p in plains]
    assert got == want


def test_sync_signatures_leave_in_a_batch_call_of_their_own(daemon: DaemonProcess) -> None:
    """A Batch answer waits for its slowest item: symmetric calls taken with signatures go in another call."""
    message = "00" * 32
    with hsmlb_client.Client(daemon.address, linger=1.0) as client:  # one batcher cycle takes them all
        with ThreadPoolExecutor(5) as pool:
            encrypts = [pool.submit(lambda: _nist(client).cipher_text) for _ in range(3)]
            signs = [pool.submit(lambda: client.sign(key_identifier="alias/sign-rsa", message=message,
                                                     signing_algorithm=pb.RSASSA_PKCS1_V1_5_SHA_256))
                     for _ in range(2)]
            assert [f.result(WAIT_S) for f in encrypts] == [NIST_ECB] * 3
            assert all(f.result(WAIT_S).signature for f in signs)
        assert (client.batches, client.operations) == (2, 5)
