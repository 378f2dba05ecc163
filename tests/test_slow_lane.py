"""RSA signing must not stall the symmetric traffic queued behind it (the worker's fast lane)."""

from __future__ import annotations

import asyncio

import grpc

from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests.conftest import sym

RSA_BACKLOG = 150


async def test_symmetric_op_overtakes_an_rsa_backlog(daemon):
    """Queue RSA signatures on one stream, then encrypt once: the AES reply overtakes most of them."""
    async with grpc.aio.insecure_channel(daemon.address) as channel:
        stub = pb_grpc.OperationsStub(channel)
        call = stub.Stream(timeout=60)
        for i in range(RSA_BACKLOG):
            await call.write(pb.StreamRequest(request_id=i, sign=pb.SignRequest(
                key_identifier="alias/sign-rsa", message="00" * 32,
                signing_algorithm=pb.RSASSA_PKCS1_V1_5_SHA_256)))
        await call.done_writing()
        signed: list[int] = [(await call.read()).request_id]  # the backlog is now queued in the daemon

        async def drain() -> None:
            while (reply := await call.read()) != grpc.aio.EOF:
                assert reply.WhichOneof("result") == "sign", reply.status.message
                signed.append(reply.request_id)

        draining = asyncio.ensure_future(drain())
        reply = await stub.EncryptData(pb.EncryptDataRequest(
            key_identifier="alias/dek-aes256", plain_text="00" * 16, encryption_attributes=sym(pb.ECB)), timeout=30)
        signed_before_aes = len(signed)
        await draining
    assert reply.cipher_text and sorted(signed) == list(range(RSA_BACKLOG))
    overtaken = RSA_BACKLOG - signed_before_aes
    # A FIFO path would answer the AES op after every signature queued before it; the pool serves
    # waiting fast ops first and keeps a slot free of RSA, and the worker runs fast ops first.
    assert overtaken >= RSA_BACKLOG // 2, f"AES reply overtook only {overtaken} of {RSA_BACKLOG} signatures"


def test_stream_rejects_a_message_without_an_operation(daemon):
    with daemon.channel() as channel:
        stub = channel.stream_stream("/hsmlb.v1.Operations/Stream",
                                     request_serializer=pb.StreamRequest.SerializeToString,
                                     response_deserializer=pb.StreamResponse.FromString)
        replies = list(stub(iter([pb.StreamRequest(request_id=7)]), timeout=10))
    assert len(replies) == 1 and replies[0].request_id == 7
    assert replies[0].status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "one operation is required" in replies[0].status.message
