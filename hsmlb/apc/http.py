"""A lean HTTP/1.1 keep-alive client for one origin: the APC data plane's hot path.

Why not aiohttp here: a shadow or data-plane call cost the daemon's event loop ~0.4 ms of CPU, over
half of it aiohttp's machinery (request and response objects, a task per request, timers, multidict
headers), on the same single loop that answers the primary. This one writes each request with one
`transport.write`, parses the answer in `data_received` and resolves a future the caller awaits: no
task, one timer per call. It speaks only what the data plane needs: one request per connection at a
time (no pipelining), Content-Length, chunked or close-delimited bodies bounded by `max_answer`,
and of the answer's headers only the status, `x-amzn-ErrorType` and the framing headers.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from urllib.parse import urlsplit

MAX_HEAD_BYTES = 64 << 10  # status line and headers; an APC answer's are a few hundred bytes
_NO_BODY = (204, 304)
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _EOF = range(7)


class HttpConnectionError(ConnectionError):
    """The connection failed, closed or spoke something that is not HTTP/1.1 before the answer was whole."""


class AnswerTooLarge(Exception):
    """The answer's body is (or says it will be) longer than the pool's `max_answer` bytes."""


class _Conn(asyncio.Protocol):
    """One connection and the parser of the one answer it awaits (`waiter`)."""

    def __init__(self, pool: HttpPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, str | None, bytes, bool]] | None = None
        self.buf = bytearray()
        self.idle_since = 0.0
        self.closed = False
        self.state, self.status, self.error_type, self.body, self.keep, self.left = _HEAD, 0, None, bytearray(), True, 0

    def send(self, payload: bytes, waiter: asyncio.Future[tuple[int, str | None, bytes, bool]]) -> None:
        if self.closed or self.transport is None or self.transport.is_closing():
            raise HttpConnectionError("connection closed before the request was sent")
        self.waiter, self.state, self.status, self.error_type = waiter, _HEAD, 0, None
        self.body, self.keep, self.left = bytearray(), True, 0
        self.transport.write(payload)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
            self.pool._forget(self)

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and self.state == _EOF:
            self._done()  # a close-delimited body ends here
        self._fail(HttpConnectionError("connection closed before the answer was whole"))
        self.closed = True
        self.pool._forget(self)

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:  # nothing asked: a broken peer; this connection is out of sync
            self.close()
            return
        self.buf += data
        try:
            self._parse()
        except (ValueError, IndexError):
            self._fail(HttpConnectionError("the answer is not valid HTTP/1.1"))
        except AnswerTooLarge as exc:
            self._fail(exc)

    # -- the answer -------------------------------------------------------------------------
    def _parse(self) -> None:
        buf = self.buf
        while self.waiter is not None:
            state = self.state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD_BYTES:
                        raise ValueError("head too long")
                    return
                self._head(bytes(buf[:end]))
                del buf[:end + 4]
            elif state in (_LENGTH, _CHUNK_DATA):
                take = min(self.left, len(buf))
                self.body += buf[:take]
                del buf[:take]
                self.left -= take
                if self.left:
                    return
                if state == _LENGTH:
                    self._done()
                else:
                    self.state = _CHUNK_END
            elif state == _EOF:
                self.body += buf
                del buf[:]
                if len(self.body) > self.pool.max_answer:
                    raise AnswerTooLarge()
                return
            else:  # chunk size line, the CRLF after a chunk's data, trailer lines
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD_BYTES:
                        raise ValueError("line too long")
                    return
                line = bytes(buf[:end])
                del buf[:end + 2]
                if state == _CHUNK_END:
                    if line:
                        raise ValueError("chunk not followed by CRLF")
                    self.state = _CHUNK_SIZE
                elif state == _CHUNK_SIZE:
                    size = int(line.split(b";", 1)[0], 16)
                    if size < 0:
                        raise ValueError("negative chunk size")
                    if len(self.body) + size > self.pool.max_answer:
                        raise AnswerTooLarge()
                    self.state, self.left = (_CHUNK_DATA, size) if size else (_TRAILER, 0)
                elif not line:  # _TRAILER: the empty line ends the message
                    self._done()

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        version, code = lines[0].split(b" ", 2)[:2]
        if not version.startswith(b"HTTP/1."):
            raise ValueError("not HTTP/1.x")
        status = int(code)
        if 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
            return
        keep = version == b"HTTP/1.1"
        length: int | None = None
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = value.strip().lower().endswith(b"chunked")
            elif name == b"connection":
                tokens = {token.strip() for token in value.lower().split(b",")}
                keep = b"close" not in tokens and (keep or b"keep-alive" in tokens)
            elif name == b"x-amzn-errortype":
                self.error_type = value.strip().decode("latin-1")
        self.status, self.keep = status, keep
        if status in _NO_BODY:
            self._done()
        elif chunked:
            self.state = _CHUNK_SIZE
        elif length is not None:
            if length < 0:
                raise ValueError("negative Content-Length")
            if length > self.pool.max_answer:
                raise AnswerTooLarge()
            self.state, self.left = _LENGTH, length
            if not length:
                self._done()
        else:
            self.state, self.keep = _EOF, False

    def _done(self) -> None:
        waiter, self.waiter = self.waiter, None
        if self.buf:  # bytes past the answer: nothing asked for them, so never reuse this connection
            self.keep = False
        if waiter is not None and not waiter.done():
            waiter.set_result((self.status, self.error_type, bytes(self.body), self.keep))

    def _fail(self, exc: BaseException) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


def _expire(future: asyncio.Future) -> None:  # type: ignore[type-arg]
    if not future.done():
        future.set_exception(TimeoutError())


class HttpPool:
    """Keep-alive connections to one origin: idle ones reused last-in first-out, at most `limit` open.

    A connection that errors, times out or whose caller is cancelled is closed, never reused (its
    next bytes would belong to the wrong request); one idle longer than `keepalive_s` is closed."""

    def __init__(self, base_url: str, limit: int, *, host_header: str, connect_timeout_s: float,
                 keepalive_s: float, max_answer: int, ssl_context: ssl.SSLContext | None = None,
                 extra_headers: dict[str, str] | None = None) -> None:
        self.base_url = base_url
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("an http:// or https:// URL with a host")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = (ssl_context or ssl.create_default_context()) if parts.scheme == "https" else None
        self.base_path = parts.path.rstrip("/")
        self.limit, self.connect_timeout_s, self.keepalive_s, self.max_answer = (
            limit, connect_timeout_s, keepalive_s, max_answer)
        extra = "".join(f"{k}: {v}\r\n" for k, v in (extra_headers or {}).items())
        self._fixed = f"Host: {host_header}\r\n{extra}Content-Length: "
        self._idle: list[_Conn] = []
        self._open: set[_Conn] = set()
        self._waiters: deque[asyncio.Future[_Conn | None]] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    def idle_connections(self) -> int:
        return len(self._idle)

    def open_connections(self) -> int:
        return len(self._open)

    async def request(self, method: str, path: str, headers: dict[str, str], body: bytes,
                      timeout: float) -> tuple[int, str | None, bytes]:
        """(status, x-amzn-ErrorType, body). Raises TimeoutError, HttpConnectionError, AnswerTooLarge."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        conn = await self._acquire(loop, deadline)
        head = "".join([method, " ", self.base_path, path, " HTTP/1.1\r\n",
                        *[f"{k}: {v}\r\n" for k, v in headers.items()], self._fixed, str(len(body)), "\r\n\r\n"])
        waiter: asyncio.Future[tuple[int, str | None, bytes, bool]] = loop.create_future()
        timer = loop.call_at(deadline, _expire, waiter)
        try:
            conn.send(head.encode("latin-1") + body, waiter)
            status, error_type, raw, keep = await waiter
        except BaseException:
            conn.close()  # timed out, failed or cancelled mid-answer: its stream is out of sync
            raise
        finally:
            timer.cancel()
        if keep and not self._closed:
            self._release(conn, loop)
        else:
            conn.close()
        return status, error_type, raw

    async def _acquire(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Conn:
        while True:
            if self._closed:
                raise HttpConnectionError("the pool is closed")
            now = loop.time()
            while self._idle:
                conn = self._idle.pop()
                if now - conn.idle_since < self.keepalive_s and not conn.closed:
                    return conn
                conn.close()
            if len(self._open) < self.limit:
                return await self._connect(loop, deadline)
            waiter: asyncio.Future[_Conn | None] = loop.create_future()
            self._waiters.append(waiter)
            timer = loop.call_at(deadline, _expire, waiter)
            try:
                conn = await waiter  # a connection handed over, or None: a slot is free, go round
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None and waiter.result():
                    self._release(waiter.result(), loop)  # handed over as we were cancelled: pass it on
                raise
            finally:
                timer.cancel()
            if conn is not None and not conn.closed:
                return conn

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Conn:
        conn = _Conn(self)
        self._open.add(conn)  # counted against the cap while it connects
        try:
            async with asyncio.timeout_at(min(deadline, loop.time() + self.connect_timeout_s)):
                await loop.create_connection(lambda: conn, self.host, self.port, ssl=self.ssl,
                                             server_hostname=self.host if self.ssl else None)
        except OSError as exc:
            conn.close()
            raise HttpConnectionError(type(exc).__name__) from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _release(self, conn: _Conn, loop: asyncio.AbstractEventLoop) -> None:
        if self._closed or conn.closed:
            conn.close()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        conn.idle_since = loop.time()
        self._idle.append(conn)
        if self._sweeper is None:
            self._sweeper = loop.call_at(conn.idle_since + self.keepalive_s, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """One timer for the pool: close the connections idle past keepalive_s (the oldest are first)."""
        self._sweeper = None
        now = loop.time()
        while self._idle and now - self._idle[0].idle_since >= self.keepalive_s:
            self._idle.pop(0).close()
        if self._idle:
            self._sweeper = loop.call_at(self._idle[0].idle_since + self.keepalive_s, self._sweep, loop)

    def _forget(self, conn: _Conn) -> None:
        """A connection closed (ours or the peer's): free its slot; a waiter may open a new one."""
        if conn not in self._open:
            return
        self._open.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        """Close every connection now; requests in flight fail with HttpConnectionError."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self._open):
            conn._fail(HttpConnectionError("the pool is closed"))
            conn.close()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(HttpConnectionError("the pool is closed"))
        self._waiters.clear()
