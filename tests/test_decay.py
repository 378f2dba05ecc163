"""Session decay on a node (sessions closed, login lost, library finalized, worker killed) under a
bounded client load: the worker or its supervisor recovers, the router retries elsewhere, and no
client request fails."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from hsmlb.backends import wire
from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests._daemon_helpers import NIST_ECB, NIST_PLAIN, NODES
from tests.conftest import Cluster, DaemonProcess, start_daemon, sym

REQUESTS = 3000
UNARY_CLIENTS = 6
STREAM_CLIENTS = 2
STREAM_WINDOW = 16
# Ticket n >= BOUNDARIES[i] is only issued once the fault on NODES[i] has been injected, and the
# injection is sent while the tickets before the boundary are still running: every fault lands
# under live load, and the load cannot finish before every node has been broken.
BOUNDARIES = (400, 1000, 1600, 2200)
INJECT_AHEAD = 150
CALL_TIMEOUT_S = 30
LOAD_TIMEOUT_S = 240
RECOVER_TIMEOUT_S = 15

# NIST SP 800-38A F.1.1 (AES-128 ECB) and SP 800-38B D.1 example 2 (AES-128 CMAC)
NIST_CMAC = "070A16B46B4D4144F79BDD9DD04A287C"


def _encrypt_request() -> pb.EncryptDataRequest:
    return pb.EncryptDataRequest(key_identifier="alias/zek-aes128", plain_text=NIST_PLAIN,
                                 encryption_attributes=sym(pb.ECB))


def _mac_request() -> pb.GenerateMacRequest:
    return pb.GenerateMacRequest(key_identifier="alias/cmac-aes128", message_data=NIST_PLAIN,
                                 generation_attributes=pb.MacAttributes(algorithm=pb.CMAC))


def _request(ticket: int) -> tuple[str, Any, Callable[[Any], bool]]:
    """(stream oneof field, request, check of the response) for one ticket: encrypt and MAC alternate."""
    if ticket % 2:
        return "generate_mac", _mac_request(), lambda r: r.mac == NIST_CMAC
    return "encrypt_data", _encrypt_request(), lambda r: r.cipher_text == NIST_ECB


UNARY = {"encrypt_data": "EncryptData", "generate_mac": "GenerateMac"}


@dataclass
class Load:
    """A fixed number of requests over unary calls and streams, gated by fault injections."""

    address: str
    issued: int = 0
    done: int = 0
    failures: list[str] = field(default_factory=list)
    gates: list[asyncio.Event] = field(default_factory=lambda: [asyncio.Event() for _ in BOUNDARIES])
    progress: asyncio.Event = field(default_factory=asyncio.Event)

    async def ticket(self) -> int | None:
        if self.issued >= REQUESTS:
            return None
        ticket, self.issued = self.issued, self.issued + 1
        for boundary, gate in zip(BOUNDARIES, self.gates, strict=True):
            if ticket >= boundary:
                await gate.wait()
        return ticket

    def finish(self, ticket: int, failure: str | None) -> None:
        self.done += 1
        if failure is not None:
            self.failures.append(f"ticket {ticket}: {failure}")
        self.progress.set()

    async def wait_done(self, count: int) -> None:
        while self.done < count:
            self.progress.clear()
            await self.progress.wait()

    async def unary_client(self) -> None:
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = pb_grpc.OperationsStub(channel)
            while (ticket := await self.ticket()) is not None:
                name, request, check = _request(ticket)
                try:
                    reply = await getattr(stub, UNARY[name])(request, timeout=CALL_TIMEOUT_S)
                    self.finish(ticket, None if check(reply) else f"wrong {name} result {reply}")
                except grpc.aio.AioRpcError as exc:
                    self.finish(ticket, f"{name}: {exc.code().name}: {exc.details()}")

    async def stream_client(self) -> None:
        window = asyncio.Semaphore(STREAM_WINDOW)
        waiting: dict[int, tuple[str, Callable[[Any], bool]]] = {}
        async with grpc.aio.insecure_channel(self.address) as channel:
            call = pb_grpc.OperationsStub(channel).Stream(timeout=LOAD_TIMEOUT_S)

            async def write() -> None:
                while (ticket := await self.ticket()) is not None:
                    await window.acquire()
                    name, request, check = _request(ticket)
                    waiting[ticket] = (name, check)
                    await call.write(pb.StreamRequest(request_id=ticket, timeout_ms=CALL_TIMEOUT_S * 1000,
                                                      **{name: request}))
                await call.done_writing()

            writer = asyncio.ensure_future(write())
            try:
                while (reply := await call.read()) != grpc.aio.EOF:
                    name, check = waiting.pop(reply.request_id)
                    window.release()
                    result = reply.WhichOneof("result")
                    if result == name:
                        ok = check(getattr(reply, name))
                        self.finish(reply.request_id, None if ok else f"wrong {name} result")
                    else:
                        self.finish(reply.request_id, f"{name}: stream status {reply.status.code} "
                                                      f"{reply.status.message}")
                await writer
            finally:
                writer.cancel()
        for ticket, (name, _) in waiting.items():
            self.finish(ticket, f"{name}: no stream response")


async def _list_nodes(admin: pb_grpc.AdminStub) -> dict[str, pb.NodeStatus]:
    reply = await admin.ListNodes(pb.ListNodesRequest(), timeout=5)
    return {n.name: n for n in reply.nodes}


async def _wait_backend_up(admin: pb_grpc.AdminStub, node: str) -> bool:
    deadline = time.monotonic() + RECOVER_TIMEOUT_S
    while time.monotonic() < deadline:
        if (await _list_nodes(admin))[node].backend_state == "up":
            return True
        await asyncio.sleep(0.05)
    return False


async def _wait_all_healthy(admin: pb_grpc.AdminStub) -> dict[str, pb.NodeStatus]:
    deadline = time.monotonic() + RECOVER_TIMEOUT_S
    nodes = await _list_nodes(admin)
    while time.monotonic() < deadline:
        if all(n.backend_state == "up" and n.state.startswith("healthy") for n in nodes.values()):
            break
        await asyncio.sleep(0.1)
        nodes = await _list_nodes(admin)
    return nodes


async def _check_each_node(address: str) -> None:
    """With the other nodes drained, each node alone answers the NIST vectors correctly."""
    async with grpc.aio.insecure_channel(address) as channel:
        admin, ops = pb_grpc.AdminStub(channel), pb_grpc.OperationsStub(channel)
        for node in NODES:
            others = [n for n in NODES if n != node]
            for other in others:
                await admin.SetNodeState(pb.SetNodeStateRequest(node=other, action=pb.DRAIN,
                                                                requested_by="test_decay"), timeout=5)
            before = (await _list_nodes(admin))[node].ops_ok
            reply = await ops.EncryptData(_encrypt_request(), timeout=10)
            mac = await ops.GenerateMac(_mac_request(), timeout=10)
            after = (await _list_nodes(admin))[node].ops_ok
            for other in others:
                await admin.SetNodeState(pb.SetNodeStateRequest(node=other, action=pb.RESTORE,
                                                                requested_by="test_decay"), timeout=5)
            assert reply.cipher_text == NIST_ECB, f"{node} after recovery: {reply.cipher_text}"
            assert mac.mac == NIST_CMAC, f"{node} after recovery: {mac.mac}"
            assert after - before == 2, f"{node} served {after - before} of the 2 checks (others drained)"


async def _decay_under_load(address: str, fault: str) -> tuple[Load, list[int], dict[str, pb.NodeStatus]]:
    load = Load(address)
    injected_at: list[int] = []
    async with grpc.aio.insecure_channel(address) as channel:
        admin = pb_grpc.AdminStub(channel)

        async def inject() -> None:
            for i, (node, boundary) in enumerate(zip(NODES, BOUNDARIES, strict=True)):
                await load.wait_done(boundary - INJECT_AHEAD)
                if fault == "kill_worker" and i:
                    assert await _wait_backend_up(admin, NODES[i - 1]), f"{NODES[i - 1]} did not come back"
                await admin.InjectFault(pb.InjectFaultRequest(node=node, fault=fault), timeout=10)
                injected_at.append(load.done)
                load.gates[i].set()

        clients = [load.unary_client() for _ in range(UNARY_CLIENTS)]
        clients += [load.stream_client() for _ in range(STREAM_CLIENTS)]
        injector = asyncio.ensure_future(inject())
        try:
            await asyncio.wait_for(asyncio.gather(injector, *clients), LOAD_TIMEOUT_S)
        finally:
            injector.cancel()
        if fault == "kill_worker":
            assert await _wait_backend_up(admin, NODES[-1]), f"{NODES[-1]} did not come back up"
        nodes = await _wait_all_healthy(admin)
    return load, injected_at, nodes


@pytest.mark.parametrize("fault", ["close_sessions", "logout", "finalize", "kill_worker"])
async def test_node_decay_under_load_fails_no_client_request(fresh_daemon: DaemonProcess, fault: str) -> None:
    load, injected_at, nodes = await _decay_under_load(fresh_daemon.address, fault)

    assert load.failures == [], f"{len(load.failures)} failed client requests, first: {load.failures[:5]}"
    assert load.done == REQUESTS
    assert len(injected_at) == len(NODES)
    assert all(at < REQUESTS for at in injected_at), f"a fault landed after the load: {injected_at}"
    for name, node in nodes.items():
        assert node.backend_state == "up", f"{name}: {node.backend_state} ({node.detail})"
        assert node.state.startswith("healthy"), f"{name} did not recover: {node.state} ({node.detail})"
    assert sum(n.ops_ok for n in nodes.values()) >= REQUESTS
    await _check_each_node(fresh_daemon.address)
    assert fresh_daemon.proc.poll() is None, "the daemon exited"


SOLE_KEY_PLAIN = "00112233445566778899AABBCCDDEEFF"  # FIPS-197 C.1, AES-128 key 000102..0F
SOLE_KEY_CIPHER = "69C4E0D86A7B0430D8CDB78070B4C55A"


def _config_copy(cluster: Cluster, tmp_path: Path, **changes: Any) -> Path:
    config = yaml.safe_load(cluster.config.read_text())
    config.update(listen="127.0.0.1:0", **changes)
    path = tmp_path / "hsmlb.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("fault", ["close_sessions", "logout", "finalize"])
def test_decay_on_the_only_holder_of_a_key_fails_no_request(cluster: Cluster, tmp_path: Path, fault: str) -> None:
    """alias/only-node-a lives on node-a alone: the worker itself must recover, the router cannot help.
    Health probes are off (interval 60 s) so that no canary repairs the sessions before the client does."""
    daemon = start_daemon(_config_copy(cluster, tmp_path, router={"health_check": {"interval_s": 60}}),
                          tmp_path / "daemon.log")
    request = pb.EncryptDataRequest(key_identifier="alias/only-node-a", plain_text=SOLE_KEY_PLAIN,
                                    encryption_attributes=sym(pb.ECB))
    try:
        with daemon.channel() as channel:
            admin, ops = pb_grpc.AdminStub(channel), pb_grpc.OperationsStub(channel)
            assert ops.EncryptData(request, timeout=10).cipher_text == SOLE_KEY_CIPHER
            admin.InjectFault(pb.InjectFaultRequest(node="node-a", fault=fault), timeout=10)
            results = []
            for _ in range(8):
                try:
                    results.append(ops.EncryptData(request, timeout=10).cipher_text)
                except grpc.RpcError as exc:
                    results.append(f"{exc.code().name}: {exc.details()}")
            stream = [pb.StreamRequest(request_id=i, encrypt_data=request) for i in range(8)]
            results += [r.encrypt_data.cipher_text or f"status {r.status.code}: {r.status.message}"
                        for r in ops.Stream(iter(stream), timeout=30)]
            assert results == [SOLE_KEY_CIPHER] * 16
    finally:
        daemon.stop()


def test_inject_fault_refused_without_fault_injection(cluster: Cluster, tmp_path: Path) -> None:
    daemon = start_daemon(_config_copy(cluster, tmp_path, fault_injection=False), tmp_path / "daemon.log")
    try:
        with daemon.channel() as channel:
            admin, ops = pb_grpc.AdminStub(channel), pb_grpc.OperationsStub(channel)
            for fault in ("close_sessions", "kill_worker", "delay"):
                with pytest.raises(grpc.RpcError) as refused:
                    admin.InjectFault(pb.InjectFaultRequest(node="node-a", fault=fault, value=1.0), timeout=10)
                assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, fault
                assert "fault injection is disabled" in (refused.value.details() or "")
            nodes = admin.ListNodes(pb.ListNodesRequest(), timeout=10).nodes
            assert all(n.backend_state == "up" and n.state.startswith("healthy") for n in nodes)
            reply = ops.EncryptData(_encrypt_request(), timeout=10)
            assert reply.cipher_text == NIST_ECB  # nothing was broken or slowed
    finally:
        assert daemon.stop() == 0


# ------------------------------------------------------- the token worker alone, over its own socket
class Worker:
    """A real token worker process (hsmlb.backends.pkcs11_worker) on one dev token, spoken to directly."""

    def __init__(self, cluster: Cluster, node: str, pool_size: int = 3, copies: bool = False) -> None:
        config = next(n for n in yaml.safe_load(cluster.config.read_text())["nodes"] if n["name"] == node)
        self.sock, child = socket.socketpair()
        self.proc = subprocess.Popen([sys.executable, "-m", "hsmlb.backends.pkcs11_worker", str(child.fileno())],
                                     pass_fds=(child.fileno(),), env={**os.environ, **config["env"]})
        child.close()
        self.decoder = wire.FrameDecoder()
        self.ids = itertools.count(1)
        self.sock.sendall(wire.encode({"module": config["module"], "token_label": node, "pool_size": pool_size,
                                       "pin": Path(config["pin_file"]).read_text().strip(),
                                       "fault_injection": True, "session_key_copies": copies}))
        assert "ready" in self._frame(), "the worker did not open the token"

    def _frame(self) -> Any:
        self.sock.settimeout(30)
        frames: list[Any] = []
        while not frames:
            data = self.sock.recv(1 << 20)
            assert data, "the worker closed the link"
            frames = self.decoder.feed(data)
        return frames[0]

    def call(self, op: str, label: str = "", args: tuple = (), slot: int = 0) -> tuple[str | None, Any]:
        self.sock.sendall(wire.encode([(next(self.ids), slot, op, label, args, 0.0)]))
        (_, code, payload), = self._frame()
        return code, payload

    def close(self) -> None:
        self.sock.close()
        assert self.proc.wait(30) == 0


@pytest.fixture(params=[False, True], ids=["token-keys", "session-copies"])
def worker(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[Worker]:
    """Each worker test runs with keys used as token objects and with session_key_copies."""
    proc = Worker(cluster, "node-a", copies=request.param)
    yield proc
    proc.close()


def test_worker_key_of_the_wrong_class_is_a_caller_error_not_login_decay(worker: Worker) -> None:
    """The key exists on the token, but not as the object class the op needs: invalid, with no recovery."""
    assert worker.call("sign", "alias/cmac-aes128", ("ECDSA_SHA_256", b"m")) == (
        "invalid", "key alias/cmac-aes128 has no private key on this token: wrong key type for this operation")
    assert worker.call("verify", "alias/hmac-1", ("ECDSA_SHA_256", b"m", bytes(64)))[0] == "invalid"
    code, message = worker.call("generate_mac", "alias/sign-rsa", ("CMAC", b"m", None))
    assert (code, "secret key" in message) == ("invalid", True)
    assert worker.call("sign", "alias/no-such-key", ("ECDSA_SHA_256", b"m"))[0] == "not_found"
    assert worker.call("_stats") == (None, {"session": 0, "login": 0, "library": 0})
    assert worker.call("encrypt", "alias/only-node-a", ("ECB", b"", bytes.fromhex(SOLE_KEY_PLAIN))) == (
        None, bytes.fromhex(SOLE_KEY_CIPHER))


@pytest.mark.parametrize("fault", ["close_sessions", "logout"])
def test_worker_climbs_from_session_to_login_recovery_once(worker: Worker, fault: str) -> None:
    """Every session closed (the login with them): the first request on a pooled slot reopens its
    session, finds the private key gone, logs in, and succeeds; later slots only need a new session."""
    request = ("ECB", b"", bytes.fromhex(SOLE_KEY_PLAIN))
    assert worker.call("_fault", "", (fault,)) == (None, fault)
    assert worker.call("encrypt", "alias/only-node-a", request, slot=1) == (None, bytes.fromhex(SOLE_KEY_CIPHER))
    assert worker.call("_stats") == (None, {"session": 1, "login": 1, "library": 0})
    for slot in (0, 2, 1):
        assert worker.call("encrypt", "alias/only-node-a", request, slot=slot) == (
            None, bytes.fromhex(SOLE_KEY_CIPHER))
    assert worker.call("_stats") == (None, {"session": 3, "login": 1, "library": 0})


def test_worker_session_copies_answer_alike_and_stay_out_of_the_inventory(cluster: Cluster) -> None:
    """session_key_copies: the same answers on every slot, and the copies (session objects, visible to every
    session) neither enter the key inventory nor make a lookup by label ambiguous after a recovery."""
    plain = ("ECB", b"", bytes.fromhex(SOLE_KEY_PLAIN))
    plain_worker, copying = Worker(cluster, "node-a"), Worker(cluster, "node-a", copies=True)
    try:
        for slot in range(3):
            assert copying.call("encrypt", "alias/only-node-a", plain, slot=slot) == (
                None, bytes.fromhex(SOLE_KEY_CIPHER))
        code, inventory = copying.call("_inventory")
        assert code is None and sorted(k["label"] for k in inventory) == sorted(
            k["label"] for k in plain_worker.call("_inventory")[1])
        assert copying.call("_fault", "", ("close_sessions",)) == (None, "close_sessions")
        for slot in (1, 0, 2):
            assert copying.call("encrypt", "alias/only-node-a", plain, slot=slot) == (
                None, bytes.fromhex(SOLE_KEY_CIPHER))
        assert copying.call("_stats")[1]["library"] == 0
    finally:
        plain_worker.close()
        copying.close()
