"""hsmlb/apc/http.py, the APC data plane's lean HTTP/1.1 client, against a real loopback server.

The server below is a plain asyncio TCP server (no HTTP library, so it can misbehave on purpose);
each request's path names how it answers: Content-Length, chunked in small pieces, close-delimited,
`Connection: close`, oversized, never, cut in the middle, not HTTP at all. It counts the
connections it accepted and the most open at once, which is what the pool's promises are about.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from pathlib import Path

import pytest

from hsmlb.apc.http import AnswerTooLarge, HttpConnectionError, HttpPool
from hsmlb.auth.devca import Authority, write_pair

MAX = 4096
HOST = "example.test:1234"  # what the signer signed; the pool sends it as is


class Server:
    """A scripted HTTP/1.1 server on 127.0.0.1: the request path picks the answer."""

    def __init__(self) -> None:
        self.accepted = self.open = self.peak = 0
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, tls: ssl.SSLContext | None = None) -> Server:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0, ssl=tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            for _ in range(1000):
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                lines = head.split("\r\n")
                method, path, _ = lines[0].split(" ")
                headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if line)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append((method, path, headers, body))
                if not await self.answer(path, body, reader, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open -= 1
            writer.close()

    @staticmethod
    async def answer(path: str, body: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False: close the connection afterwards."""
        out = json.dumps({"echo": body.decode(), "path": path}).encode()
        ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        if path == "/length":
            writer.write(ok + b"Content-Length: %d\r\n\r\n" % len(out) + out)
        elif path == "/error":
            writer.write(b"HTTP/1.1 400 Bad Request\r\nx-amzn-ErrorType: ValidationException:http://x\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(out) + out)
        elif path == "/continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + ok + b"Content-Length: %d\r\n\r\n" % len(out) + out)
        elif path == "/chunked":  # odd-sized chunks, an extension and a trailer, each piece its own write
            pieces = [ok + b"Transfer-Encoding: chunked\r\n\r\n"]
            pieces += [b"%x;ext=1\r\n%s\r\n" % (len(out[i:i + 7]), out[i:i + 7]) for i in range(0, len(out), 7)]
            pieces += [b"0\r\nX-Trailer: yes\r\n\r\n"]
            for piece in pieces:
                for part in (piece[:3], piece[3:]):
                    writer.write(part)
                    await writer.drain()
                    await asyncio.sleep(0)
        elif path == "/close":
            writer.write(ok + b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(out) + out)
            await writer.drain()
            return False
        elif path == "/eof":  # neither length nor chunked: the body ends when the connection does
            writer.write(ok + b"\r\n" + out)
            await writer.drain()
            return False
        elif path == "/huge":
            writer.write(ok + b"Content-Length: %d\r\n\r\n{" % (MAX + 1))
        elif path == "/huge-chunked":
            writer.write(ok + b"Transfer-Encoding: chunked\r\n\r\n")
            for _ in range(2 * MAX // 1000):
                writer.write(b"3e8\r\n" + b" " * 1000 + b"\r\n")
        elif path == "/slow":
            await asyncio.sleep(0.05)
            writer.write(ok + b"Content-Length: %d\r\n\r\n" % len(out) + out)
        elif path == "/hang":
            await reader.read(1)  # until the client hangs up
            return False
        elif path == "/cut":
            writer.write(ok + b"Content-Length: 100\r\n\r\n{\"half\":")
            await writer.drain()
            writer.transport.abort()
            return False
        elif path == "/garbage":
            writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        return True


@pytest.fixture
async def server() -> Server:
    srv = await Server().start()
    yield srv
    await srv.stop()


@pytest.fixture
async def pool(server: Server) -> HttpPool:
    """The default pool to `server`, closed after the test."""
    pool = pool_for(server.port)
    yield pool
    pool.close()


def pool_for(port: int, limit: int = 4, scheme: str = "http", keepalive_s: float = 30.0,
             ssl_context: ssl.SSLContext | None = None) -> HttpPool:
    return HttpPool(f"{scheme}://127.0.0.1:{port}", limit, host_header=HOST, connect_timeout_s=1.0,
                    keepalive_s=keepalive_s, max_answer=MAX, ssl_context=ssl_context,
                    extra_headers={"Accept-Encoding": "identity"})


async def settle() -> None:
    """Let connection_lost callbacks (scheduled with call_soon) run."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_keep_alive_reuses_one_connection_for_sequential_calls(server: Server, pool: HttpPool) -> None:
    for i in range(20):
        status, error_type, raw = await pool.request("POST", "/length", {"X-Amz-Date": "d"}, b"n%d" % i, 2.0)
        assert (status, error_type, json.loads(raw)) == (200, None, {"echo": f"n{i}", "path": "/length"})
    assert server.accepted == 1
    assert pool.idle_connections() == 1
    method, _, headers, body = server.requests[-1]
    assert (method, headers["host"], headers["content-length"], body) == ("POST", HOST, "3", b"n19")
    assert headers["accept-encoding"] == "identity" and headers["x-amz-date"] == "d"


async def test_chunked_answer_and_reuse_after_it(server: Server, pool: HttpPool) -> None:
    status, _, raw = await pool.request("POST", "/chunked", {}, b"chunks", 2.0)
    assert status == 200 and json.loads(raw) == {"echo": "chunks", "path": "/chunked"}
    status, _, raw = await pool.request("POST", "/length", {}, b"", 2.0)
    assert status == 200 and server.accepted == 1  # the trailer was consumed: the stream is in sync


async def test_error_type_and_interim_answer(server: Server, pool: HttpPool) -> None:
    status, error_type, raw = await pool.request("POST", "/error", {}, b"x", 2.0)
    assert (status, error_type) == (400, "ValidationException:http://x") and json.loads(raw)["echo"] == "x"
    status, error_type, raw = await pool.request("POST", "/continue", {}, b"y", 2.0)
    assert (status, error_type, json.loads(raw)["echo"]) == (200, None, "y")
    assert server.accepted == 1


@pytest.mark.parametrize("path", ["/close", "/eof"])
async def test_connection_close_and_close_delimited_answers_are_not_reused(server: Server, pool: HttpPool,
                                                                           path: str) -> None:
    for i in range(3):
        status, _, raw = await pool.request("GET", path, {}, b"%d" % i, 2.0)
        assert status == 200 and json.loads(raw)["echo"] == str(i)
    await settle()
    assert server.accepted == 3
    assert pool.idle_connections() == 0 and pool.open_connections() == 0


@pytest.mark.parametrize("path", ["/huge", "/huge-chunked"])
async def test_oversized_answer_refused_and_connection_dropped(server: Server, pool: HttpPool, path: str) -> None:
    with pytest.raises(AnswerTooLarge):
        await pool.request("POST", path, {}, b"", 2.0)
    await settle()
    assert pool.open_connections() == 0
    assert (await pool.request("POST", "/length", {}, b"", 2.0))[0] == 200
    assert server.accepted == 2


async def test_no_answer_times_out_and_that_connection_is_not_reused(server: Server, pool: HttpPool) -> None:
    with pytest.raises(TimeoutError):
        await pool.request("POST", "/hang", {}, b"", 0.2)
    await settle()
    assert pool.open_connections() == 0 and pool.idle_connections() == 0
    assert (await pool.request("POST", "/length", {}, b"", 2.0))[0] == 200
    assert server.accepted == 2


@pytest.mark.parametrize("path", ["/cut", "/garbage"])
async def test_cut_or_garbled_answer_is_a_connection_error(server: Server, pool: HttpPool, path: str) -> None:
    with pytest.raises(HttpConnectionError):
        await pool.request("POST", path, {}, b"", 2.0)
    await settle()
    assert pool.open_connections() == 0


async def test_refused_connection_is_a_connection_error() -> None:
    with socket.socket() as sock:  # a port nothing listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        pool = pool_for(sock.getsockname()[1])
        with pytest.raises(HttpConnectionError):
            await pool.request("POST", "/length", {}, b"", 2.0)
        assert pool.open_connections() == 0


async def test_cap_on_connections_under_concurrency(server: Server) -> None:
    pool = pool_for(server.port, limit=2)
    try:
        answers = await asyncio.gather(*(pool.request("POST", "/slow", {}, b"%d" % i, 5.0) for i in range(12)))
        assert [json.loads(raw)["echo"] for _, _, raw in answers] == [str(i) for i in range(12)]
        assert server.peak <= 2 and server.accepted == 2
        assert pool.idle_connections() == 2
    finally:
        pool.close()


async def test_waiting_for_a_connection_times_out_within_the_call(server: Server) -> None:
    pool = pool_for(server.port, limit=1)
    try:
        held = asyncio.ensure_future(pool.request("POST", "/hang", {}, b"", 3.0))
        await asyncio.sleep(0.05)
        with pytest.raises(TimeoutError):
            await pool.request("POST", "/length", {}, b"", 0.2)
        assert server.accepted == 1  # it waited for the one connection, never opened a second
        held.cancel()
        with pytest.raises(asyncio.CancelledError):
            await held
        await settle()
        assert pool.open_connections() == 0  # the cancelled caller's connection was closed, not pooled
        assert (await pool.request("POST", "/length", {}, b"", 2.0))[0] == 200
        assert server.accepted == 2
    finally:
        pool.close()


async def test_idle_connections_expire_after_keepalive(server: Server) -> None:
    pool = pool_for(server.port, keepalive_s=0.1)
    try:
        await pool.request("POST", "/length", {}, b"", 2.0)
        assert pool.idle_connections() == 1
        await asyncio.sleep(0.5)
        assert pool.idle_connections() == 0
        await pool.request("POST", "/length", {}, b"", 2.0)
        assert server.accepted == 2
    finally:
        pool.close()


async def test_close_closes_everything(server: Server) -> None:
    pool = pool_for(server.port)
    await asyncio.gather(*(pool.request("POST", "/slow", {}, b"", 2.0) for _ in range(3)))
    assert pool.idle_connections() == 3
    pool.close()
    await settle()
    assert pool.idle_connections() == 0 and pool.open_connections() == 0
    with pytest.raises(HttpConnectionError):
        await pool.request("POST", "/length", {}, b"", 2.0)


async def test_tls_with_a_private_ca(tmp_path: Path) -> None:
    ca = Authority.create("apc http test CA")
    cert, key = write_pair(tmp_path, "server", ca.issue("127.0.0.1", ips=("127.0.0.1",), server=True))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    srv = await Server().start(tls)
    trusting = ssl.create_default_context(cadata=ca.pem.decode())
    pool, stranger = pool_for(srv.port, scheme="https", ssl_context=trusting), pool_for(srv.port, scheme="https")
    try:
        for _ in range(3):
            assert (await pool.request("POST", "/length", {}, b"tls", 2.0))[2] == b'{"echo": "tls", "path": "/length"}'
        assert srv.accepted == 1
        with pytest.raises(HttpConnectionError):  # the default trust store does not know our CA
            await stranger.request("POST", "/length", {}, b"", 2.0)
    finally:
        pool.close()
        stranger.close()
        await srv.stop()
