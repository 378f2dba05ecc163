"""Audit-log helpers for tests: read every record, and tamper with a copy of a log the way an
attacker (or an accident) would."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hsmlb.audit.chain import file_index, record_hash, sign

# case -> what verify's message must say
TAMPER_CASES = {"edit": "hash does not match", "delete": "missing here (deleted", "swap": "seq",
                "insert": "inserted or reordered", "truncate": "not with a stop checkpoint", "torn": "torn",
                "remove_file": "missing before", "forge": "forged checkpoint"}


def audit_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if file_index(p.name) is not None)


def records(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for p in audit_files(directory) for line in p.read_text().splitlines()]


def tamper(directory: Path, copy: Path, case: str) -> Path:
    """A copy of the log with one tamper applied; returns the file it touched."""
    shutil.copytree(directory, copy)
    files = audit_files(copy)
    middle = files[len(files) // 2] if len(files) > 2 else files[0]
    lines = middle.read_text().splitlines(keepends=True)
    if case in ("truncate", "torn"):
        last = files[-1]
        data = last.read_bytes()
        last.write_bytes(data[: data.rstrip(b"\n").rfind(b"\n") + 1] if case == "truncate" else data[:-7])
        return last
    if case == "remove_file":
        assert len(files) >= 3, "needs a middle file"
        middle.unlink()
        return middle
    if case == "edit":
        rec = json.loads(lines[3])
        rec[next(k for k in ("caller", "outcome", "event", "reason") if k in rec)] = "someone else"
        lines[3] = json.dumps(rec) + "\n"
    elif case == "delete":
        del lines[3]
    elif case == "swap":
        lines[2], lines[3] = lines[3], lines[2]
    elif case == "insert":
        lines.insert(3, lines[2])
    elif case == "forge":
        index = next(i for i, line in enumerate(lines) if '"checkpoint"' in line)
        rec = json.loads(lines[index])
        rec["sig"] = sign(Ed25519PrivateKey.generate(), rec["covers_seq"], rec["covers_hash"], rec["prev_sig"])
        rec["hash"] = record_hash(rec)  # a forger recomputes the hash; only the signature can catch it
        lines[index] = json.dumps(rec) + "\n"
    else:
        raise ValueError(case)
    middle.write_text("".join(lines))
    return middle
