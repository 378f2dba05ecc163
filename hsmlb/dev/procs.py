"""Stopping a child process we started: signal, bounded wait, then kill (its whole group if it owns one).

Why one helper: the dev regions, the emulator test helpers, the load-test harness and the
benchmarks all tear down children the same way, and every wait in those paths must have a deadline.
Stdlib only, so any tool can import it without loading the daemon.

And the other half: a child that must not outlive its parent however the parent dies (SIGKILL
included, where no cleanup code runs) asks the kernel for a signal at the parent's death
(`die_with_parent`, Linux PR_SET_PDEATHSIG). The parent opts in per child with `DIE_WITH_PARENT_ENV`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from typing import Any

STOP_TIMEOUT_S = 20.0
KILL_WAIT_S = 10.0
DIE_WITH_PARENT_ENV = "HSMLB_DIE_WITH_PARENT"  # the parent's pid, set in the child's environment
_PR_SET_PDEATHSIG = 1


def die_with_parent_env() -> dict[str, str]:
    """Environment entries that make a child started from this process call die_with_parent."""
    return {DIE_WITH_PARENT_ENV: str(os.getpid())}


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In a child whose parent set DIE_WITH_PARENT_ENV: get `sig` when the parent dies; if it
    already has (it died before this call), get it now. The variable is removed, so the child's own
    children do not inherit a parent pid that is not theirs. The kernel ties the signal to the thread
    that started the child: start such children from a thread that lives as long as the process."""
    parent = os.environ.pop(DIE_WITH_PARENT_ENV, "")
    if not parent.isdigit() or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != int(parent):  # reparented already: the parent is gone
        os.kill(os.getpid(), sig)


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
