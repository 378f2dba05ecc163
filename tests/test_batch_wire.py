"""The batched wire (StreamBatch, Batch) against a real daemon on loopback: one answer per item,
neighbours unaffected by a bad item, duplicates refused, timeout_ms honoured, results identical to unary."""

from __future__ import annotations

import queue

import grpc

from hsmlb.api.stream import MAX_BATCH_ITEMS
from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests.conftest import sym

ZEK = "alias/zek-aes128"
PLAIN = "6BC1BEE22E409F96E93D7E117393172A"  # NIST SP 800-38A F.1.1 block 1


def _encrypt(request_id: int, key: str = ZEK, plain: str = PLAIN, timeout_ms: int = 0) -> pb.StreamRequest:
    return pb.StreamRequest(request_id=request_id, timeout_ms=timeout_ms, encrypt_data=pb.EncryptDataRequest(
        key_identifier=key, plain_text=plain, encryption_attributes=sym(pb.ECB)))


def _mixed_batch() -> list[pb.StreamRequest]:
    return [
        _encrypt(1),
        pb.StreamRequest(request_id=2),  # no operation
        _encrypt(3, key="alias/does-not-exist"),
        _encrypt(4, plain="ZZ"),  # not hex
        _encrypt(5),
        pb.StreamRequest(request_id=6, generate_random=pb.GenerateRandomRequest(number_of_bytes=8)),
    ]


def test_batch_answers_every_item_once_and_bad_items_do_not_fail_neighbours(ops: pb_grpc.OperationsStub):
    unary = ops.EncryptData(_encrypt(0).encrypt_data, timeout=10)
    answer = ops.Batch(pb.BatchRequest(items=_mixed_batch()), timeout=10)
    by_id = {r.request_id: r for r in answer.items}
    assert len(answer.items) == 6 and sorted(by_id) == [1, 2, 3, 4, 5, 6]
    assert by_id[1].encrypt_data.cipher_text == by_id[5].encrypt_data.cipher_text == unary.cipher_text
    assert by_id[1].encrypt_data == unary  # byte-identical to the unary path, KCV and ARN included
    assert by_id[2].status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "operation" in by_id[2].status.message
    assert by_id[3].status.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert by_id[4].status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "plain_text" in by_id[4].status.message
    assert len(by_id[6].generate_random.random) == 16


def test_batch_refuses_a_duplicate_request_id_for_that_item_only(ops: pb_grpc.OperationsStub):
    answer = ops.Batch(pb.BatchRequest(items=[_encrypt(7), _encrypt(7), _encrypt(8)]), timeout=10)
    assert len(answer.items) == 3
    statuses = [r.status.code for r in answer.items if r.request_id == 7 and r.WhichOneof("result") == "status"]
    assert statuses == [grpc.StatusCode.INVALID_ARGUMENT.value[0]]
    assert sum(r.WhichOneof("result") == "encrypt_data" for r in answer.items) == 2


def test_batch_over_the_item_limit_refuses_only_the_excess(ops: pb_grpc.OperationsStub):
    items = [_encrypt(i) for i in range(MAX_BATCH_ITEMS + 3)]
    answer = ops.Batch(pb.BatchRequest(items=items), timeout=30)
    assert len(answer.items) == MAX_BATCH_ITEMS + 3
    refused = sorted(r.request_id for r in answer.items if r.WhichOneof("result") == "status")
    assert refused == [MAX_BATCH_ITEMS, MAX_BATCH_ITEMS + 1, MAX_BATCH_ITEMS + 2]
    assert all(r.status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] and "items" in r.status.message
               for r in answer.items if r.WhichOneof("result") == "status")


def test_stream_batch_answers_each_item_of_each_message(ops: pb_grpc.OperationsStub):
    messages = [pb.BatchRequest(items=_mixed_batch()),
                pb.BatchRequest(items=[_encrypt(100 + i) for i in range(50)])]
    responses = list(ops.StreamBatch(iter(messages), timeout=20))
    items = [item for message in responses for item in message.items]
    assert sorted(i.request_id for i in items) == [1, 2, 3, 4, 5, 6, *range(100, 150)]
    assert len(responses) < len(items)  # coalesced: fewer response messages than results


def test_stream_batch_refuses_an_id_still_in_flight_across_messages(ops: pb_grpc.OperationsStub):
    """Message 2 repeats an id of message 1 while it may still run: that item is refused, or (if message 1's
    item was already answered) served; never two answers for a running id, never a lost item."""
    requests: queue.Queue[pb.BatchRequest | None] = queue.Queue()
    requests.put(pb.BatchRequest(items=[_encrypt(1), _encrypt(1)]))
    requests.put(None)
    responses = list(ops.StreamBatch(iter(requests.get, None), timeout=20))
    items = [item for message in responses for item in message.items]
    assert len(items) == 2
    assert sorted(i.WhichOneof("result") for i in items) == ["encrypt_data", "status"]


def test_stream_batch_honours_an_items_timeout_ms(ops: pb_grpc.OperationsStub):
    """An RSA signature cannot finish in 1 ms on SoftHSM2 when 64 are queued: those items are answered
    DEADLINE_EXCEEDED (once each); items without a timeout complete."""
    signs = [pb.StreamRequest(request_id=i, timeout_ms=1, sign=pb.SignRequest(
        key_identifier="alias/sign-rsa", message="00" * 32, signing_algorithm=pb.RSASSA_PKCS1_V1_5_SHA_256))
        for i in range(64)]
    responses = list(ops.StreamBatch(iter([pb.BatchRequest(items=[*signs, _encrypt(1000)])]), timeout=30))
    items = [item for message in responses for item in message.items]
    assert sorted(i.request_id for i in items) == [*range(64), 1000]
    late = [i for i in items if i.WhichOneof("result") == "status"]
    assert late, "no item was answered by its timeout_ms"
    assert all(i.status.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0] for i in late)
    assert next(i for i in items if i.request_id == 1000).WhichOneof("result") == "encrypt_data"


def test_a_batch_over_the_message_byte_limit_is_refused_whole_and_the_daemon_serves_on(ops: pb_grpc.OperationsStub):
    """A full batch of the largest items (~9 MB, over gRPC's default 4 MiB) is read; past
    max_receive_message_length (MAX_MESSAGE_BYTES) gRPC refuses the message with RESOURCE_EXHAUSTED;
    the next call is served."""
    from hsmlb.api.codec import MAX_DATA_HEX
    from hsmlb.server import MAX_MESSAGE_BYTES

    # an unknown key: each item is answered NOT_FOUND, so the answer stays small
    largest = pb.BatchRequest(items=[_encrypt(i, key="alias/does-not-exist", plain="00" * (MAX_DATA_HEX // 2))
                                     for i in range(MAX_BATCH_ITEMS)])
    assert 4 * 1024 * 1024 < largest.ByteSize() < MAX_MESSAGE_BYTES
    answer = ops.Batch(largest, timeout=60)
    assert len(answer.items) == MAX_BATCH_ITEMS
    assert all(r.status.code == grpc.StatusCode.NOT_FOUND.value[0] for r in answer.items)
    too_big = pb.BatchRequest(items=[_encrypt(1, plain="0" * (MAX_MESSAGE_BYTES + 2))])
    try:
        ops.Batch(too_big, timeout=30)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    else:
        raise AssertionError("a message over the byte limit was accepted")
    answer = ops.Batch(pb.BatchRequest(items=[_encrypt(1)]), timeout=10)
    assert answer.items[0].WhichOneof("result") == "encrypt_data"
