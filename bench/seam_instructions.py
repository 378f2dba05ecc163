"""hsmlb benchmark: what the telemetry filters cost per operation, in instructions, which do not drift.

On this shared 2-vCPU host a CPU-time A/B of a few percent drowns in noise; counting instructions under
valgrind's callgrind does not. Each variant of bench/_hot_path.py (the StreamCall over the real router,
no gRPC, no tokens) runs at two sizes, and the difference divided by the operations added is the
instructions per operation without start-up. Printed against `none` (no filter: the seam skipped).

    python bench/seam_instructions.py [--filters none metrics tracing default] [--ops 1600 6400] [--items 16]

About 1 minute per variant (2 at a time). Needs valgrind (Debian `valgrind`). PYTHONHASHSEED is fixed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HOT_PATH = Path(__file__).with_name("_hot_path.py")


def instructions(filters: str, ops: int, items: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out", sys.executable,
                              str(HOT_PATH), "--filters", filters, "--ops", str(ops), "--items", str(items)],
                             capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"}, timeout=900,
                             check=True)
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from callgrind: {out.stderr[-500:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filters", nargs="+", default=["none", "metrics", "tracing", "default"])
    parser.add_argument("--ops", nargs=2, type=int, default=[1600, 6400], help="the two sizes")
    parser.add_argument("--items", type=int, default=16, help="operations per StreamBatch message")
    args = parser.parse_args()
    small, large = args.ops
    variants = list(dict.fromkeys(["none", *args.filters]))
    with ThreadPoolExecutor(2) as pool:
        counts = {v: pool.submit(lambda v=v: (instructions(v, large, args.items) - instructions(v, small, args.items))
                                 / (large - small)) for v in variants}
        per_op = {v: f.result() for v, f in counts.items()}
    base = per_op["none"]
    for variant in variants:
        extra = per_op[variant] - base
        print(f"{variant:8s} {per_op[variant]:10,.0f} instructions/op  {extra:+8,.0f} ({extra / base:+.1%})")


if __name__ == "__main__":
    main()
