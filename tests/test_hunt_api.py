"""Bug hunt on the gRPC surface: the bidi Stream under cancellation, odd framing and odd values.

Each test drives a real daemon on loopback (SoftHSM2 tokens behind it) the way a misbehaving
client would, then checks that the daemon answered precisely and kept its state whole.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests._daemon_helpers import (
    NIST_ECB,
    NIST_KEY,
    NIST_PLAIN,
    NODES,
    inject,
    nist_request,
    set_state,
    still_serves,
    wait_for,
)
from tests.conftest import Cluster, DaemonProcess, node_table, start_daemon, sym

STREAM = "/hsmlb.v1.Operations/Stream"


def _msg(request_id: int, timeout_ms: int = 0) -> pb.StreamRequest:
    return pb.StreamRequest(request_id=request_id, timeout_ms=timeout_ms, encrypt_data=nist_request())


def _idle(daemon: DaemonProcess) -> bool:
    return all(n.sessions_in_use == 0 and n.queued == 0 and n.outstanding == 0 for n in node_table(daemon).values())


@pytest.fixture
def probe_daemon(cluster: Cluster, tmp_path: Path) -> Iterator[DaemonProcess]:
    """Breaker opens on one fault and half-opens after 0.3 s; no ejection, no active checks (idle worker)."""
    path = cluster.write_variant(tmp_path / "probe.yaml", router={
        "breaker": {"fail_max": 1, "reset_timeout_s": 0.3}, "outlier": {"observe_only": True},
        "health_check": {"interval_s": 60}})
    daemon = start_daemon(path, tmp_path / "daemon.log")
    yield daemon
    daemon.stop()


# ------------------------------------------------------------------ cancellation and breaker probes
def test_stream_cancelled_during_a_breaker_probe_does_not_strand_the_breaker(probe_daemon: DaemonProcess) -> None:
    """A half-open breaker's one probe rides a Stream message; the client cancels before the probe fails.

    The failure must still reach the breaker (probe released, fault recorded): else the breaker stays
    half-open with its probe 'in flight' forever and the node never gets traffic again.
    """
    others = ("node-b", "node-c", "node-d")
    with probe_daemon.channel() as channel:
        ops = pb_grpc.OperationsStub(channel)
        set_state(channel, others, pb.DRAIN, "test_hunt_api")
        inject(channel, ("node-a",), "error_rate", 1.0)
        with pytest.raises(grpc.RpcError):
            ops.EncryptData(nist_request(), timeout=10)
        assert node_table(probe_daemon)["node-a"].breaker == "open"
        inject(channel, ("node-a",), "delay", 1.0)
        time.sleep(0.4)  # past reset_timeout_s: the next request is the half-open probe

        async def probe_then_cancel() -> None:
            async with grpc.aio.insecure_channel(probe_daemon.address) as aio_channel:
                call = pb_grpc.OperationsStub(aio_channel).Stream(timeout=30)
                await call.write(_msg(1))
                deadline = time.monotonic() + 5
                while node_table(probe_daemon)["node-a"].sessions_in_use == 0 and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                assert node_table(probe_daemon)["node-a"].breaker == "half-open"
                call.cancel()

        asyncio.run(probe_then_cancel())
        assert wait_for(lambda: _idle(probe_daemon), 10), "the cancelled probe never finished"
        inject(channel, ("node-a",), "delay", 0.0)
        inject(channel, ("node-a",), "error_rate", 0.0)
        set_state(channel, others, pb.RESTORE, "test_hunt_api")
        deadline = time.monotonic() + 8
        for _ in range(400):
            if node_table(probe_daemon)["node-a"].breaker == "closed" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
            assert ops.EncryptData(nist_request(), timeout=10).cipher_text == NIST_ECB
        table = node_table(probe_daemon)
        assert table["node-a"].breaker == "closed", table["node-a"]


def test_cancelled_stream_gives_back_its_queued_work(fresh_daemon: DaemonProcess) -> None:
    """A client that cancels a Stream with hundreds of messages queued: like a cancelled unary call, its
    queued operations leave the node queues at once instead of running for nobody (holding capacity)."""
    with fresh_daemon.channel() as channel:
        inject(channel, NODES, "delay", 0.05)  # ~80 ops/s over the four workers: 1,000 ops take ~12 s

        async def flood_then_cancel() -> int:
            async with grpc.aio.insecure_channel(fresh_daemon.address) as aio_channel:
                call = pb_grpc.OperationsStub(aio_channel).Stream(timeout=60)
                for n in range(1000):
                    await call.write(_msg(n))
                deadline = time.monotonic() + 10
                queued = 0
                while time.monotonic() < deadline:
                    queued = sum(n.queued for n in node_table(fresh_daemon).values())
                    if queued >= 500:
                        break
                    await asyncio.sleep(0.05)
                call.cancel()
                return queued

        queued_at_cancel = asyncio.run(flood_then_cancel())
        assert queued_at_cancel >= 500, "the messages never queued: the test proved nothing"
        assert wait_for(lambda: sum(n.queued for n in node_table(fresh_daemon).values()) == 0, 3), \
            "a cancelled stream's queued operations kept running"
        inject(channel, NODES, "delay", 0.0)
        assert wait_for(lambda: _idle(fresh_daemon), 5)
        still_serves(channel)
    assert fresh_daemon.proc.poll() is None


# ------------------------------------------------------------------ values the proto allows, the API does not
def _arqc(mode: int) -> pb.VerifyAuthRequestCryptogramRequest:
    return pb.VerifyAuthRequestCryptogramRequest(
        key_identifier="alias/no-such-key", transaction_data="00" * 16, auth_request_cryptogram="00" * 8,
        major_key_derivation_mode=mode, session_key_derivation_attributes=pb.SessionKeyDerivation(
            emv_common=pb.SessionKeyEmvCommon(primary_account_number="4111111111111111", pan_sequence_number="00",
                                              application_transaction_counter="0001")))


def _dukpt_encrypt(variant: int) -> pb.EncryptDataRequest:
    return pb.EncryptDataRequest(key_identifier="alias/no-such-key", plain_text=NIST_PLAIN,
                                 encryption_attributes=pb.EncryptionDecryptionAttributes(
                                     dukpt=pb.DukptEncryptionAttributes(key_serial_number="FFFF9876543210E00001",
                                                                        mode=pb.ECB, dukpt_key_variant=variant)))


UNKNOWN_ENUMS = {
    "arqc-major-key-derivation-mode-99": ("VerifyAuthRequestCryptogram", "verify_auth_request_cryptogram",
                                          _arqc(99), "MajorKeyDerivationMode"),
    "dukpt-key-variant-7": ("EncryptData", "encrypt_data", _dukpt_encrypt(7), "DukptKeyVariant"),
}


@pytest.mark.parametrize("case", list(UNKNOWN_ENUMS.values()), ids=list(UNKNOWN_ENUMS))
def test_unknown_enum_number_in_a_payment_request_is_invalid_argument(daemon: DaemonProcess, case: tuple) -> None:
    """proto3 enums are open: a raw number outside the enum arrives intact and must be refused by name."""
    method, field, request, member = case
    with daemon.channel() as channel:
        ops = pb_grpc.OperationsStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            getattr(ops, method)(request, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert member in err.value.details()
        replies = {r.request_id: r for r in ops.Stream(iter([
            _msg(1), pb.StreamRequest(request_id=2, **{field: request}), _msg(3)]), timeout=10)}
        assert set(replies) == {1, 2, 3}
        assert replies[2].status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], replies[2]
        assert member in replies[2].status.message
        assert replies[1].encrypt_data.cipher_text == replies[3].encrypt_data.cipher_text == NIST_ECB
    assert "4111111111111111" not in daemon.log_text()


def test_undecodable_stream_message_fails_the_stream_visibly(daemon: DaemonProcess) -> None:
    """A message that does not parse (bad UTF-8 in a string) ends the Stream with an error status:
    a clean OK end would let the client believe the messages after it were all answered."""
    good = _msg(1).SerializeToString()
    bad = pb.StreamRequest(request_id=2, encrypt_data=nist_request()).SerializeToString() + b"\x08\x02" \
        + b"\x52\x04\x12\x02\xff\xfe"  # encrypt_data again (merged), with plain_text as invalid UTF-8
    later = _msg(3).SerializeToString()
    with daemon.channel() as channel:
        call = channel.stream_stream(STREAM)(iter([good, bad, later]), timeout=10)
        replies = []
        with pytest.raises(grpc.RpcError) as err:
            for raw in call:
                replies.append(pb.StreamResponse.FromString(raw))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert "not a valid StreamRequest" in (err.value.details() or "")
        assert all(r.request_id != 3 for r in replies)
        still_serves(channel)


# ------------------------------------------------------------------ framing and deadline extremes that hold
def test_duplicate_request_ids_and_extreme_timeouts_are_each_answered(daemon: DaemonProcess) -> None:
    """Every message is answered once; a request_id still in flight is refused for that message
    (INVALID_ARGUMENT naming request_id), and one already answered may be used again; timeout_ms at
    uint32's maximum is a deadline like any other."""
    requests = [_msg(5), _msg(5), _msg(5, 2**32 - 1), _msg(0, 2**32 - 1), _msg(2**64 - 1, 30_000)]
    with daemon.channel() as channel:
        replies = list(pb_grpc.OperationsStub(channel).Stream(iter(requests), timeout=10))
    assert sorted(r.request_id for r in replies) == [0, 5, 5, 5, 2**64 - 1]
    served = [r for r in replies if r.WhichOneof("result") == "encrypt_data"]
    refused = [r for r in replies if r.WhichOneof("result") == "status"]
    assert all(r.encrypt_data.cipher_text == NIST_ECB for r in served), replies
    assert {r.request_id for r in served} >= {0, 5, 2**64 - 1}
    assert all(r.request_id == 5 and r.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
               and "request_id" in r.status.message for r in refused), replies


