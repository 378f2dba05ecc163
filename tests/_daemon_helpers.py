"""Blocking helpers for tests that drive one daemon on loopback: the NIST request every node can
serve, bounded waits, drills and faults on several nodes, and a check that the daemon still serves."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import grpc

from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests.conftest import sym

NODES = ("node-a", "node-b", "node-c", "node-d")
NIST_KEY = "alias/zek-aes128"  # held by every dev node
NIST_PLAIN = "6BC1BEE22E409F96E93D7E117393172A"  # NIST SP 800-38A F.1.1, AES-128 ECB
NIST_ECB = "3AD77BB40D7A3660A89ECAF32466EF97"


def nist_request() -> pb.EncryptDataRequest:
    return pb.EncryptDataRequest(key_identifier=NIST_KEY, plain_text=NIST_PLAIN, encryption_attributes=sym(pb.ECB))


def wait_for(condition: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    """Poll `condition` until it holds or `timeout` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def inject(channel: grpc.Channel, nodes: Iterable[str], fault: str, value: float) -> None:
    admin = pb_grpc.AdminStub(channel)
    for node in nodes:
        admin.InjectFault(pb.InjectFaultRequest(node=node, fault=fault, value=value), timeout=10)


def set_state(channel: grpc.Channel, nodes: Iterable[str], action: int, who: str = "tests") -> None:
    admin = pb_grpc.AdminStub(channel)
    for node in nodes:
        admin.SetNodeState(pb.SetNodeStateRequest(node=node, action=action, requested_by=who), timeout=10)


def still_serves(channel: grpc.Channel) -> None:
    """One unary call and one Stream message give the NIST answer."""
    ops = pb_grpc.OperationsStub(channel)
    assert ops.EncryptData(nist_request(), timeout=10).cipher_text == NIST_ECB
    replies = list(ops.Stream(iter([pb.StreamRequest(request_id=7, timeout_ms=5000, encrypt_data=nist_request())]),
                              timeout=10))
    assert [(r.request_id, r.encrypt_data.cipher_text) for r in replies] == [(7, NIST_ECB)]
