"""Fuzzing the daemon's wire: random and mutated messages to every Operations RPC and the read-only Admin ones.

Shared by tests/test_fuzz.py (a few thousand messages in CI) and bench/fuzz_daemon.py (100,000).
Everything travels as raw bytes (no client-side serializer that could fail or fix things up), so every
status seen is the daemon's own answer. The verdicts:
- never INTERNAL or UNKNOWN, from a unary call, a stream's end or any item's Status;
- bytes that are not the request type: INVALID_ARGUMENT (RESOURCE_EXHAUSTED when over the size limit);
- no planted PAN, PIN block or key hex in any status message (tests/_sensitive_plant.leaks).
Admin's InjectFault and SetNodeState are left out: a mutation that happens to decode would fail nodes.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from hsmlb.server import MAX_MESSAGE_BYTES
from hsmlb.v1 import hsmlb_pb2 as pb
from tests._sensitive_plant import STREAM_FIELDS, VARIANTS, leaks, planted_requests

OPS = "/hsmlb.v1.Operations/"
ADMIN = {"ListNodes": pb.ListNodesRequest, "GetRouterStatus": pb.GetRouterStatusRequest}
BAD = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)


@dataclass
class Report:
    codes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)  # what broke a verdict (method, kind, code; no payload)
    texts: list[str] = field(default_factory=list)  # every status message seen, for the leak check
    messages: int = 0

    def leaks(self) -> list[str]:
        return sorted({leak for text in self.texts for leak in leaks(text)})

    def merge(self, other: Report) -> None:
        self.codes.update(other.codes)
        self.failures += other.failures
        self.texts += other.texts
        self.messages += other.messages


class Mutator:
    """Seeded mutations: random bytes, byte-level edits of a valid encoding, field-level edits."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.bases = planted_requests()

    def base(self) -> tuple[str, Message]:
        method, request = self.rng.choice(self.bases)
        copy = type(request)()
        copy.CopyFrom(request)
        return method, copy

    def random_bytes(self) -> bytes:
        return self.rng.randbytes(self.rng.choice((0, 1, 2, 5, 17, 64, 300, 2000)))

    def byte_edit(self, data: bytes) -> bytes:
        rng = self.rng
        buf = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            choice = rng.randrange(6)
            at = rng.randrange(len(buf) + 1)
            if choice == 0 and buf:
                buf[min(at, len(buf) - 1)] ^= 1 << rng.randrange(8)
            elif choice == 1:
                buf[at:at] = rng.randbytes(rng.randint(1, 8))
            elif choice == 2:
                del buf[at:at + rng.randint(1, 8)]
            elif choice == 3:
                buf = buf[:at]
            elif choice == 4:  # a varint-ish run: huge lengths and field numbers
                buf[at:at] = bytes([0xFF] * rng.randint(1, 10)) + b"\x01"
            else:
                buf[at:at] = rng.choice((b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80"))  # invalid UTF-8
        return bytes(buf)

    def field_edit(self, message: Message, depth: int = 0) -> None:
        """Set one reachable field to a hostile value (strings, numbers, enum numbers out of range)."""
        rng = self.rng
        fields = message.DESCRIPTOR.fields
        if not fields:
            return
        f = rng.choice(fields)
        if f.type == f.TYPE_MESSAGE and not f.is_repeated:
            if depth < 4 and rng.random() < 0.7:
                self.field_edit(getattr(message, f.name), depth + 1)
            else:
                message.ClearField(f.name)
        elif f.is_repeated:
            return
        elif f.type == f.TYPE_STRING:
            setattr(message, f.name, rng.choice((
                "", rng.choice(VARIANTS), "alias/" + "x" * rng.randint(1, 400), "\u0000\u202e" * 3,
                "".join(rng.choice("0123456789ABCDEFG ") for _ in range(rng.randint(1, 80))),
                "0" * rng.choice((1, 7, 15, 16, 31, 33, 8193)))))
        elif f.type == f.TYPE_BOOL:
            setattr(message, f.name, rng.random() < 0.5)
        elif f.type == f.TYPE_ENUM:
            setattr(message, f.name, rng.choice((0, 1, 2, 5, 99, -1, 2**31 - 1)))
        elif f.type in (f.TYPE_UINT32, f.TYPE_FIXED32):
            setattr(message, f.name, rng.choice((0, 1, 7, 1025, 2**32 - 1)))
        elif f.type in (f.TYPE_UINT64, f.TYPE_FIXED64):
            setattr(message, f.name, rng.choice((0, 1, 2**64 - 1)))
        elif f.type in (f.TYPE_INT32, f.TYPE_SINT32, f.TYPE_SFIXED32):
            setattr(message, f.name, rng.choice((0, -1, 1, 4, 17, 1025, 2**31 - 1, -(2**31))))
        elif f.type in (f.TYPE_INT64, f.TYPE_SINT64, f.TYPE_SFIXED64):
            setattr(message, f.name, rng.choice((0, -1, 2**63 - 1)))

    def request(self) -> tuple[str, str, bytes]:
        """(method, mutation kind, bytes) for one unary call."""
        rng = self.rng
        method, message = self.base()
        kind = rng.choice(("random", "bytes", "fields", "fields", "fields", "valid"))
        if kind == "random":
            return method, kind, self.random_bytes()
        if kind == "fields":
            for _ in range(rng.randint(1, 3)):
                self.field_edit(message)
        data = message.SerializeToString()
        return method, kind, self.byte_edit(data) if kind == "bytes" else data

    def stream_item(self, request_id: int) -> pb.StreamRequest:
        """A decodable StreamRequest: one mutated operation, or none, with hostile ids and timeouts."""
        rng = self.rng
        method, message = self.base()
        for _ in range(rng.randint(0, 3)):
            self.field_edit(message)
        item = pb.StreamRequest(request_id=request_id)
        if rng.random() < 0.9:
            getattr(item, STREAM_FIELDS[method]).CopyFrom(message)
        if rng.random() < 0.2:
            item.timeout_ms = rng.choice((1, 50, 2**32 - 1))
        if rng.random() < 0.1:
            item.traceparent = rng.choice(("", "00-" + "0" * 32 + "-" + "0" * 16 + "-01", rng.choice(VARIANTS)))
        return item


def _decodes(request_type: Any, data: bytes) -> bool:
    try:
        request_type.FromString(data)
    except DecodeError:
        return False
    return True


def _request_type(method: str) -> Any:
    service = pb.DESCRIPTOR.services_by_name["Operations"]
    return getattr(pb, service.methods_by_name[method].input_type.name)


def _check_items(report: Report, where: str, items: list[pb.StreamResponse]) -> None:
    for item in items:
        if item.WhichOneof("result") != "status":
            report.codes["item OK"] += 1
            continue
        code = grpc.StatusCode.OK
        for known in grpc.StatusCode:
            if known.value[0] == item.status.code:
                code = known
        report.codes[f"item {code.name}"] += 1
        report.texts.append(item.status.message)
        if code in BAD or code == grpc.StatusCode.OK:
            report.failures.append(f"{where}: item answered {code.name} ({item.status.code})")


def fuzz_unary(channel: grpc.Channel, mutator: Mutator, count: int) -> Report:
    report = Report()
    for n in range(count):
        if n % 50 == 49:
            method, kind = mutator.rng.choice(list(ADMIN)), "admin"
            path = "/hsmlb.v1.Admin/" + method
            data = mutator.random_bytes() if mutator.rng.random() < 0.5 else b""
            request_type = ADMIN[method]
        else:
            method, kind, data = mutator.request()
            path, request_type = OPS + method, _request_type(method)
        report.messages += 1
        try:
            channel.unary_unary(path)(data, timeout=10)
            report.codes["OK"] += 1
            continue
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
        report.codes[code.name] += 1
        report.texts.append(details)
        if code in BAD:
            report.failures.append(f"{method} ({kind}): {code.name}")
        elif not _decodes(request_type, data) and code not in (grpc.StatusCode.INVALID_ARGUMENT,
                                                                grpc.StatusCode.RESOURCE_EXHAUSTED):
            report.failures.append(f"{method} ({kind}, undecodable): {code.name}, not INVALID_ARGUMENT")
    return report


def fuzz_stream(channel: grpc.Channel, mutator: Mutator, count: int, per_call: int = 200) -> Report:
    """Stream calls of `per_call` mutated items; one call in four ends with bytes that do not decode."""
    report = Report()
    rng = mutator.rng
    sent = 0
    while sent < count:
        n = min(per_call, count - sent)
        raw = [mutator.stream_item(rng.choice((1, 2, 3, 2**64 - 1)) if rng.random() < 0.05 else i).SerializeToString()
               for i in range(n)]
        tail = rng.random() < 0.25
        if tail:
            raw.append(mutator.byte_edit(raw[-1]) + b"\x52\x02\xff\xfe")
        sent += len(raw)
        report.messages += len(raw)
        answers: list[pb.StreamResponse] = []
        try:
            for data in channel.stream_stream(OPS + "Stream")(iter(raw), timeout=60):
                answers.append(pb.StreamResponse.FromString(data))
            end = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            end = exc.code()
            report.texts.append(exc.details() or "")
        report.codes[f"stream end {end.name}"] += 1
        _check_items(report, "Stream", answers)
        undecodable = tail and not _decodes(pb.StreamRequest, raw[-1])
        if end in BAD or (undecodable and end != grpc.StatusCode.INVALID_ARGUMENT):
            report.failures.append(f"Stream ended {end.name} (undecodable tail: {undecodable})")
        elif end == grpc.StatusCode.OK and len(answers) != len(raw):
            report.failures.append(f"Stream answered {len(answers)} of {len(raw)} messages")
    return report


def fuzz_batches(channel: grpc.Channel, mutator: Mutator, count: int, per_batch: int = 50) -> Report:
    """BatchRequests over StreamBatch and Batch, some with bytes edited after encoding."""
    report = Report()
    rng = mutator.rng
    sent = 0
    while sent < count:
        batch = pb.BatchRequest(items=[mutator.stream_item(i) for i in range(min(per_batch, count - sent))])
        sent += len(batch.items)
        report.messages += len(batch.items)
        data = batch.SerializeToString()
        edited = rng.random() < 0.2
        if edited:
            data = mutator.byte_edit(data)
        decodes = _decodes(pb.BatchRequest, data)
        try:
            if rng.random() < 0.5:
                answers = [pb.BatchResponse.FromString(channel.unary_unary(OPS + "Batch")(data, timeout=60))]
            else:
                answers = [pb.BatchResponse.FromString(raw)
                           for raw in channel.stream_stream(OPS + "StreamBatch")(iter([data]), timeout=60)]
            end = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            answers, end = [], exc.code()
            report.texts.append(exc.details() or "")
        report.codes[f"batch end {end.name}"] += 1
        for answer in answers:
            _check_items(report, "Batch", list(answer.items))
        if end in BAD or (not decodes and end != grpc.StatusCode.INVALID_ARGUMENT):
            report.failures.append(f"Batch ended {end.name} (decodes: {decodes}, edited: {edited})")
    return report


def oversized(channel: grpc.Channel) -> Report:
    """One message over the server's receive limit on each path: RESOURCE_EXHAUSTED, nothing else."""
    report = Report()
    data = b"\x0a" + b"\xff" * 5 + b"\x00" * (MAX_MESSAGE_BYTES + 1)
    calls = {"unary": lambda: channel.unary_unary(OPS + "EncryptData")(data, timeout=60),
             "Stream": lambda: list(channel.stream_stream(OPS + "Stream")(iter([data]), timeout=60)),
             "Batch": lambda: channel.unary_unary(OPS + "Batch")(data, timeout=60)}
    for where, call in calls.items():
        report.messages += 1
        try:
            call()
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
            report.texts.append(exc.details() or "")
        report.codes[f"oversized {code.name}"] += 1
        if code != grpc.StatusCode.RESOURCE_EXHAUSTED:
            report.failures.append(f"{where}: a message over {MAX_MESSAGE_BYTES} bytes answered {code.name}")
    return report


def fuzz(address: str, seed: int, unary: int, stream: int, batched: int) -> Report:
    mutator = Mutator(seed)
    report = Report()
    with grpc.insecure_channel(address) as channel:
        report.merge(oversized(channel))
        report.merge(fuzz_unary(channel, mutator, unary))
        report.merge(fuzz_stream(channel, mutator, stream))
        report.merge(fuzz_batches(channel, mutator, batched))
    return report