def test_oversize_stream_message_fails_the_stream_not_the_daemon(daemon: DaemonProcess) -> None:
    """A message beyond the server's receive limit (MAX_MESSAGE_BYTES): RESOURCE_EXHAUSTED for that stream only."""
    from hsmlb.server import MAX_MESSAGE_BYTES

    huge = pb.StreamRequest(request_id=2, encrypt_data=pb.EncryptDataRequest(
        key_identifier=NIST_KEY, plain_text="00" * (MAX_MESSAGE_BYTES // 2 + 2**20), encryption_attributes=sym(pb.ECB)))
    with daemon.channel() as channel:
        with pytest.raises(grpc.RpcError) as err:
            list(pb_grpc.OperationsStub(channel).Stream(iter([_msg(1), huge, _msg(3)]), timeout=10))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
        still_serves(channel)


def test_stream_deadline_with_work_in_flight_leaves_the_pools_idle(fresh_daemon: DaemonProcess) -> None:
    with fresh_daemon.channel() as channel:
        inject(channel, NODES, "delay", 0.2)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            list(pb_grpc.OperationsStub(channel).Stream(iter([_msg(n) for n in range(40)]), timeout=0.5))
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 3
        assert wait_for(lambda: sum(n.queued for n in node_table(fresh_daemon).values()) == 0, 2)
        inject(channel, NODES, "delay", 0.0)
        assert wait_for(lambda: _idle(fresh_daemon), 5)
        still_serves(channel)


def test_many_concurrent_streams_some_cancelled_leave_no_residue(fresh_daemon: DaemonProcess) -> None:
    """150 streams on one connection, every third cancelled after its first reply: the others get every
    answer, and the pools end idle (no slot, queue entry or load left behind)."""

    async def one(stub: pb_grpc.OperationsStub, n: int) -> int:
        call = stub.Stream(timeout=30)
        for i in range(10):
            await call.write(_msg(n * 100 + i))
        await call.done_writing()
        got = 0
        async for reply in call:
            assert reply.encrypt_data.cipher_text == NIST_ECB, reply
            got += 1
            if n % 3 == 0:
                call.cancel()
                break
        return got

    async def run() -> list[int]:
        async with grpc.aio.insecure_channel(fresh_daemon.address) as aio_channel:
            stub = pb_grpc.OperationsStub(aio_channel)
            return await asyncio.wait_for(asyncio.gather(*(one(stub, n) for n in range(150))), 30)

    counts = asyncio.run(run())
    assert [c for n, c in enumerate(counts) if n % 3] == [10] * 100
    assert wait_for(lambda: _idle(fresh_daemon), 5), node_table(fresh_daemon)
    with fresh_daemon.channel() as channel:
        still_serves(channel)


@pytest.mark.parametrize("method", ["/hsmlb.v1.Operations/EncryptData", "/hsmlb.v1.Admin/SetNodeState"])
def test_undecodable_unary_request_is_invalid_argument(daemon: DaemonProcess, method: str) -> None:
    """Field 1 (a string in both requests) holding bytes that are not UTF-8: protobuf refuses to parse it."""
    garbage = b"\x0a\x04\xff\xfe\xfd\xfc"
    with daemon.channel() as channel:
        with pytest.raises(grpc.RpcError) as refused:
            channel.unary_unary(method)(garbage, timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
        assert "is not a valid hsmlb.v1." in (refused.value.details() or "")
        still_serves(channel)
