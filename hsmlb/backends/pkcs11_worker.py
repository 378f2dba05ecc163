"""A token worker: one process per node, the only code that calls into its PKCS#11 library.

Why a process: python-pkcs11 initialises libraries without OS locking, so two threads in one
library segfault; and a C call that releases the GIL inside the gRPC server process costs far
more in GIL hand-offs than the 16 us the token needs. A single-threaded process per node owns
its library, its logged-in sessions and its cached key handles, and gets its own core time.

Loop: read every request frame waiting on the socket, run the fast ops, send their replies in
one write, then run at most one slow op (RSA signing) before looking at the socket again, so a
symmetric op never waits behind more than one slow op.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import signal
import socket
import sys
import time
from collections import deque
from typing import Any

import pkcs11
from pkcs11 import Attribute, ObjectClass

from hsmlb.backends import wire
from hsmlb.backends.pkcs11_ops import OPS, SLOW_OPS, CallerFault, classify, discover, key_objects
from hsmlb.backends.pkcs11_payments import PAYMENT_OPS
from hsmlb.backends.pkcs11_tokeninfo import token_info
from hsmlb.dev.procs import die_with_parent
from hsmlb.telemetry.logs import child_logging

# Recovery steps in escalating order; one request may climb them, each step at most once.
ESCALATION = ("session", "login", "library")


class InjectedDeviceError(Exception):
    """Test-only (fault error_rate): fails an op as a broken device would, without recovery."""


class TokenHost:
    """Owns one token's library, sessions and key-handle cache; recovers them when they decay."""

    def __init__(self, init: dict[str, Any]) -> None:
        self.module = init["module"]
        self.token_label = init.get("token_label")
        self.token_serial = init.get("token_serial")
        self._pin = init["pin"]
        self.pool_size = init["pool_size"]
        self.fault_injection = bool(init.get("fault_injection"))
        self.session_key_copies = bool(init.get("session_key_copies"))
        self.delay_s = 0.0
        self.error_rate = 0.0
        self._rng = random.Random()
        self._last_reopen = 0.0
        self.lib = pkcs11.lib(self.module)
        self.token: Any = None
        self.sessions: list[Any] = []
        self.handles: list[dict[tuple[str, ObjectClass], Any]] = []
        self.known_keys: set[tuple[str, ObjectClass]] = set()  # (label, object class) the token holds
        self.known_labels: set[str] = set()
        self.recoveries = {"session": 0, "login": 0, "library": 0}

    # -- lifecycle --------------------------------------------------------------------------
    def open_all(self) -> None:
        if self.token_serial:
            self.token = self.lib.get_token(token_serial=self.token_serial)
        else:
            self.token = self.lib.get_token(token_label=self.token_label)
        self.sessions = [self._open(login=(i == 0)) for i in range(self.pool_size)]
        self.handles = [{} for _ in self.sessions]
        self.known_keys = key_objects(self.sessions[0])
        self.known_labels = {label for label, _ in self.known_keys}

    def _open(self, login: bool) -> Any:
        if not login:
            return self.token.open(rw=False)
        try:
            return self.token.open(user_pin=self._pin, rw=False)
        except pkcs11.exceptions.UserAlreadyLoggedIn:
            return self.token.open(rw=False)

    def close_all(self) -> None:
        for session in self.sessions:
            with contextlib.suppress(Exception):
                session.close()
        self.sessions, self.handles = [], []

    def inventory(self) -> list[dict[str, Any]]:
        return discover(self.sessions[0])

    # -- recovery ---------------------------------------------------------------------------
    def recover(self, kind: str, slot: int) -> None:
        """Replace the slot's session ("session": without login, "login": logging in) or reopen everything.

        The old session is closed first so that it does not leak. Login state is per process, not
        per session: closing a session opened with the PIN logs every session out (python-pkcs11
        calls C_Logout first); the retry then escalates to "login", which logs in again.
        """
        self.recoveries[kind] += 1
        if kind in ("session", "login"):
            with contextlib.suppress(Exception):  # usually already gone (closed, or its handle invalid)
                self.sessions[slot].close()
            self.handles[slot] = {}
            self.sessions[slot] = self._open(login=kind == "login")
        else:
            self.close_all()
            self.lib.reinitialize()
            self.open_all()

    # -- operations -------------------------------------------------------------------------
    def key(self, slot: int, label: str, object_class: ObjectClass) -> Any:
        cache = self.handles[slot]
        handle = cache.get((label, object_class))
        if handle is None:
            try:
                handle = self.sessions[slot].get_key(label=label, object_class=object_class)
            except pkcs11.exceptions.NoSuchKey:
                if (label, object_class) in self.known_keys:
                    # Private objects vanish from a session that lost its login: treat as login decay.
                    raise pkcs11.exceptions.UserNotLoggedIn() from None
                if label in self.known_labels:  # the key exists, but not as this class: the wrong key type
                    wanted = object_class.name.lower().replace("_", " ")
                    raise CallerFault(f"key {label} has no {wanted} on this token: wrong key type for this "
                                      "operation") from None
                raise LookupError(f"key {label} ({object_class.name.lower()}) is not on this token") from None
            if self.session_key_copies:
                handle = _session_copy(handle, label)
            cache[(label, object_class)] = handle
        return handle

    def run(self, request: tuple) -> tuple:
        request_id, slot, op, label, args, deadline = request
        if deadline and time.monotonic() > deadline:
            return (request_id, "deadline", "the deadline passed while the request was queued")
        if not self.sessions:  # a failed recovery left nothing open: try again, at most every 50 ms
            if time.monotonic() - self._last_reopen < 0.05:
                return (request_id, "node", "token unavailable (recovery pending)")
            self._last_reopen = time.monotonic()
            try:
                self.recover("library", 0)
            except Exception as exc:
                self.sessions = []
                return (request_id, "node", f"token unavailable: {classify(exc)[1]}")
        slot %= len(self.sessions)
        climbed = -1  # index in ESCALATION of the last recovery step this request took
        while True:
            try:
                return (request_id, None, self._dispatch(slot, op, label, args))
            except CallerFault as exc:
                return (request_id, "invalid", str(exc))
            except LookupError as exc:
                return (request_id, "not_found", str(exc))
            except Exception as exc:
                kind, message = classify(exc)
                if self.session_key_copies and isinstance(exc, _COPY_GONE):
                    kind = "login"  # a logout destroys private session objects: log in again, copy again
                if kind == "invalid":
                    return (request_id, "invalid", message)
                # Retry only after a higher step than the last: a reopened session may show that the
                # login is gone too (session -> login), never the same step twice (bounded: 3 steps).
                if kind not in ESCALATION or ESCALATION.index(kind) <= climbed:
                    return (request_id, "node", message)
                climbed = ESCALATION.index(kind)
                try:
                    self.recover(kind, slot)
                except Exception as again:
                    if kind == "library":
                        self.close_all()
                    return (request_id, "node", f"recovery ({kind}) failed: {classify(again)[1]}")
                if not self.sessions:
                    return (request_id, "node", "token unavailable (recovery left no session)")
                slot %= len(self.sessions)

    def _dispatch(self, slot: int, op: str, label: str, args: tuple) -> Any:
        if op == "_fault" and self.fault_injection:  # control ops are not subject to the injected faults
            return self._fault(*args)
        if op == "_token_info":  # the status page's hardware row: read on the health cadence, not per op
            return token_info(self.module, self.token)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.error_rate and self._rng.random() < self.error_rate:
            raise InjectedDeviceError()
        if op == "random":
            return self.sessions[slot].generate_random(8 * args[0])
        handler = OPS.get(op) or PAYMENT_OPS.get(op)
        if handler is not None:
            return handler(lambda lab, cls: self.key(slot, lab, cls), label, args)
        if op == "_ping":
            return self.sessions[0].generate_random(64)
        if op == "_inventory":
            return self.inventory()
        if op == "_stats":
            return dict(self.recoveries)
        raise CallerFault(f"unknown operation {op}")

    def _fault(self, what: str, value: float = 0.0) -> str:
        """Test-only hooks (config fault_injection: true): break the token under the pool."""
        if what == "close_sessions":
            for session in self.sessions:
                session.close()
        elif what == "logout":
            self.sessions[0].close()  # closing every session drops the login state
            for session in self.sessions[1:]:
                session.close()
        elif what == "finalize":
            self.lib.finalize()
        elif what == "delay":
            self.delay_s = float(value)
        elif what == "error_rate":
            self.error_rate = float(value)
        else:
            raise CallerFault(f"unknown fault {what}")
        return what


