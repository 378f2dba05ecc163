"""The daemon's side of the shadow executor: shadow calls to APC regions performed in a child process.

Why: each shadow call to a region costs the loop that makes it ~0.25 ms of CPU, and on the primary's
loop that is primary latency (measured: 100% shadowing at 1,000 ops/s raised the primary's p99 1.3x).
Here the loop pays its share of one frame per turn: the calls decided in a turn go in one write, and
their answers come back batched the same way. The child (executor_worker.py) is niced, so on a busy
host the primary's processes win the CPU and the shadow calls wait, which is what shadowing should do.

Not a pool member: the child's regions are copies the router never routes to. Their health, breakers
and key inventory stay with the daemon's own region nodes, which decide where a call goes; the child
only performs it. While the child is down (starting, crashed and respawning) a call is skipped
(`unavailable`), never queued; calls the child loses (it died, hung, or the daemon stops) fail with
ExecutorUnavailable and are counted skipped too: they say nothing about the candidate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from hsmlb import errors
from hsmlb.backends import child, wire
from hsmlb.backends.child import FrameLink
from hsmlb.clock import Clock
from hsmlb.dev.procs import die_with_parent_env
from hsmlb.errors import HsmlbError, NodeFault, Unavailable
from hsmlb.ops import Operation

if TYPE_CHECKING:
    from hsmlb.config import ApcRegionConfig

log = logging.getLogger("hsmlb.shadow")
READY_TIMEOUT_S = 30.0
SWEEP_S = 0.5  # how often calls the child never answered are failed (a hung child), while any wait
LATE_S = 1.0  # past its deadline, a call is failed by the daemon if the child has not answered it
NICE = 10  # added to the daemon's niceness for the child: the primary's processes first
HUNG_SWEEPS = 3  # sweeps in a row that fail calls with no answer between them: the child is killed (respawned)
MAX_BUFFERED = 4 * 1024 * 1024  # bytes written to the child and not taken yet: beyond it, calls are skipped
CLOSE_S = 3.0  # the child's own exit at close, before it is killed (within the daemon's 5 s stop step)


class ExecutorUnavailable(Unavailable):
    """The executor, not the candidate, failed the call: counted skipped (`unavailable`)."""


def _error(name: str, message: str) -> HsmlbError:
    cls = ExecutorUnavailable if name == ExecutorUnavailable.__name__ else getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, HsmlbError)):
        cls = NodeFault
    try:
        return cls(message)
    except TypeError:  # a class whose constructor wants more than a message
        return NodeFault(message)


class ShadowExecutor:
    """perform(node, op) -> a future of (result, the call's own seconds in the child), for the regions given."""

    def __init__(self, regions: list[ApcRegionConfig], nice: int = NICE, cpus: list[int] | None = None,
                 clock: Clock = time.monotonic) -> None:
        self.regions = regions
        self.clock = clock  # the shadower's: an op's deadline is on it
        self.nodes = frozenset(r.name for r in regions)
        self.nice = nice
        self.cpus = cpus
        self.up = False
        self.started = False
        self.restarts = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._link: FrameLink | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._ready: asyncio.Future[dict[str, Any]] | None = None
        self._pending: dict[int, tuple[asyncio.Future[Any], float]] = {}  # id -> (future, fail-after)
        self._outbox: list[tuple[int, str, Operation]] = []
        self._next_id = 1
        self._sweep: asyncio.TimerHandle | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._starting: asyncio.Task[None] | None = None
        self._closing = False
        self._late_sweeps = 0

    def serves(self, node: str) -> bool:
        return node in self.nodes

    def perform(self, node: str, op: Operation) -> asyncio.Future[Any]:
        """Raises ExecutorUnavailable while the child is not up or not reading (the shadower skips the call)."""
        loop = self._loop
        transport = self._link.transport if self._link is not None else None
        if not self.up or loop is None or transport is None:
            raise ExecutorUnavailable("the shadow executor is not running")
        if transport.get_write_buffer_size() > MAX_BUFFERED:
            raise ExecutorUnavailable("the shadow executor is not keeping up")
        future = loop.create_future()
        request_id = self._next_id
        self._next_id = request_id + 1
        self._pending[request_id] = (future, (op.deadline or self.clock()) + LATE_S)
        if not self._outbox:
            loop.call_soon(self._flush)
        self._outbox.append((request_id, node, op))
        if self._sweep is None:
            self._sweep = loop.call_later(SWEEP_S, self._fail_late)
        return future

    def _flush(self) -> None:
        batch, self._outbox = self._outbox, []
        transport = self._link.transport if self._link is not None else None
        if batch and transport is not None and not transport.is_closing():
            transport.write(wire.encode(batch))

    def _on_frame(self, frame: Any) -> None:
        if isinstance(frame, dict):
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(frame)
            return
        pending = self._pending
        self._late_sweeps = 0
        for request_id, code, payload in frame:
            entry = pending.pop(request_id, None)
            if entry is None or entry[0].done():
                continue
            if code is None:
                entry[0].set_result(payload)
            else:
                entry[0].set_exception(_error(code, payload))

    def _fail_late(self) -> None:
        """A child that hangs must not hold shadow slots for ever: fail what is well past its deadline."""
        self._sweep = None
        now = self.clock()
        late = [rid for rid, (_, after) in self._pending.items() if after <= now]
        for request_id in late:
            future, _ = self._pending.pop(request_id)
            if not future.done():
                future.set_exception(ExecutorUnavailable("the shadow executor did not answer in time"))
        if late:
            self._late_sweeps += 1
            if self._late_sweeps >= HUNG_SWEEPS and self._proc is not None and self._proc.returncode is None:
                log.error("shadow executor answered nothing for %d sweeps: killed as hung (pid %s)",
                          self._late_sweeps, self._proc.pid)
                self._late_sweeps = 0
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()  # the supervisor sees it exit and respawns it
        if self._pending and self._loop is not None and not self._closing:
            self._sweep = self._loop.call_later(SWEEP_S, self._fail_late)

    def _on_lost(self, link: FrameLink) -> None:
        if self._link is not link:  # a link replaced by a respawn has nothing left to fail
            return
        self.up = False
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(NodeFault("the shadow executor exited during start"))
        self._fail_pending(ExecutorUnavailable("the shadow executor's connection was lost"))

    def _fail_pending(self, exc: HsmlbError) -> None:
        pending, self._pending = self._pending, {}
        self._outbox.clear()
        for future, _ in pending.values():
            if not future.done():
                future.set_exception(exc)

    # -- lifecycle -------------------------------------------------------------------------------
    def start_soon(self) -> None:
        """Start in the background (shadowing began at run time); the calls until it is up are skipped."""
        if not self.started:
            self.started = True
            self._starting = asyncio.ensure_future(self._start())

    async def start(self) -> None:
        """Spawn the child; if that fails, the supervisor keeps trying (shadow calls are skipped meanwhile)."""
        if not self.started:
            self.started = True
            await self._start()

    async def _start(self) -> None:
        try:
            await self._spawn()
        except Exception as exc:
            log.warning("shadow executor did not start (%s); shadow calls to regions are skipped until it does",
                        exc.message if isinstance(exc, HsmlbError) else type(exc).__name__)
        finally:
            if not self._closing:
                self._supervisor = asyncio.ensure_future(self._supervise())

    async def _spawn(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._link = None  # until the new one is connected: the old link's loss has nothing left to fail
        env = {**os.environ, **die_with_parent_env()}
        self._proc, self._link = await child.spawn("hsmlb.shadow.executor_worker", env,
                                                   lambda: FrameLink(self._on_frame, self._on_lost))
        try:
            assert self._link.transport is not None
            self._link.transport.write(wire.encode({"regions": self.regions, "nice": self.nice, "cpus": self.cpus}))
            async with asyncio.timeout(READY_TIMEOUT_S):
                hello = await self._ready
            if "failed" in hello or self._closing:
                raise NodeFault(f"the shadow executor could not start: {hello.get('failed', 'closing')}")
        except BaseException:
            await child.kill(self._proc, self._link)
            raise
        self.up = True
        log.info("shadow executor up: pid %s, regions up %s of %d", hello.get("pid"), len(hello.get("ready", ())),
                 len(self.regions))

    async def _supervise(self) -> None:
        delay = 0.1
        while not self._closing:
            if self.up and self._proc is not None:
                code = await self._proc.wait()
                if self._closing:
                    return
                self.up = False
                log.warning("shadow executor exited with %s; restarting", code)
            await asyncio.sleep(delay)
            try:
                await self._spawn()
                self.restarts += 1
                delay = 0.1
            except Exception as exc:
                delay = min(delay * 2, 5.0)
                log.warning("shadow executor restart failed (%s); next try in %.1fs",
                            exc.message if isinstance(exc, HsmlbError) else type(exc).__name__, delay)

    async def close(self) -> None:
        self._closing = True
        self.up = False
        for task in (self._starting, self._supervisor):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        if self._sweep is not None:
            self._sweep.cancel()
        if self._link is not None and self._link.transport is not None:
            self._link.transport.close()  # EOF: the child closes its regions and exits
        proc = self._proc
        try:
            if proc is not None and proc.returncode is None:
                async with asyncio.timeout(CLOSE_S):
                    await proc.wait()
        except TimeoutError:
            pass
        finally:
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            self._fail_pending(ExecutorUnavailable("the daemon is stopping"))
