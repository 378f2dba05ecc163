"""Process helpers for the benchmark: CPU time of a process tree, line reads with a deadline, teardown."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from pathlib import Path

from hsmlb.dev.procs import stop as stop_child

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (after the parenthesised command name), or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def descendants(root: int) -> list[int]:
    """Every live process below root, found by scanning /proc/*/stat for parent pids."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    frontier = [root]
    while frontier and len(found) < 10_000:  # bounded even if /proc lies
        pid = frontier.pop()
        for child in children.get(pid, []):
            found.append(child)
            frontier.append(child)
    return found


def tree_cpu_s(root: int) -> float:
    """User+system CPU seconds of root and its live descendants, plus root's reaped children.

    utime/stime are fields 14/15 of /proc/PID/stat; cutime/cstime (16/17) hold the CPU of
    children root has waited for, so a worker that died and was reaped mid-phase still counts.
    """
    total = 0
    fields = _stat_fields(root)
    if fields is None:
        raise RuntimeError(f"process {root} is gone")
    total += sum(int(f) for f in fields[11:15])
    for pid in descendants(root):
        child = _stat_fields(pid)
        if child is not None:
            total += int(child[11]) + int(child[12])
    return total / CLK_TCK


def threads(root: int) -> list[int]:
    """The thread ids of `root` and of its descendants."""
    return [int(tid) for pid in (root, *descendants(root)) for tid in os.listdir(f"/proc/{pid}/task")]


def _switches(path: str) -> int:
    """Voluntary context switches (sleeps, i.e. wake-ups) of one task, from /proc/.../status."""
    try:
        with open(path) as status:
            return next((int(line.split()[1]) for line in status if line.startswith("voluntary_ctxt_switches")), 0)
    except OSError:
        return 0


def cpu_split(root: int) -> dict[str, float]:
    """CPU seconds of root's main thread, of its other threads (gRPC's) and of its live children
    (token workers), and the wake-ups (voluntary context switches) of all of them.

    Per-thread utime/stime are fields 14/15 of /proc/PID/task/TID/stat. Only live tasks count:
    take differences between two calls around a phase in which nothing exits.
    """
    split = {"main_s": 0.0, "threads_s": 0.0, "children_s": 0.0, "wakeups": 0.0}
    for tid in os.listdir(f"/proc/{root}/task"):
        fields = _task_fields(root, tid)
        if fields is not None:
            split["main_s" if tid == str(root) else "threads_s"] += (int(fields[11]) + int(fields[12])) / CLK_TCK
            split["wakeups"] += _switches(f"/proc/{root}/task/{tid}/status")
    for pid in descendants(root):
        fields = _stat_fields(pid)
        if fields is not None:
            split["children_s"] += (int(fields[11]) + int(fields[12])) / CLK_TCK
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:  # it exited meanwhile
                tids = []
            for tid in tids:
                split["wakeups"] += _switches(f"/proc/{pid}/task/{tid}/status")
    return split


def _task_fields(pid: int, tid: str) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


class LineReader:
    """Reads lines from a child's stdout pipe with a deadline, without blocking forever."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.fd = proc.stdout.fileno()
        self.buffer = b""

    def readline(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no output from pid {self.proc.pid} within {timeout:.0f}s")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    raise RuntimeError(f"pid {self.proc.pid} closed its output (exit {self.proc.poll()})")
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode(errors="replace")

    def wait_for(self, prefix: str, timeout: float) -> str:
        """Skip lines until one starts with prefix; return it."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.readline(max(0.0, deadline - time.monotonic()))
            if line.startswith(prefix):
                return line


def stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    """The shared teardown (hsmlb.dev.procs.stop) with the benchmark's longer default wait."""
    stop_child(proc, sig, timeout)
