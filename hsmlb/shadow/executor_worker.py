"""The shadow executor's child process: the candidate regions' data-plane clients, off the primary's loop.

A shadow call to an APC region costs ~0.25 ms of CPU (request, SigV4, HTTP, parsing), and on the
primary's event loop that time comes out of the primary's latency. Here it runs in a process of its own
(niced), so the primary's loop pays one frame per loop turn for a batch of shadow calls.

It holds its own ApcRegionBackend per candidate region (discovery, keep-alive connections, credentials
and quota buckets of its own). The daemon decides what to shadow and where; this process only performs.
Frames (backends/wire.py), on a private socketpair with the daemon:
  init     {"regions": [ApcRegionConfig, ...], "nice": int, "cpus": [int] | None}  ->  {"ready": [names up]}
  request  [(request_id, node, Operation), ...]
  reply    [(request_id, None, (result, seconds)) | (request_id, error class name, message), ...]
Replies wait up to REPLY_LINGER_S to travel together: each frame wakes the daemon's loop, and the
latency the daemon records for an answer is the call's own, measured here, so the linger does not count
in it (a failed call is timed by the daemon).
It exits when the daemon closes the socket (or dies: die_with_parent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

from hsmlb.backends import wire
from hsmlb.backends.apc import ApcRegionBackend
from hsmlb.dev.procs import die_with_parent
from hsmlb.errors import HsmlbError
from hsmlb.ops import Operation
from hsmlb.telemetry.logs import child_logging

log = logging.getLogger("hsmlb.shadow")
START_TIMEOUT_S = 20.0
REPLY_LINGER_S = 0.002


class _Executor(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop, stopped: asyncio.Future[None]) -> None:
        self.loop = loop
        self.stopped = stopped
        self.decoder = wire.FrameDecoder()
        self.transport: asyncio.Transport | None = None
        self.regions: dict[str, ApcRegionBackend] = {}
        self.outbox: list[tuple[Any, ...]] = []
        self.calls: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        for frame in self.decoder.feed(data):
            if isinstance(frame, dict):
                self.calls.add(task := self.loop.create_task(self._start(frame)))
                task.add_done_callback(self.calls.discard)
                continue
            for request_id, node, op in frame:
                task = self.loop.create_task(self._perform(request_id, self.regions.get(node), op))
                self.calls.add(task)
                task.add_done_callback(self.calls.discard)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.stopped.done():
            self.stopped.set_result(None)

    async def _start(self, init: dict[str, Any]) -> None:
        try:
            await self._open(init)
        except Exception as exc:  # the daemon hears why at once instead of waiting out its timeout
            self._reply({"failed": type(exc).__name__})
            return
        self._reply({"ready": [n for n, b in self.regions.items() if b.state == "up"], "pid": os.getpid()})

    async def _open(self, init: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            os.nice(int(init.get("nice", 0)))
        if init.get("cpus"):  # before the regions start: threads they make inherit it
            try:
                os.sched_setaffinity(0, set(init["cpus"]))
            except (OSError, ValueError) as exc:
                log.warning("shadow executor: cpus %s refused (%s); running on any", init["cpus"], type(exc).__name__)
        self.regions = {config.name: ApcRegionBackend(config) for config in init["regions"]}
        starts = [asyncio.ensure_future(backend.start()) for backend in self.regions.values()]
        if starts:  # a region down now is brought up by its own supervisor; calls to it fail until then
            await asyncio.wait(starts, timeout=START_TIMEOUT_S)
        for start in starts:
            if start.done() and not start.cancelled():
                start.exception()

    async def _perform(self, request_id: int, region: ApcRegionBackend | None, op: Operation) -> None:
        try:
            if region is None:
                raise LookupError
            started = time.monotonic()
            left = op.deadline - started if op.deadline is not None else None
            async with asyncio.timeout(max(left, 0.0) if left is not None else None):
                result = await region.perform(op, 0)
            reply: tuple[Any, ...] = (request_id, None, (result, time.monotonic() - started))
        except HsmlbError as exc:
            reply = (request_id, type(exc).__name__, exc.message)
        except TimeoutError:
            reply = (request_id, "DeadlineExceeded", "the shadow call's deadline passed")
        except LookupError:
            reply = (request_id, "ExecutorUnavailable", "the shadow executor has no such region")
        except Exception as exc:  # the type only: an exception's text may quote request data
            reply = (request_id, "NodeFault", f"shadow call failed: {type(exc).__name__}")
        self._reply(reply)

    def _reply(self, reply: Any) -> None:
        if isinstance(reply, dict):
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(wire.encode(reply))
            return
        if not self.outbox:
            self.loop.call_later(REPLY_LINGER_S, self._flush)
        self.outbox.append(reply)

    def _flush(self) -> None:
        batch, self.outbox = self.outbox, []
        if batch and self.transport is not None and not self.transport.is_closing():
            self.transport.write(wire.encode(batch))

    async def close(self) -> None:
        for task in list(self.calls):
            task.cancel()
        for backend in self.regions.values():
            with contextlib.suppress(Exception):
                await backend.close()


async def _serve(fd: int) -> None:
    loop = asyncio.get_running_loop()
    stopped: asyncio.Future[None] = loop.create_future()
    sock = socket.socket(fileno=fd)
    _, executor = await loop.create_connection(lambda: _Executor(loop, stopped), sock=sock)
    try:
        await stopped
    finally:
        await executor.close()


def main() -> None:
    # As a token worker (pkcs11_worker.main): the daemon owns this process's life. A SIGTERM or SIGINT to
    # the whole process group must not kill it under the daemon's graceful stop (nor make it respawn);
    # the daemon's death kills it, even a hung one.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(signal.SIGKILL)
    child_logging("shadow-executor")
    try:
        import uvloop

        run = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency; asyncio.run is the fallback
        run = asyncio.run
    run(_serve(int(sys.argv[1])))


if __name__ == "__main__":
    main()
