"""Helpers for the routing and failover tests: daemons with their own router config, bounded load,
node snapshots, and moving a SoftHSM2 token's directory away (a real token failure)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests.conftest import Cluster, DaemonProcess, start_daemon, sym

NODES = ("node-a", "node-b", "node-c", "node-d")
PRIMARY = ("node-a", "node-b", "node-c")
DEK = "alias/dek-aes256"  # on node-a, b, c only
ONLY_A = "alias/only-node-a"
PLAIN = "6BC1BEE22E409F96E93D7E117393172A"  # NIST SP 800-38A F.1, one AES block / two DES blocks
CALL_TIMEOUT_S = 10.0
WHO = "tests@routing"


def encrypt_request(key: str = DEK) -> pb.EncryptDataRequest:
    return pb.EncryptDataRequest(key_identifier=key, plain_text=PLAIN, encryption_attributes=sym(pb.ECB))


# -- daemons with their own router config ------------------------------------------------------------
def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out.get(k) or {}, v) if isinstance(v, dict) else v
    return out


def write_config(cluster: Cluster, directory: Path, router: dict[str, Any]) -> Path:
    """The dev cluster's config with `listen: 127.0.0.1:0` and `router` merged over the defaults."""
    def merge_router(data: dict[str, Any]) -> None:
        data["router"] = _merge(data.get("router") or {}, router)

    return cluster.write_variant(directory / "hsmlb-router.yaml", mutate=merge_router)


@contextlib.contextmanager
def router_daemon(cluster: Cluster, directory: Path, router: dict[str, Any]) -> Iterator[DaemonProcess]:
    proc = start_daemon(write_config(cluster, directory, router), directory / "d.log")
    try:
        yield proc
    finally:
        proc.stop()


# -- admin -------------------------------------------------------------------------------------------
async def nodes(admin: pb_grpc.AdminStub) -> dict[str, pb.NodeStatus]:
    reply = await admin.ListNodes(pb.ListNodesRequest(), timeout=5)
    return {n.name: n for n in reply.nodes}


async def ops_ok(admin: pb_grpc.AdminStub) -> dict[str, int]:
    return {name: n.ops_ok for name, n in (await nodes(admin)).items()}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before[name] for name in before}


async def inject(admin: pb_grpc.AdminStub, node: str, fault: str, value: float = 0.0) -> None:
    await admin.InjectFault(pb.InjectFaultRequest(node=node, fault=fault, value=value), timeout=10)


async def set_state(admin: pb_grpc.AdminStub, node: str, action: int) -> pb.NodeStatus:
    reply = await admin.SetNodeState(pb.SetNodeStateRequest(node=node, action=action, requested_by=WHO), timeout=5)
    return reply.node


def not_routable(state: str) -> bool:
    return state.startswith(("ejected", "unhealthy", "down", "failed", "draining"))


async def wait_state(admin: pb_grpc.AdminStub, node: str, predicate: Callable[[pb.NodeStatus], bool],
                     timeout_s: float, step_s: float = 0.02) -> tuple[float | None, pb.NodeStatus]:
    """Poll ListNodes every `step_s` until predicate(status): (time.monotonic() then, or None; last status)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = (await nodes(admin))[node]
        if predicate(status):
            return time.monotonic(), status
        if time.monotonic() > deadline:
            return None, status
        await asyncio.sleep(step_s)


# -- load --------------------------------------------------------------------------------------------
@dataclass
class LoadResult:
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    @property
    def total(self) -> int:
        return self.ok + self.failed

    def median(self) -> float:
        return statistics.median(self.latencies)


async def run_load(address: str, count: int, concurrency: int, key: str = DEK, max_s: float = 60.0,
                   stop: asyncio.Event | None = None) -> LoadResult:
    """`count` unary encrypts at `concurrency`, ended early by `stop` or after `max_s` seconds."""
    result = LoadResult()
    tickets = iter(range(count))
    deadline = time.monotonic() + max_s
    request = encrypt_request(key)

    async def client(stub: pb_grpc.OperationsStub) -> None:
        for _ in tickets:
            if time.monotonic() > deadline or (stop is not None and stop.is_set()):
                return
            started = time.monotonic()
            try:
                reply = await stub.EncryptData(request, timeout=CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                result.errors[exc.code().name] += 1
            else:
                if reply.cipher_text:
                    result.ok += 1
                else:
                    result.errors["empty reply"] += 1
            result.latencies.append(time.monotonic() - started)

    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.OperationsStub(channel)
        await asyncio.wait_for(asyncio.gather(*(client(stub) for _ in range(concurrency))), max_s + CALL_TIMEOUT_S)
    return result


# -- real token failure ------------------------------------------------------------------------------
def token_dir(cluster: Cluster, label: str) -> Path:
    """tokens/<uuid>/ of the token labelled `label`, found by its token.object."""
    padded = label.encode().ljust(32, b" ")
    for candidate in sorted((cluster.state_dir / "tokens").iterdir()):
        obj = candidate / "token.object"
        if obj.is_file() and padded in obj.read_bytes():
            return candidate
    raise LookupError(f"no token directory for {label}")


class TokenDirs:
    """Moves tokens/<uuid>/ of some nodes out of SoftHSM2's token directory, and back.

    The place is outside tokens/ (a sibling of it): SoftHSM2 takes every subdirectory of its
    token directory as a token, so a new name inside it would still be found on reinitialisation.
    """

    def __init__(self, cluster: Cluster, labels: tuple[str, ...]) -> None:
        self.moves = [(d, cluster.state_dir / f"away-{d.name}") for d in (token_dir(cluster, lab) for lab in labels)]

    def away(self) -> None:
        for src, dst in self.moves:
            os.rename(src, dst)

    def back(self) -> None:
        for src, dst in self.moves:
            if dst.exists() and not src.exists():
                os.rename(dst, src)


@contextlib.contextmanager
def token_dirs(cluster: Cluster, labels: tuple[str, ...]) -> Iterator[TokenDirs]:
    """TokenDirs for `labels`; whatever happens, every directory is back in place afterwards."""
    dirs = TokenDirs(cluster, labels)
    try:
        yield dirs
    finally:
        dirs.back()