COPY_SUFFIX = " (hsmlb session copy)"
_COPY_GONE = (pkcs11.exceptions.KeyHandleInvalid, pkcs11.exceptions.ObjectHandleInvalid)


def _session_copy(handle: Any, label: str) -> Any:
    """A session-object copy of a token key (config session_key_copies), or the key itself where the
    token refuses the copy (CKA_COPYABLE false, no room). It lives as long as its session: a recovery
    that replaces the session clears the slot's handle cache, and the next use copies again. Session
    objects are visible to every session of the process, so the copy gets a label of its own: a lookup
    by the key's label still finds exactly the token object."""
    try:
        return handle.copy({Attribute.TOKEN: False, Attribute.LABEL: label + COPY_SUFFIX})
    except pkcs11.exceptions.PKCS11Error:
        return handle


def serve(sock: socket.socket) -> int:
    """Open the token, then loop: read what is waiting, run the fast ops, one write of replies, one slow op."""
    decoder = wire.FrameDecoder()
    readable = select.poll()
    readable.register(sock, select.POLLIN)
    frames = _read_frames(sock, decoder, readable, block=True)
    if not frames:
        return 0
    try:
        host = TokenHost(frames[0])
        host.open_all()
        sock.sendall(wire.encode({"ready": host.inventory(), "pid": os.getpid()}))
    except Exception as exc:
        sock.sendall(wire.encode({"failed": classify(exc)[1]}))
        return 2
    fast: deque[tuple] = deque()
    slow: deque[tuple] = deque()
    run = host.run
    while True:
        frames = _read_frames(sock, decoder, readable, block=not (fast or slow))
        if frames is None:  # the daemon closed the link: shut down cleanly
            host.close_all()
            with contextlib.suppress(Exception):
                host.lib.finalize()
            return 0
        for batch in frames:
            for request in batch:
                (slow if request[2] in SLOW_OPS else fast).append(request)
        if fast:
            replies = [run(request) for request in fast]
            fast.clear()
            sock.sendall(wire.encode(replies))
        if slow:
            sock.sendall(wire.encode([run(slow.popleft())]))


