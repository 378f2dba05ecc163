"""Fuzz a fresh dev cluster's daemon with many random and mutated messages (default 100,000).

The same generator and verdicts as tests/test_fuzz.py (tests/_fuzz.py), longer: unary calls to every
Operations RPC and the read-only Admin ones, Stream, StreamBatch and Batch, all as raw bytes. Prints the
status counts, every verdict broken, any planted value found in an answer or the daemon's log, and the
daemon's RSS and open descriptors before and after. Exit 1 if a verdict broke or anything leaked.

    python bench/fuzz_daemon.py [--messages 100000] [--seed 1]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hsmlb.dev.cluster import default_keys_file, dev_up  # noqa: E402
from tests._daemon_helpers import still_serves  # noqa: E402
from tests._fuzz import Report, fuzz  # noqa: E402
from tests._sensitive_plant import leaks  # noqa: E402
from tests.conftest import start_daemon  # noqa: E402


def _rss_mb_and_fds(pid: int) -> tuple[float, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return rss_kb / 1024, len(list(Path(f"/proc/{pid}/fd").iterdir()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the state directory and the daemon's log")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hsmlb-fuzz-"))
    config = dev_up(work / "dev", default_keys_file(), listen="127.0.0.1:0")
    daemon = start_daemon(config, work / "daemon.log")
    report = Report()
    try:
        before = _rss_mb_and_fds(daemon.proc.pid)
        started = time.monotonic()
        n = args.messages
        report = fuzz(daemon.address, args.seed, unary=n * 3 // 10, stream=n // 2, batched=n - n * 3 // 10 - n // 2)
        elapsed = time.monotonic() - started
        with daemon.channel() as channel:
            still_serves(channel)
        after = _rss_mb_and_fds(daemon.proc.pid)
    finally:
        daemon.stop()
    log = daemon.log_text()
    found = report.leaks() + [f"log: {leak}" for leak in leaks(log)]
    print(f"{report.messages} messages in {elapsed:.0f}s (seed {args.seed}); daemon still serves")
    for code, count in sorted(report.codes.items()):
        print(f"  {code:<32} {count}")
    print(f"daemon RSS {before[0]:.1f} -> {after[0]:.1f} MB, open descriptors {before[1]} -> {after[1]}")
    print(f"log: {len(log.splitlines())} lines, {log.count('Traceback')} tracebacks "
          f"({log.count('Task exception was never retrieved')} of them 'Task exception was never retrieved')")
    print(f"verdicts broken: {len(report.failures)}" + "".join(f"\n  {f}" for f in report.failures[:50]))
    print(f"planted values found: {len(found)}" + "".join(f"\n  {f}" for f in found[:50]))
    if args.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if report.failures or found else 0


if __name__ == "__main__":
    sys.exit(main())
