"""PKCS#11 node: the daemon-side half of a token worker process.

The worker (pkcs11_worker.py) owns the library and the sessions. This side spawns it, keeps it
alive (respawning with back-off when it dies), batches requests into socket writes and resolves
futures from its replies. Nothing here blocks the event loop.

Requests wait in an outbox and go in one write at the end of the event loop turn. Waking a
worker that sleeps costs both processes far more CPU than the ~20 us token operation (measured:
~60-80 us per wake-up on a 2-vCPU VM), so wake-ups are paced: while the worker is busy with
fast-lane requests it has not answered, a write costs no wake-up and goes at once; once it is
idle, it is woken at most once per WAKE_INTERVAL_S, with everything that arrived meanwhile.
An idle node answers at once; a loaded one batches, adding at most WAKE_INTERVAL_S of latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from typing import Any

from hsmlb.backends import child, wire
from hsmlb.backends.base import BackendState
from hsmlb.backends.child import FrameLink
from hsmlb.config import ConfigError, Pkcs11NodeConfig
from hsmlb.dev.procs import die_with_parent_env
from hsmlb.errors import HsmlbError, NodeFault, Unavailable, from_wire
from hsmlb.ops import (
    HOST_SIDE_CAPABILITIES,
    NATIVE_CAPABILITIES,
    Capability,
    CostClass,
    KeyInfo,
    Operation,
    OpKind,
    map_key_identifiers,
)

log = logging.getLogger("hsmlb.backends.pkcs11")
# An idle worker is woken at most once per WAKE_INTERVAL_S (see the module docstring). Measured on
# 2 vCPUs, stream load at ~1,100 ops/s per node: 0 -> 1.0 worker wake-ups per op; 1 ms -> 0.95;
# 2 ms -> 0.65, each ~8% less server CPU per op. Batches grow with the per-node rate.
WAKE_INTERVAL_S = 0.001
# Requests one session may have in flight (NodePool depth): the worker runs them one after the other, so a
# batch goes to it in one write instead of one round trip per pool_size requests.
PIPELINE_DEPTH = 8
STOPPED_POLL_S = 0.1  # how often the supervisor looks whether the worker is stopped (SIGSTOP): ~20 us a look

WORKER_OP = {
    OpKind.ENCRYPT: "encrypt",
    OpKind.DECRYPT: "decrypt",
    OpKind.GENERATE_MAC: "generate_mac",
    OpKind.VERIFY_MAC: "verify_mac",
    OpKind.SIGN: "sign",
    OpKind.VERIFY: "verify",
    OpKind.RANDOM: "random",
}


def _why(exc: BaseException) -> str:
    """What really failed, in words safe to log: ours are redacted; an OSError says its errno
    (a full descriptor table is EMFILE, not 'cannot read a PIN'); anything else, its class."""
    if isinstance(exc, HsmlbError):
        return exc.message
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{type(exc).__name__}: {os.strerror(exc.errno)} ({errno.errorcode.get(exc.errno, exc.errno)})"
    return type(exc).__name__


def _process_stopped(pid: int) -> bool:
    """Whether process `pid` is stopped by a signal or a tracer (/proc state T or t)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1][1:2] in (b"T", b"t")
    except (OSError, IndexError):
        return False


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class Pkcs11Backend(BackendState):
    kind = "pkcs11"
    pipeline_depth = PIPELINE_DEPTH

    def __init__(self, config: Pkcs11NodeConfig, fault_injection: bool = False) -> None:
        super().__init__()  # state "starting", no keys, no on_change callbacks yet
        self.config = config
        # Native ops run on key handles; payment ops only where the config allows host-side derivation.
        self.capabilities: frozenset[Capability] = NATIVE_CAPABILITIES | (
            HOST_SIDE_CAPABILITIES if config.allow_host_side_derivation else frozenset())
        self.name = config.name
        self.fault_injection = fault_injection
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_id = 1
        self._pending: dict[int, asyncio.Future[Any]] = {}  # fast lane, sent or in the outbox
        self._pending_slow: dict[int, asyncio.Future[Any]] = {}
        self._outbox: list[tuple] = []
        self._outbox_slow = 0  # slow-lane requests in the outbox
        self._in_worker = 0  # fast-lane requests written and not answered yet: the worker is awake
        self._flush_scheduled = False
        self._last_wake = 0.0  # when the worker last went from idle to busy
        self._last_answer = 0.0  # when the worker last wrote anything
        self._link: FrameLink | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._ready: asyncio.Future[dict[str, Any]] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = False
        self._probe: asyncio.Future[Any] | None = None  # the canary the worker has not answered yet
        self._stopped = False  # the worker process is stopped (state T): see _check_stopped
        self._stopped_at = 0.0
        self.down_reason = ""  # why the worker is not up (no PIN, no secret): shown in health details
        self.restarts = 0

    # -- contract (state, keys and on_change come from BackendState) ---------------------------
    async def start(self) -> None:
        """Start the worker; if it fails, the supervisor keeps retrying in the background."""
        try:
            await self._spawn()
        finally:
            self._supervisor = asyncio.create_task(self._supervise(), name=f"supervise-{self.name}")

    def perform(self, op: Operation, slot: int) -> asyncio.Future[Any]:
        labels = self.config.key_labels
        label = labels.get(op.key_alias, op.key_alias) if op.key_alias else ""
        if op.apc:  # (apc_operation, params): aliases in the params become this token's labels
            operation, params = op.args
            args = (operation, map_key_identifiers(params, labels)) if labels else op.args
            return self._send("payment", label, args, op.deadline or 0.0, slot)
        if op.cost is CostClass.RSA and op.kind is OpKind.SIGN:
            return self._send("sign_rsa", label, op.args, op.deadline or 0.0, slot, slow=True)  # fast ops overtake it
        return self._send(WORKER_OP[op.kind], label, op.args, op.deadline or 0.0, slot)

    async def control(self, name: str, *args: Any, timeout: float = 5.0) -> Any:
        """Non-data requests to the worker: _ping, _inventory, _stats, _fault (test-only).

        A worker busy past `timeout` (a hung or very slow token) is a node fault, not a crash of the caller."""
        try:
            return await asyncio.wait_for(self._send(name, "", args, 0.0, 0), timeout)
        except TimeoutError:
            raise NodeFault(f"node {self.name}: the token worker did not answer {name} within {timeout:g}s") from None

    async def probe(self) -> None:
        """Health canary: GenerateRandom on a pooled session, through the worker's fast lane.

        At most one canary waits in the worker: the checker gives up on a slow one after its timeout,
        and sending another each interval would pile canaries up on a slow token, each costing it a
        full operation, so that it never catches up. A later check waits for the same canary."""
        if self._state != "up":
            reason = f": {self.down_reason}" if self.down_reason else ""
            raise NodeFault(f"node {self.name} is {self._state}{reason}")
        probe = self._probe
        if probe is None or probe.done():
            probe = self._probe = self._send("_ping", "", (), 0.0, 0)
            probe.add_done_callback(_retrieved)  # its outcome may come after every check gave up on it
        await asyncio.shield(probe)

    async def inject_fault(self, fault: str, value: float = 0.0) -> None:
        """Test-only (config fault_injection): break the token or the worker under the pool."""
        if fault == "kill_worker":
            if self._proc and self._proc.returncode is None:
                self._proc.kill()
            return
        await self.control("_fault", fault, value)

    async def close(self) -> None:
        self._closing = True
        if self._supervisor:
            self._supervisor.cancel()
        if self._link and self._link.transport:
            self._link.transport.close()  # EOF: the worker closes its sessions and finalizes
        if self._proc and self._proc.returncode is None:
            try:
                await asyncio.wait_for(self._proc.wait(), 5.0)
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        self._fail_pending(Unavailable(f"node {self.name} is shutting down"))
        self._set_state("down")

    # -- request path -----------------------------------------------------------------------
    def _send(self, name: str, label: str, args: tuple, deadline: float, slot: int,
              slow: bool = False) -> asyncio.Future[Any]:
        loop = self._loop
        if self._state != "up" or self._link is None or loop is None:
            failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            failed.set_exception(NodeFault(f"node {self.name} is {self._state}"))
            return failed
        future = loop.create_future()
        request_id = self._next_id
        self._next_id = request_id + 1
        if slow:
            self._pending_slow[request_id] = future
            self._outbox_slow += 1
        else:
            self._pending[request_id] = future
        self._outbox.append((request_id, slot, name, label, args, deadline))
        if not self._flush_scheduled:
            self._schedule_flush(loop)
        return future

    def _schedule_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """Write at the end of this loop turn if the worker is busy; if it is idle, at most once per
        WAKE_INTERVAL_S after the last wake-up."""
        self._flush_scheduled = True
        wait = 0.0 if self._in_worker else self._last_wake + WAKE_INTERVAL_S - time.monotonic()
        if wait > 0:
            loop.call_later(wait, self._flush)
        else:
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch, self._outbox = self._outbox, []
        slow, self._outbox_slow = self._outbox_slow, 0
        transport = self._link.transport if self._link else None
        if batch and transport is not None and not transport.is_closing():  # else the link is going down
            if not self._in_worker:  # and _on_link_lost fails the requests
                self._last_wake = time.monotonic()
            self._in_worker += len(batch) - slow
            transport.write(wire.encode(batch))

    def _on_frame(self, frame: Any) -> None:
        if isinstance(frame, dict):  # handshake
            if self._ready and not self._ready.done():
                self._ready.set_result(frame)
            return
        pending = self._pending
        answered = 0
        for request_id, code, payload in frame:
            future = pending.pop(request_id, None)
            if future is None:
                future = self._pending_slow.pop(request_id, None)
                if future is None:
                    continue
            else:
                answered += 1
            if future.done():
                continue
            if code is None:
                future.set_result(payload)
            else:
                future.set_exception(from_wire(code, payload))
        self._in_worker -= answered

    def _answered(self) -> None:
        self._last_answer = time.monotonic()  # the worker is alive: see _watch

    def _on_lost(self, link: FrameLink) -> None:
        if self._link is link:  # a link replaced by a respawn has nothing left to fail
            self._on_link_lost()

    def _on_link_lost(self) -> None:
        if self._ready and not self._ready.done():
            self._ready.set_exception(NodeFault(f"node {self.name}: worker exited during start"))
        self._fail_pending(NodeFault(f"node {self.name}: token worker connection lost"))
        if not self._closing:
            self.down_reason = self.down_reason or "token worker connection lost"
            self._set_state("down")

    def _fail_pending(self, exc: HsmlbError) -> None:
        pending = [*self._pending.values(), *self._pending_slow.values()]
        self._pending, self._pending_slow = {}, {}
        self._outbox.clear()
        self._outbox_slow = self._in_worker = 0
        for future in pending:
            if not future.done():
                future.set_exception(exc)

    # -- worker lifecycle -------------------------------------------------------------------
    async def _spawn(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        try:  # before the process: a PIN source that cannot be read (yet) is a failed start, retried
            pin = self.config.read_pin()
        except ConfigError as exc:
            self.down_reason = str(exc)
            raise NodeFault(f"node {self.name}: {exc}") from None
        env = {**os.environ, **self.config.env, **die_with_parent_env()}
        self._ready = loop.create_future()
        self._link = None  # until the new one is connected: the old link's loss has nothing left to fail
        self._proc, self._link = await child.spawn("hsmlb.backends.pkcs11_worker", env, lambda: FrameLink(
            self._on_frame, self._on_lost, self._answered))
        try:
            init = {
                "module": str(self.config.module),
                "token_label": self.config.token_label,
                "token_serial": self.config.token_serial,
                "pin": pin,
                "pool_size": self.config.pool_size,
                "session_key_copies": self.config.session_key_copies,
                "fault_injection": self.fault_injection,
            }
            assert self._link.transport is not None
            self._link.transport.write(wire.encode(init))
            hello = await asyncio.wait_for(self._ready, 30.0)
            if "failed" in hello:
                self.down_reason = f"token worker could not open the token: {hello['failed']}"
                raise NodeFault(f"node {self.name}: {self.down_reason}")
        except BaseException as exc:  # no worker may outlive a failed start
            if isinstance(exc, TimeoutError):
                self.down_reason = "token worker did not open the token within 30s"
            await child.kill(self._proc, self._link)
            raise
        self._keys = self._index(hello["ready"])
        self._stopped = False
        self.down_reason = ""
        self._set_state("up")
        log.info("node %s up: worker pid %s, %d sessions, %d keys",
                 self.name, hello.get("pid"), self.config.pool_size, len(self._keys))

    def _index(self, inventory: list[dict[str, Any]]) -> dict[str, KeyInfo]:
        aliases = {label: alias for alias, label in self.config.key_labels.items()}
        keys = {}
        for entry in inventory:
            alias = aliases.get(entry["label"], entry["label"])
            keys[alias] = KeyInfo(alias=alias, label=entry["label"], key_type=entry["key_type"],
                                  kcv=entry["kcv"], usages=frozenset(entry["usages"]), bits=entry["bits"],
                                  key_usage=entry.get("key_usage", ""), algorithm=entry.get("algorithm", ""))
        return keys

    def _check_stopped(self, pid: int) -> None:
        """A worker stopped by a signal (SIGSTOP, a debugger) answers nothing until it is continued:
        out of rotation at once, its requests fail over now (as node faults, retried elsewhere) instead
        of waiting out worker_timeout_s; back in (health checks, then slow start) once it runs again.
        Its late answers to the failed requests are dropped (their ids are no longer pending)."""
        stopped = _process_stopped(pid)
        if stopped and not self._stopped:
            self._stopped = True
            self._stopped_at = time.monotonic()
            self.down_reason = "token worker is stopped (SIGSTOP?): not answering"
            log.warning("node %s: %s (pid %s); its requests go to other nodes", self.name, self.down_reason, pid)
            self._fail_pending(NodeFault(f"node {self.name}: the token worker stopped answering"))
            self._set_state("down")
        elif not stopped and self._stopped:
            self._stopped = False
            self.down_reason = ""
            log.warning("node %s: token worker running again (pid %s)", self.name, pid)
            self._set_state("up")

    def _hung(self, limit_s: float) -> bool:
        """Requests wait in the worker, and it has written nothing for limit_s since it got busy; or it
        has been stopped that long (its requests already failed over: it is respawned, not waited for)."""
        now = time.monotonic()
        if self._stopped:
            return now - self._stopped_at > limit_s
        busy = self._in_worker > 0 or bool(self._pending_slow)
        return busy and now - max(self._last_wake, self._last_answer) > limit_s

    async def _watch(self, proc: asyncio.subprocess.Process) -> int:
        """Wait for the worker to exit; kill it first if it hangs (a C call that never returns,
        a stopped process), so that its requests fail over instead of waiting for ever. Sets down_reason."""
        limit_s = self.config.worker_timeout_s
        exited = asyncio.ensure_future(proc.wait())
        killed = False
        try:
            while True:
                done, _ = await asyncio.wait({exited}, timeout=min(STOPPED_POLL_S, limit_s / 4))
                if done:
                    code = exited.result()
                    if not killed:
                        self.down_reason = f"token worker exited with {code}"
                    return code
                self._check_stopped(proc.pid)
                if self._hung(limit_s) and proc.returncode is None:
                    killed = True
                    self.down_reason = f"token worker answered nothing for {limit_s:g}s: killed as hung"
                    log.error("node %s: %s (pid %s)", self.name, self.down_reason, proc.pid)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
        finally:
            exited.cancel()

    async def _supervise(self) -> None:
        """Respawn the worker when it dies, with back-off; in-flight requests already failed over."""
        delay = 0.05
        while not self._closing:
            if self._state == "up" and self._proc is not None:
                code = await self._watch(self._proc)
                if self._closing:
                    return
                self._set_state("down")
                log.warning("node %s: token worker exited with %s; restarting", self.name, code)
            while not self._closing:
                await asyncio.sleep(delay)
                try:
                    await self._spawn()
                    self.restarts += 1
                    delay = 0.05
                    break
                except Exception as exc:  # whatever failed, this loop must live on to try again
                    delay = min(delay * 2, 5.0)
                    reason = _why(exc)
                    if not isinstance(exc, HsmlbError):  # ours set down_reason; an OSError (EMFILE) says it here
                        self.down_reason = f"token worker could not be started: {reason}"
                    log.warning("node %s: restart failed (%s); next try in %.2fs", self.name, reason, delay)
