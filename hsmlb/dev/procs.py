"""Stopping a child process we started: signal, bounded wait, then kill (its whole group if it owns one).

Why one helper: the dev regions, the emulator test helpers, the load-test harness and the
benchmarks all tear down children the same way, and every wait in those paths must have a deadline.
Stdlib only, so any tool can import it without loading the daemon.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from typing import Any

STOP_TIMEOUT_S = 20.0
KILL_WAIT_S = 10.0


def stop(proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM,
         timeout: float = STOP_TIMEOUT_S) -> int | None:
    """Signal a child we started, wait a bounded time, kill it if it does not go; its exit status."""
    if proc is None:
        return None
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                if _own_group(proc):
                    os.killpg(proc.pid, signal.SIGKILL)  # the group it leads: a daemon and its token workers
                else:
                    proc.kill()
            proc.wait(KILL_WAIT_S)
    return proc.returncode


def _own_group(proc: subprocess.Popen[Any]) -> bool:
    try:
        return os.getpgid(proc.pid) == proc.pid
    except ProcessLookupError:
        return False
