"""Bounded resources: connections, descriptors, admission, queue waits and per-attempt timeouts.

Why one section: every one of these is a bound that keeps overload from turning into unbounded
latency or a daemon locked out of its own descriptors, and they interact (the connection cap is
derived from the descriptor limit; the queue-wait bound from the symmetric latency budget).

Also the start-up checks that must run before any node starts: the listening address is free,
and the descriptor limit is raised as far as the hard limit allows.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import socket

from pydantic import BaseModel, ConfigDict, Field

from hsmlb.pool.attempt_timeout import AttemptTimeout

log = logging.getLogger("hsmlb.limits")
# max_receive_message_length: a BatchRequest of MAX_BATCH_ITEMS items at the largest data size
# (8192 hex digits each) is ~9 MB; a bigger message is refused whole by gRPC (RESOURCE_EXHAUSTED).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Descriptors kept back from the connection cap: token worker links, region connections, logs.
FD_RESERVE = 128


class StartupError(Exception):
    """The daemon cannot start; the message is one line for the operator (no traceback)."""


class LimitsConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    idle_timeout_s: float = Field(
        60.0, gt=0, le=86400, description="a client connection with no RPC for this long is closed (GOAWAY)")
    keepalive_time_s: float = Field(30.0, gt=0, description="ping a connection that has been silent this long")
    keepalive_timeout_s: float = Field(10.0, gt=0, description="close it if the ping is not answered in time")
    max_connections: int = Field(
        4096, ge=1, description="open client connections at most; lowered to fit the descriptor limit")
    max_concurrent_streams: int = Field(1024, ge=1, description="RPCs in flight per connection")
    max_connections_per_peer: int = Field(
        0, ge=0, description="connections one peer host may use for RPCs at once (within idle_timeout_s); an RPC "
        "on one more gets RESOURCE_EXHAUSTED (peer_cap.py says what it does not do; 0: no per-peer cap)")
    max_pending_rpcs: int = Field(
        20000, ge=1, description="RPCs received and not yet taken up by the daemon; grpc core cancels "
        "(CANCELLED) beyond it, so it stays above what the shedding below answers with RESOURCE_EXHAUSTED")
    max_unary_in_flight: int = Field(
        256, ge=0, description="unary calls being served at once; more get RESOURCE_EXHAUSTED at once (0: no bound)")
    max_queue_wait_ms: float = Field(
        100.0, ge=0, description="longest an operation may wait for a node's session before it is shed "
        "(RESOURCE_EXHAUSTED, or another node with room)")
    attempt_timeout_multiplier: float = Field(
        10.0, ge=0, description="an idempotent op's attempt may take this many times the node's recent latency "
        "(EWMA), then it is retried on another node and counted against this one (0: no per-attempt timeout)")
    attempt_timeout_min_ms: float = Field(
        500.0, gt=0, description="the per-attempt timeout's floor: a busy host's scheduling delays stay below it")
    attempt_timeout_max_ms: float = Field(2000.0, gt=0, description="the per-attempt timeout's ceiling")


def attempt_timeout(limits: LimitsConfig) -> AttemptTimeout | None:
    """One node's per-attempt timeout policy (each pool gets its own: the latency is the node's)."""
    if not limits.attempt_timeout_multiplier:
        return None
    floor = limits.attempt_timeout_min_ms / 1000
    return AttemptTimeout(limits.attempt_timeout_multiplier, floor, max(floor, limits.attempt_timeout_max_ms / 1000))


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (never beyond); the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    elif hard == resource.RLIM_INFINITY and soft != resource.RLIM_INFINITY and soft < 1 << 20:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (1 << 20, hard))
            soft = 1 << 20
    return soft


def connection_cap(limits: LimitsConfig, fd_limit: int) -> int:
    """The configured cap, lowered so that connections can never take the descriptors the daemon needs."""
    return max(1, min(limits.max_connections, fd_limit - FD_RESERVE))


def grpc_server_options(limits: LimitsConfig, fd_limit: int) -> tuple[tuple[str, int], ...]:
    """The daemon's grpc core server args, the one place they are stated (bench/echo_server.py runs its
    baseline with them too). so_reuseport 0: a second daemon on the same port fails to bind instead of
    silently sharing it (several daemons behind one port measured no better on 2 vCPUs). Tried on the
    echo baseline, no measurable change: grpc.http2.bdp_probe 0, grpc.optimization_target "throughput"."""
    return (
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_concurrent_streams", limits.max_concurrent_streams),
        ("grpc.max_connection_idle_ms", int(limits.idle_timeout_s * 1000)),
        ("grpc.keepalive_time_ms", int(limits.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(limits.keepalive_timeout_s * 1000)),
        ("grpc.max_allowed_incoming_connections", connection_cap(limits, fd_limit)),
        ("grpc.server.max_pending_requests", limits.max_pending_rpcs),
        ("grpc.server.max_pending_requests_hard_limit", limits.max_pending_rpcs),
    )


def check_listen(listen: str) -> None:
    """Bind the listening address once, as grpc will (SO_REUSEADDR), and let it go: a busy or
    forbidden address is one clear line before any node starts. Port 0 is always free."""
    host, _, port_text = listen.rpartition(":")
    host = host.strip("[]")
    port = int(port_text)
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"cannot listen on {listen}: {exc.strerror}") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                reason = "address already in use (another daemon?)" if exc.errno == errno.EADDRINUSE \
                    else (exc.strerror or type(exc).__name__).lower()
                raise StartupError(f"cannot listen on {listen}: {reason}") from None


def announce(line: str) -> None:
    """Print the start-up line; a stdout that cannot be written (a full disk, a closed pipe) must not
    stop a daemon that is already serving: the line goes to the log instead."""
    try:
        print(line, flush=True)
    except (OSError, ValueError) as exc:
        log.warning("%s (stdout not writable: %s)", line, os.strerror(exc.errno) if getattr(exc, "errno", None)
                    else type(exc).__name__)
        with contextlib.suppress(OSError, ValueError):  # never flush the failed line again at exit
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.close(devnull)