def _read_frames(sock: socket.socket, decoder: wire.FrameDecoder, readable: select.poll,
                 block: bool) -> list[Any] | None:
    """Whole frames waiting on the socket; with block, wait for one. None once the daemon has closed.

    The wait is poll(POLLIN), not a blocking recv: a task asleep in recv on a unix socket is also
    woken each time the daemon reads one of our replies (write-space wake-up), and goes back to
    sleep: two context switches per batch instead of one. poll only wakes for input. The reads go
    into one buffer for the process's life: recv(1 MiB) would mmap and munmap a bytes object each time.
    """
    while True:
        if block:
            readable.poll()
        try:
            size = sock.recv_into(_RECV_BUFFER, 0, socket.MSG_DONTWAIT)
        except BlockingIOError:
            if not block:
                return []
            continue
        if not size:
            return None
        frames = decoder.feed(_RECV_VIEW[:size])
        if frames:
            return frames  # what arrives meanwhile is read on the next pass, before any wait
        if not block:
            return []


_RECV_BUFFER = bytearray(1 << 20)
_RECV_VIEW = memoryview(_RECV_BUFFER)


def main() -> int:
    # The daemon owns this process's life: it closes the socket to stop it (and kills it if that
    # fails), and its death is our EOF. A SIGTERM or SIGINT sent to the whole process group (a
    # service manager's stop, a terminal's Ctrl-C) must not kill the worker under the daemon's
    # graceful drain, which still needs the token for the requests in flight.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(signal.SIGKILL)  # a daemon killed outright leaves no worker behind, even a hung one
    child_logging("token-worker")
    fd = int(sys.argv[1])
    with socket.socket(fileno=fd) as sock:
        return serve(sock)


if __name__ == "__main__":
    sys.exit(main())
