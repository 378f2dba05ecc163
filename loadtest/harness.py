"""The system under test for one run: a dev cluster in a temporary state dir and the daemon on loopback.

Why its own module: the runner must always tear down what it started (daemon SIGTERM with a
bounded wait, then kill; state dir with the token PINs removed), including on errors and Ctrl-C.
Every wait here has a deadline.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import grpc

from hsmlb.dev.procs import stop  # bounded SIGTERM, then kill the group start_daemon created
from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from loadtest import tls

ROOT = Path(__file__).resolve().parents[1]
DEV_UP_TIMEOUT_S = 180.0
START_TIMEOUT_S = 60.0
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    address: str
    log_path: Path


def dev_up(state_dir: Path, fault_injection: bool = False) -> Path:
    """`hsmlb dev up` on 127.0.0.1 with an ephemeral port; returns the config path it prints."""
    argv = [sys.executable, "-m", "hsmlb", "dev", "up", "--state-dir", str(state_dir), "--listen", "127.0.0.1:0"]
    if fault_injection:
        argv.append("--fault-injection")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=DEV_UP_TIMEOUT_S, env=ENV, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"hsmlb dev up failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def _read_line(stream: IO[bytes], deadline: float) -> str | None:
    """One line from a child's stdout before the deadline; None at EOF or timeout."""
    fd = stream.fileno()
    buffer = b""
    while not buffer.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 1)
            if not chunk:
                return None
            buffer += chunk
    return buffer.decode(errors="replace")


def _drain(stream: IO[bytes], log: IO[bytes]) -> None:
    """Keep copying the daemon's stdout into its log, so a full pipe can never block it."""
    with contextlib.suppress(OSError, ValueError):
        for chunk in iter(lambda: os.read(stream.fileno(), 65536), b""):
            log.write(chunk)
            log.flush()


def start_daemon(config: Path, log_path: Path) -> Daemon:
    """`hsmlb serve` as a child; waits for its address, then for every node up and healthy."""
    log = log_path.open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "hsmlb", "serve", "--config", str(config)], stdout=subprocess.PIPE,
                            stderr=log, env=ENV, cwd=ROOT, start_new_session=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        for _ in range(1000):
            line = _read_line(proc.stdout, deadline)
            if line is None:
                raise RuntimeError(f"daemon did not start; see {log_path}")
            if line.startswith("hsmlb listening on "):
                address = line.split()[-1]
                break
        else:
            raise RuntimeError("daemon printed no address")
        threading.Thread(target=_drain, args=(proc.stdout, log), daemon=True).start()
        wait_nodes_up(address, deadline)
    except BaseException:
        stop(proc)
        raise
    return Daemon(proc, address, log_path)


def wait_nodes_up(address: str, deadline: float) -> None:
    with tls.channel(address) as channel:
        admin = pb_grpc.AdminStub(channel)
        while time.monotonic() < deadline:
            try:
                nodes = admin.ListNodes(pb.ListNodesRequest(), timeout=5).nodes
            except grpc.RpcError:
                nodes = []
            if nodes and all(n.backend_state == "up" and n.state.startswith("healthy") for n in nodes):
                return
            time.sleep(0.1)
    raise RuntimeError(f"nodes of the daemon at {address} did not come up")


@contextlib.contextmanager
def system_under_test(log_dir: Path, fault_injection: bool = False) -> Iterator[Daemon]:
    """Dev cluster + daemon for the duration of the block; always torn down."""
    state_dir = Path(tempfile.mkdtemp(prefix="hsmlb-loadtest-"))
    daemon: Daemon | None = None
    try:
        config = dev_up(state_dir, fault_injection)
        daemon = start_daemon(config, log_dir / "daemon.log")
        yield daemon
    finally:
        if daemon is not None:
            rc = stop(daemon.proc)
            print(f"loadtest: daemon stopped (exit {rc})", flush=True)
        shutil.rmtree(state_dir, ignore_errors=True)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User+system CPU seconds of a process and of its live descendants (psutil; zeros without it)."""
    try:
        import psutil
    except ImportError:
        return 0.0, 0.0
    try:
        root = psutil.Process(pid)
        own = sum(root.cpu_times()[:2])
        children = root.children(recursive=True)
    except psutil.Error:
        return 0.0, 0.0
    below = 0.0
    for proc in children:
        with contextlib.suppress(psutil.Error):
            below += sum(proc.cpu_times()[:2])
    return own, below
