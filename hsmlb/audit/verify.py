"""`hsmlb audit verify`: check every record's hash, the chain across files, and every checkpoint's signature.

Reports the first problem with its place (file, line, seq). What each tamper looks like here:
an edited field -> its hash no longer matches; a deleted line -> a seq gap; an inserted or
reordered line -> a seq out of order or a `prev` that does not match; a truncated last file -> a
torn line, or a log that no longer ends with the stop checkpoint; a removed file -> a gap in the
file numbers and the seqs; a forged checkpoint -> a signature that does not verify.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hsmlb.audit.chain import GENESIS, checkpoint_message, file_index, file_name, record_hash


@dataclass
class Report:
    ok: bool = True
    problem: str = ""
    files: int = 0
    records: int = 0
    checkpoints: int = 0
    last_seq: int = 0
    open_tail: int = 0  # records after the last checkpoint
    notes: list[str] = field(default_factory=list)

    def fail(self, problem: str) -> Report:
        self.ok, self.problem = False, problem
        return self


def verify(directory: Path, public_key: Ed25519PublicKey, open_tail_ok: bool = False) -> Report:
    report = Report()
    files = sorted((i, p) for p in Path(directory).iterdir() if (i := file_index(p.name)) is not None)
    if not files:
        return report.fail(f"{directory}: no audit files")
    expect_index, expect_seq, prev, prev_sig = 1, 1, GENESIS, ""
    last_type = ""
    for index, path in files:
        if index != expect_index:
            missing = f"{file_name(expect_index)}..{file_name(index - 1)}" if index - 1 > expect_index \
                else file_name(expect_index)
            return report.fail(f"{missing} missing before {path.name} (records from seq {expect_seq} on "
                               "are not accounted for)")
        expect_index += 1
        report.files += 1
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            return report.fail(f"{path.name}: its last line is torn (truncated file)")
        for line_no, line in enumerate(data.splitlines(), 1):
            where = f"{path.name} line {line_no}"
            try:
                rec: Any = json.loads(line)
            except ValueError:
                return report.fail(f"{where}: not a JSON record (edited or truncated)")
            if not isinstance(rec, dict) or not isinstance(rec.get("seq"), int):
                return report.fail(f"{where}: not an audit record")
            seq = rec["seq"]
            where += f" (seq {seq})"
            if seq != expect_seq:
                if seq > expect_seq:
                    return report.fail(f"{where}: records seq {expect_seq}..{seq - 1} are missing here "
                                       "(deleted, or moved later)")
                return report.fail(f"{where}: expected seq {expect_seq}: a record inserted or reordered here")
            if line_no == 1 and rec.get("type") != "file":
                return report.fail(f"{where}: a file must begin with its file record (lines removed or moved)")
            if rec.get("prev") != prev:
                return report.fail(f"{where}: prev does not match the hash of seq {seq - 1} "
                                   "(a record before it was changed, removed, inserted or reordered)")
            if rec.get("type") == "checkpoint":
                problem = _check_checkpoint(rec, seq, prev, prev_sig, public_key)
                if problem:
                    return report.fail(f"{where}: {problem}")
                prev_sig = rec["sig"]
                report.checkpoints += 1
                report.open_tail = -1
            if rec.get("hash") != record_hash(rec):
                return report.fail(f"{where}: its hash does not match its content (the record was edited)")
            prev, expect_seq = rec["hash"], seq + 1
            report.records += 1
            report.open_tail += 1
            last_type = f"{rec.get('type')}:{rec.get('reason', '')}"
    report.last_seq = expect_seq - 1
    if report.checkpoints == 0:
        return report.fail("no checkpoint at all: nothing in this log is signed")
    if last_type != "checkpoint:stop":
        tail = f"the log ends at seq {report.last_seq} with {report.open_tail} record(s) after its last checkpoint"
        if not open_tail_ok:
            return report.fail(f"{tail}, not with a stop checkpoint: truncated, or the daemon is running or "
                               "did not stop cleanly (--open-tail accepts an unsigned tail)")
        report.notes.append(f"{tail} (not covered by a signature yet)")
    return report


def _check_checkpoint(rec: dict[str, Any], seq: int, prev: str, prev_sig: str, key: Ed25519PublicKey) -> str:
    if rec.get("covers_seq") != seq - 1 or rec.get("covers_hash") != prev:
        return "checkpoint does not commit to the record before it"
    if rec.get("prev_sig") != prev_sig:
        return "checkpoint does not chain to the previous checkpoint's signature (a checkpoint removed or forged)"
    try:
        key.verify(base64.b64decode(str(rec.get("sig", "")), validate=True),
                   checkpoint_message(seq - 1, prev, prev_sig))
    except (InvalidSignature, ValueError):
        return "checkpoint signature does not verify with this public key (forged checkpoint)"
    return ""
