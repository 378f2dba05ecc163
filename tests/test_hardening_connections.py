"""Issue 10, acceptance 4: 1,100 idle HTTP/2 connections from one client against a daemon held to
1,024 descriptors (soft and hard): a new client is still served, because the connection cap keeps
descriptors back for the daemon and idle connections are closed after the configured idle time."""

from __future__ import annotations

import resource
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc

from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests._daemon_helpers import NIST_ECB, nist_request
from tests._process_helpers import free_port
from tests.conftest import Cluster

IDLE_CONNECTIONS = 1100
FD_LIMIT = 1024
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # preface + empty SETTINGS
SETTINGS_ACK = bytes([0, 0, 0, 4, 1, 0, 0, 0, 0])


def _held_to(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


def _open_idle(address: tuple[str, int], count: int) -> list[socket.socket]:
    """`count` connections that complete the HTTP/2 handshake (preface, SETTINGS, ACK) and then idle."""
    conns = []
    for _ in range(count):
        sock = socket.socket()
        sock.settimeout(5)
        try:
            sock.connect(address)
            sock.sendall(PREFACE + SETTINGS_ACK)
        except OSError:  # refused or reset at the cap: the point of the cap
            sock.close()
            continue
        sock.setblocking(False)
        conns.append(sock)
    return conns


def _closed_by_server(conns: list[socket.socket], timeout: float) -> int:
    """Wait up to `timeout` for the server to close connections (EOF or reset); how many it closed."""
    closed: set[int] = set()
    with selectors.DefaultSelector() as sel:
        for i, sock in enumerate(conns):
            sel.register(sock, selectors.EVENT_READ, i)
        deadline = time.monotonic() + timeout
        while len(closed) < len(conns) and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.2):
                try:
                    data = conns[key.data].recv(65536)
                except (ConnectionResetError, BlockingIOError) as exc:
                    data = b"" if isinstance(exc, ConnectionResetError) else None  # type: ignore[assignment]
                if data == b"":
                    closed.add(key.data)
                    sel.unregister(conns[key.data])
    return len(closed)


def test_idle_connections_cannot_lock_new_clients_out(cluster: Cluster, tmp_path: Path) -> None:
    port = free_port()
    config = cluster.write_variant(tmp_path / "idle.yaml", listen=f"127.0.0.1:{port}",
                                   limits={"idle_timeout_s": 2.0})
    log = tmp_path / "daemon.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "hsmlb", "serve", "--config", str(config)],
                                stdout=subprocess.PIPE, stderr=err, preexec_fn=lambda: _held_to(FD_LIMIT))
    conns: list[socket.socket] = []
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith(b"hsmlb listening on ")
        conns = _open_idle(("127.0.0.1", port), IDLE_CONNECTIONS)
        started = time.monotonic()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = pb_grpc.OperationsStub(channel).EncryptData(nist_request(), timeout=30, wait_for_ready=True)
        served_after = time.monotonic() - started
        assert reply.cipher_text == NIST_ECB
        closed = _closed_by_server(conns, 10)
        print(f"\n{len(conns)} idle connections accepted of {IDLE_CONNECTIONS}; a new client served after "
              f"{served_after:.2f}s; {closed} closed by the daemon")
        assert closed == len(conns), f"{len(conns) - closed} idle connections still open after the idle time"
        assert proc.poll() is None, log.read_text()[-3000:]
        assert "Traceback" not in log.read_text()
    finally:
        for sock in conns:
            sock.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
