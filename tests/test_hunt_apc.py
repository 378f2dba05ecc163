"""Bug hunt: an APC region node behind misbehaving peers, seen through the real daemon.

A small aiohttp server on 127.0.0.1 (`Peer`) forwards every request to a real `hsmlb apc-emulator`
and answers the data plane the way its `mode` says: bodies missing modelled members, gzip when
asked, a ValidationException that echoes a PAN in a field path, HTML 502 pages, hangs, resets and
connections closed after each answer. Other tests restart a real emulator on the same port with a
different key set or rotated credentials. No mocks: the daemon, the emulator and the sockets are real.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from aiohttp import ClientSession, web
from yarl import URL

from hsmlb.dev.regions import Emulator, dev_credentials, spawn_emulator, start_emulator
from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests._routing_helpers import nodes
from tests.conftest import Cluster, DaemonProcess, start_daemon, sym

REGION = "eu-west-1"
PAN = "4111111111111111"
PLAIN, CIPHER = "6BC1BEE22E409F96E93D7E117393172A", "3AD77BB40D7A3660A89ECAF32466EF97"  # NIST SP 800-38A F.1
RPC_S = 10
RECOVER_S = 20.0
_HOP = {"host", "connection", "content-length", "transfer-encoding", "keep-alive"}


def encrypt() -> pb.EncryptDataRequest:
    return pb.EncryptDataRequest(key_identifier="alias/zek-aes128", plain_text=PLAIN, encryption_attributes=sym(pb.ECB))


def cvv() -> pb.GenerateCardValidationDataRequest:
    return pb.GenerateCardValidationDataRequest(
        key_identifier="alias/cvk-1", primary_account_number=PAN,
        generation_attributes=pb.CardGenerationAttributes(
            card_verification_value1=pb.CardVerificationValue1(card_expiry_date="1230", service_code="101")))


class Peer:
    """A reverse proxy in front of an emulated region; `mode` reshapes data-plane answers only."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.mode = "pass"
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._client: ClientSession | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        self._client = ClientSession(auto_decompress=False)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        data_plane = "X-Amz-Target" not in request.headers and not request.path.startswith("/_emulator")
        mode = self.mode if data_plane else "pass"
        if mode == "html502":
            return web.Response(status=502, text="<html><body>502 Bad Gateway " + "x" * 5000 + "</body></html>",
                                content_type="text/html")
        if mode == "hang":
            await asyncio.sleep(5)
        if mode in ("huge_chunked", "huge_declared"):
            return await self._flood(request, declared=mode == "huge_declared")
        if mode == "pan_field":
            fields = [{"path": f"PrimaryAccountNumber={PAN}", "message": "bad"}]
            return web.json_response({"message": "invalid", "fieldList": fields}, status=400,
                                     headers={"x-amzn-ErrorType": "ValidationException"})
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        headers["Host"] = request.headers["Host"]  # signed: the emulator must see what the node signed
        assert self._client is not None
        async with self._client.request(request.method, URL(self.upstream + request.raw_path, encoded=True), data=body,
                                        headers=headers, skip_auto_headers=("Accept-Encoding",)) as answer:
            raw, status = await answer.read(), answer.status
            out = {k: v for k, v in answer.headers.items() if k.lower() in ("content-type", "x-amzn-errortype")}
        if status == 200 and mode in ANSWERS:
            raw = ANSWERS[mode](json.loads(raw))
        if mode == "gzip" and "gzip" in request.headers.get("Accept-Encoding", ""):
            raw, out["Content-Encoding"] = gzip.compress(raw), "gzip"
        if mode == "reset":
            response = web.StreamResponse(status=status, headers=out)
            response.content_length = len(raw)
            await response.prepare(request)
            await response.write(raw[: len(raw) // 2])
            assert request.transport is not None
            request.transport.abort()
            return response
        response = web.Response(status=status, body=raw, headers=out)
        if mode == "close":
            response.force_close()
        return response


    @staticmethod
    async def _flood(request: web.Request, declared: bool) -> web.StreamResponse:
        """A 200 that never ends: 256 KiB pieces for at most 3 s (or a 64 MiB Content-Length, then silence)."""
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        if declared:
            response.content_length = 64 << 20
        await response.prepare(request)
        piece, deadline = b" " * (256 << 10), time.monotonic() + 3
        try:
            for _ in range(2000):
                if time.monotonic() > deadline:
                    break
                await response.write(b"{" if declared else piece)
                if declared:
                    await asyncio.sleep(3)
        except (ConnectionError, RuntimeError):  # the node hung up on us, as it should
            pass
        return response


def _strip(answer: dict[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in answer.items() if k in ("KeyArn", "KeyCheckValue")}).encode()


ANSWERS = {
    "missing_member": _strip,  # ValidationData / CipherText gone
    "json_list": lambda answer: b"[]",
    "wrong_type": lambda answer: json.dumps({k: 123 for k in answer}).encode(),
    "truncated": lambda answer: json.dumps(answer).encode()[:20],
}


def region_node(name: str, url: str, credentials: Path, **extra: Any) -> dict[str, Any]:
    return {"name": name, "kind": "apc", "region": REGION, "endpoint_url": url, "credentials_file": str(credentials),
            "connections": 2, **extra}


async def launch(config: Path, log: Path) -> DaemonProcess:
    """In a thread: the peer runs on this event loop and must answer the daemon's discovery."""
    return await asyncio.to_thread(start_daemon, config, log)


async def code_of(call: Any) -> tuple[str, str]:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code().name, exc.details() or ""
    return "OK", ""


# ------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def region(cluster: Cluster) -> Any:
    emulator = start_emulator("apc-hunt", REGION, cluster.keys_file, cluster.state_dir, fault_injection=True)
    yield emulator
    emulator.stop()


@pytest.fixture(scope="module")
async def peer(region: Emulator) -> AsyncIterator[Peer]:
    server = Peer(region.endpoint_url)
    await server.start()
    yield server
    await server.close()


@pytest.fixture(scope="module")
async def peer_daemon(cluster: Cluster, peer: Peer, tmp_path_factory: pytest.TempPathFactory
                      ) -> AsyncIterator[DaemonProcess]:
    """A daemon whose only node is the region behind the peer: a node fault answers UNAVAILABLE."""
    directory = tmp_path_factory.mktemp("hunt-peer")
    node = region_node("apc-peer", peer.url, dev_credentials(cluster.state_dir)[2], request_timeout_s=0.5)
    daemon = await launch(cluster.write_variant(directory / "hsmlb-hunt.yaml", [], [node]), directory / "d.log")
    yield daemon
    await asyncio.to_thread(daemon.stop)


@pytest.fixture
async def ops(peer: Peer, peer_daemon: DaemonProcess) -> AsyncIterator[pb_grpc.OperationsStub]:
    async with grpc.aio.insecure_channel(peer_daemon.address) as channel:
        yield pb_grpc.OperationsStub(channel)
    peer.mode = "pass"


# ------------------------------------------------------------------------------ malformed answers

@pytest.mark.parametrize("mode", ["missing_member", "json_list", "wrong_type", "truncated"])
async def test_malformed_success_answer_is_a_node_fault(peer: Peer, ops: pb_grpc.OperationsStub, mode: str) -> None:
    """A 200 whose body is not the modelled output is the region's fault (UNAVAILABLE, retried
    elsewhere), never INTERNAL from the response encoder after the node was credited a success."""
    peer.mode = mode
    for call in (ops.GenerateCardValidationData(cvv(), timeout=RPC_S), ops.EncryptData(encrypt(), timeout=RPC_S)):
        code, details = await code_of(call)
        assert code == "UNAVAILABLE", (mode, code, details)
        assert "apc-peer" not in details and PAN not in details  # node names stay in the logs (issue 10)


async def test_gzip_answer_is_read(peer: Peer, ops: pb_grpc.OperationsStub) -> None:
    """A front door that honours our Accept-Encoding must not turn every success into a node fault."""
    peer.mode = "gzip"
    reply = await ops.EncryptData(encrypt(), timeout=RPC_S)
    assert reply.cipher_text == CIPHER


async def test_field_paths_from_the_region_are_masked(peer: Peer, ops: pb_grpc.OperationsStub) -> None:
    peer.mode = "pan_field"
    code, details = await code_of(ops.GenerateCardValidationData(cvv(), timeout=RPC_S))
    assert code == "INVALID_ARGUMENT", details
    assert "primary_account_number (APC PrimaryAccountNumber)" in details
    assert PAN not in details and "41111111" not in details


@pytest.mark.parametrize("mode", ["html502", "hang", "reset", "close"])
async def test_broken_transport_is_unavailable_and_fast(peer: Peer, ops: pb_grpc.OperationsStub, mode: str) -> None:
    """HTML 502 pages, an answer hanging past request_timeout_s, a reset mid-body: UNAVAILABLE within
    a few seconds, with no page text in the message. `close` (no keep-alive) must simply work."""
    peer.mode = mode
    started = time.monotonic()
    code, details = await code_of(ops.EncryptData(encrypt(), timeout=RPC_S))
    assert time.monotonic() - started < 5
    if mode == "close":
        assert code == "OK", details
        for _ in range(20):  # each answer closes its connection: the next request must not meet a dead one
            assert (await ops.EncryptData(encrypt(), timeout=RPC_S)).cipher_text == CIPHER
            await asyncio.sleep(0.01)
        return
    assert code == "UNAVAILABLE", details
    assert "<html" not in details and "xxxx" not in details and len(details) < 400


@pytest.mark.parametrize("mode", ["huge_chunked", "huge_declared"])
async def test_endless_answer_is_cut_off(peer: Peer, ops: pb_grpc.OperationsStub, mode: str) -> None:
    """A 200 body without end must not be buffered until the timeout: memory stays bounded."""
    peer.mode = mode
    code, details = await code_of(ops.EncryptData(encrypt(), timeout=RPC_S))
    assert code == "UNAVAILABLE" and "answer over" in details, details


# ------------------------------------------------------------------------------ the region changes under us

async def _served(ops: pb_grpc.OperationsStub, admin: pb_grpc.AdminStub, node: str, request: Any,
                  rounds: int = 40) -> tuple[bool, list[str]]:
    """Bounded: send `request` until `node` has served one; every failure's code is kept."""
    failures: list[str] = []
    for _ in range(rounds):
        before = (await nodes(admin))[node].ops_ok
        code, details = await code_of(ops.EncryptData(request, timeout=RPC_S))
        if code != "OK":
            failures.append(f"{code}: {details}")
        if (await nodes(admin))[node].ops_ok > before:
            return True, failures
        await asyncio.sleep(0.25)
    return False, failures


async def test_region_restarted_without_a_key_does_not_answer_not_found(cluster: Cluster, tmp_path: Path) -> None:
    """The region lost zek-aes128 (restarted with another key set): a token still holds it, so callers
    must never see NOT_FOUND; the node must rediscover its inventory instead of staying stale."""
    entries = yaml.safe_load(cluster.keys_file.read_text())
    fewer = tmp_path / "fewer-keys.yaml"
    fewer.write_text(yaml.safe_dump([e for e in entries if e["alias"] != "alias/zek-aes128"]))
    own = start_emulator("apc-stale", REGION, cluster.keys_file, cluster.state_dir)
    port = int(own.endpoint_url.rsplit(":", 1)[1])
    node = region_node("apc-stale", own.endpoint_url, dev_credentials(cluster.state_dir)[2])
    daemon = await launch(cluster.write_variant(tmp_path / "hsmlb-hunt.yaml", ["node-a"], [node]), tmp_path / "d.log")
    try:
        async with grpc.aio.insecure_channel(daemon.address) as channel:
            ops, admin = pb_grpc.OperationsStub(channel), pb_grpc.AdminStub(channel)
            served, failures = await _served(ops, admin, "apc-stale", encrypt())
            assert served and not failures, failures
            own.stop()
            own = start_emulator("apc-stale", REGION, fewer, cluster.state_dir, port=port)
            codes: list[str] = []
            deadline = time.monotonic() + RECOVER_S
            for _ in range(60):  # bounded: the restarted region is routable again within a few probes
                if time.monotonic() > deadline:
                    break
                code, details = await code_of(ops.EncryptData(encrypt(), timeout=RPC_S))
                codes.append(code)
                assert code != "NOT_FOUND", details
                await asyncio.sleep(0.1)
            still = (await nodes(admin))["apc-stale"]
            served_other, failures = await _served(ops, admin, "apc-stale", pb.EncryptDataRequest(
                key_identifier="alias/dek-aes256", plain_text=PLAIN, encryption_attributes=sym(pb.ECB)))
    finally:
        daemon.stop()
        own.stop()
    assert codes.count("OK") >= len(codes) - 2, codes  # at most a couple lost while the process was away
    assert served_other, (still.state, failures)


async def test_rotated_credentials_are_picked_up(cluster: Cluster, tmp_path: Path) -> None:
    """The secret is rotated in the credentials file and at the region (a restart on the same port):
    the node must re-read its credentials and serve again, not stay rejected until the daemon restarts."""
    credentials = tmp_path / "aws-credentials"

    def region_with(secret: str, port: int = 0) -> Emulator:
        credentials.write_text(f"[default]\naws_access_key_id = AKIDHUNT\naws_secret_access_key = {secret}\n")
        return spawn_emulator("apc-rot", cluster.keys_file, "--region", REGION, "--access-key-id", "AKIDHUNT",
                              "--secret-access-key", secret, port=port)

    own = region_with("first-secret")
    port = int(own.endpoint_url.rsplit(":", 1)[1])
    daemon = await launch(cluster.write_variant(tmp_path / "hsmlb-hunt.yaml", ["node-a"],
                                                [region_node("apc-rot", own.endpoint_url, credentials)]),
                          tmp_path / "d.log")
    try:
        async with grpc.aio.insecure_channel(daemon.address) as channel:
            ops, admin = pb_grpc.OperationsStub(channel), pb_grpc.AdminStub(channel)
            served, failures = await _served(ops, admin, "apc-rot", encrypt())
            assert served and not failures, failures
            own.stop()
            own = region_with("second-secret", port)
            served, failures = await _served(ops, admin, "apc-rot", encrypt(), rounds=int(RECOVER_S / 0.25))
            status = (await nodes(admin))["apc-rot"]
    finally:
        daemon.stop()
        own.stop()
    assert served, (status.state, status.detail)
    assert not failures, failures  # the token node took every request meanwhile
