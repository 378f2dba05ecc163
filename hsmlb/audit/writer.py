"""The audit writer: a thread beside the event loop that chains, writes, fsyncs, rotates and signs.

The hot path only appends a small tuple to a deque (thread-safe, no lock, no wake-up). Every 10 ms
the thread turns what is there into records (canonical JSON, SHA-256); every flush interval it writes
them with one os.write loop and fdatasyncs: a crash loses at most one interval. A record's seq and hash
are fixed when it is built, in memory, so a write that fails half way (disk full) is resumed
byte-exact later: the chain on disk never skips or repeats a record.

When writing fails, `healthy` turns False (the filter then refuses cryptographic and admin
operations in fail_closed mode) and the thread keeps trying every interval; it turns True again
when the bytes are on disk. A restart resumes from the last complete record on disk.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import threading
import time
from collections import deque
from json.encoder import encode_basestring_ascii as _encode_string  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hsmlb.audit.chain import GENESIS, file_index, file_name, seal, sign
from hsmlb.audit.config import AuditConfig
from hsmlb.errors import redact

log = logging.getLogger("hsmlb.audit")
_UTC = dt.UTC
# Records are built (JSON, SHA-256) this often, written and fsynced every flush interval. Building holds
# the GIL: many small drains stall the event loop for a fraction of a millisecond each, where one drain
# per flush interval held it for milliseconds at a time (a pipeline bubble for every token worker).
DRAIN_S = 0.01


_second: list[Any] = [None, ""]  # the last whole second formatted (the writer thread's only)
_redacted: dict[str, str] = {}  # aliases and labels repeat: redact each once
_quoted: dict[str, str] = {}


def _ts(wall: float) -> str:
    """UTC to the microsecond, ISO 8601; the date and time of the second formatted once per second."""
    second = int(wall)
    if _second[0] != second:
        _second[0], _second[1] = second, dt.datetime.fromtimestamp(second, _UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{_second[1]}.{int((wall - second) * 1e6):06d}Z"


def _clean(text: str) -> str:
    out = _redacted.get(text)
    if out is None:
        out = redact(text)
        if len(_redacted) < 4096:
            _redacted[text] = out
    return out


def _trace_id(traceparent: str) -> str:
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""


def _quote(text: str) -> str:
    """JSON string (ASCII-escaped, as canonical() writes it); the values repeat, so each is encoded once."""
    out = _quoted.get(text)
    if out is None:
        out = _encode_string(text)
        if len(_quoted) < 8192:
            _quoted[text] = out
    return out


def op_body(entry: tuple[Any, ...], seq: int, prev: str) -> bytes:
    """canonical(build(entry) + seq + prev), for an operation record, without the generic encoder.

    Byte-identical (a unit test holds it to that). The writer's cost per record is most of the audit's
    cost, and most fields repeat: a batch's records share caller, peer, method, operation, key, KCV,
    node and outcome. So those are encoded once into a template (keys in sorted order, strings
    pre-quoted) and each record splices in only what varies: attempts, latency, prev, request id, seq,
    trace id and time."""
    (_, wall, caller, peer, method, field, alias, others, key_ref, kcv, node, attempts, outcome, detail,
     latency_s, request_id, traceparent) = entry
    shape = (caller, peer, method, field, alias, others, key_ref, kcv, node, outcome, detail)
    template = _templates.get(shape)
    if template is None:
        template = _template(*shape)
        if len(_templates) < 4096:
            _templates[shape] = template
    trace = _trace_id(traceparent) if traceparent else ""
    second = int(wall)
    if _second[0] != second:
        _ts(wall)
    return (template % (attempts, int(latency_s * 1e6), prev, request_id, seq,
                        ',"trace_id":' + _encode_string(trace) if trace else "", _second[1],
                        int((wall - second) * 1e6))).encode()


_templates: dict[tuple[Any, ...], str] = {}  # the writer thread's only


def _template(caller: str, peer: str, method: str, field: str, alias: str | None, others: tuple[str, ...],
              key_ref: str, kcv: str, node: str, outcome: str, detail: str) -> str:
    """An operation record's canonical JSON with %-slots for the fields that vary record to record."""
    def q(text: str) -> str:
        return _quote(text).replace("%", "%%")

    parts = ['{"attempts":%d,"caller":', q(caller)]
    if detail:
        parts += [',"detail":', q(_clean(detail))]
    parts += [',"kcv":', q(kcv), ',"key":', q(_clean(alias or "")), ',"key_ref":', q(_clean(key_ref)),
              ',"latency_us":%d,"method":', q(method), ',"node":', q(node), ',"op":', q(field)]
    if others:
        parts += [',"other_keys":[', ",".join(q(_clean(k)) for k in others), "]"]
    parts += [',"outcome":', q(outcome), ',"peer":', q(peer), ',"prev":"%s","request_id":%d,"seq":%d%s',
              ',"ts":"%s.%06dZ","type":"op"}']
    return "".join(parts)


def build(entry: tuple[Any, ...]) -> dict[str, Any]:
    """A record (without seq/prev/hash) from what the hot path queued. Only these named fields: no
    request data can reach the log, whatever the operation carried."""
    kind = entry[0]
    if kind == "op":
        (_, wall, caller, peer, method, field, alias, others, key_ref, kcv, node, attempts, outcome, detail,
         latency_s, request_id, traceparent) = entry
        rec: dict[str, Any] = {"type": "op", "ts": _ts(wall), "caller": caller, "peer": peer, "method": method,
                               "op": field, "key": _clean(alias or ""), "key_ref": _clean(key_ref), "kcv": kcv,
                               "node": node,
                               "attempts": attempts, "outcome": outcome, "latency_us": int(latency_s * 1e6),
                               "request_id": request_id}
        if others:
            rec["other_keys"] = [_clean(k) for k in others]
        if detail:
            rec["detail"] = redact(detail)
        if trace := _trace_id(traceparent):
            rec["trace_id"] = trace
        return rec
    if kind == "admin":
        _, wall, caller, peer, method, action, target, outcome, detail, traceparent = entry
        rec = {"type": "admin", "ts": _ts(wall), "caller": caller, "peer": peer, "method": method,
               "action": action, "target": redact(target), "outcome": outcome, "detail": redact(detail)}
        if trace := _trace_id(traceparent):
            rec["trace_id"] = trace
        return rec
    _, wall, name, detail = entry
    return {"type": "event", "ts": _ts(wall), "event": name, "detail": detail}


class AuditWriter:
    def __init__(self, config: AuditConfig, key: Ed25519PrivateKey) -> None:
        self.config = config
        self.dir = Path(config.dir)
        self.key = key
        self.queue: deque[tuple[Any, ...]] = deque()
        self.healthy = True
        self.write_failures = 0  # failed write attempts (each interval while the disk refuses)
        self.alarms = 0  # episodes: healthy -> failing
        self.dropped = 0  # records given up beyond max_pending (counted, logged)
        self.records = 0
        self.last_error = ""
        self.seq = 0
        self.prev = GENESIS
        self.prev_sig = ""
        self._out = bytearray()  # sealed records not yet on disk
        self._out_records = 0
        self._index = 0
        self._fd: int | None = None
        self._file_bytes = 0
        self._file_opened = 0.0
        self._next_checkpoint = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hsmlb-audit", daemon=True)

    # -- the event loop's side -------------------------------------------------------------------
    def submit(self, entry: tuple[Any, ...]) -> None:
        self.queue.append(entry)

    def event(self, name: str, detail: str = "") -> None:
        self.queue.append(("event", time.time(), name, detail))

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._resume()
        self._new_file()
        self.event("audit_start", f"resumed after seq {self.seq}" if self.seq else "new log")
        self._cycle(time.monotonic())  # the first records and the file exist before the daemon serves
        self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        """Write `audit_stop` and a final checkpoint, then stop the thread."""
        if not self._thread.is_alive():
            return
        self.event("audit_stop")
        self._stop.set()
        self._thread.join(timeout_s)

    # -- the thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        interval = self.config.flush_interval_ms / 1000
        next_flush = time.monotonic() + interval
        while not self._stop.wait(min(interval, DRAIN_S)):
            try:
                now = time.monotonic()
                if now < next_flush:
                    self._drain()
                    continue
                next_flush = now + interval
                self._cycle(now)
            except Exception:  # a bug here must not end auditing silently
                log.exception("audit writer cycle failed")
                self._failed(OSError("audit writer error"))
        for _ in range(3):  # the final records and checkpoint; a few tries if the disk refuses
            self._drain()
            self._checkpoint("stop")
            if self._flush():
                break
            time.sleep(interval)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _cycle(self, now: float) -> None:
        self._drain()
        if now >= self._next_checkpoint:
            self._checkpoint("interval")
        if not self._flush():
            return
        if self._file_bytes >= self.config.rotate_bytes or now - self._file_opened >= self.config.rotate_s:
            self._checkpoint("rotate")
            if self._flush():
                os.close(self._fd)  # type: ignore[arg-type]
                self._fd = None
                self._new_file()
                self._flush()

    def _drain(self) -> None:
        """Chain and seal what the hot path queued. Operation records (nearly all of them) take a path with
        the chain's state in locals: this loop is most of the audit's CPU, so its bytecodes count."""
        queue, out, sha256 = self.queue, self._out, hashlib.sha256
        limit = self.config.max_pending
        seq, prev = self.seq, self.prev
        ops = 0  # operation records sealed here (other records count themselves in _append)
        try:
            while queue:
                entry = queue.popleft()
                if self._out_records + ops >= limit:
                    self._drop()
                elif entry[0] == "op":
                    seq += 1
                    body = op_body(entry, seq, prev)
                    prev = sha256(body).hexdigest()
                    out += b"%s,\"hash\":\"%s\"}\n" % (body[:-1], prev.encode())
                    ops += 1
                else:
                    self.seq, self.prev = seq, prev
                    self._append(build(entry))
                    seq, prev = self.seq, self.prev
        finally:
            self.seq, self.prev = seq, prev
            self._out_records += ops
            self.records += ops

    def _drop(self) -> None:
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 10000 == 0:
            log.error("AUDIT ALARM: %d audit records dropped: the log cannot be written (%s)",
                      self.dropped, self.last_error)

    def _append(self, record: dict[str, Any]) -> None:
        self.seq += 1
        record["seq"] = self.seq
        line = seal(record, self.prev)
        self.prev = record["hash"]
        self._out += line
        self._out_records += 1
        self.records += 1

    def _checkpoint(self, reason: str) -> None:
        sig = sign(self.key, self.seq, self.prev, self.prev_sig)
        self._append({"type": "checkpoint", "ts": _ts(time.time()), "reason": reason, "covers_seq": self.seq,
                      "covers_hash": self.prev, "prev_sig": self.prev_sig, "sig": sig})
        self.prev_sig = sig
        self._next_checkpoint = time.monotonic() + self.config.checkpoint_interval_s

    def _new_file(self) -> None:
        self._index += 1
        self._file_bytes = 0
        self._file_opened = time.monotonic()
        self._append({"type": "file", "ts": _ts(time.time()), "file": file_name(self._index)})

    def _flush(self) -> bool:
        """Everything sealed onto disk and fsynced; False (and unhealthy) when the disk refuses."""
        if not self._out:
            return True
        try:
            if self._fd is None:
                self._fd = os.open(self.dir / file_name(self._index), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            out = self._out
            while out:
                n = os.write(self._fd, out)
                del out[:n]
                self._file_bytes += n
            os.fdatasync(self._fd)  # the data and the file's size; not its timestamps
        except OSError as exc:
            self._failed(exc)
            return False
        self._out_records = 0
        if not self.healthy:
            self.healthy = True
            log.warning("audit log writable again after %d failed writes: chain intact at seq %d",
                        self.write_failures, self.seq)
            self.event("audit_recovered", f"{self.write_failures} failed writes since start ({self.last_error})")
        return True

    def _failed(self, exc: OSError) -> None:
        self.write_failures += 1
        self.last_error = exc.strerror or type(exc).__name__
        if self.healthy:
            self.healthy = False
            self.alarms += 1
            mode = "refusing operations" if self.config.on_failure == "fail_closed" else "serving on (alarm mode)"
            log.error("AUDIT ALARM: cannot write the audit log in %s (%s): %s; retrying every %g ms",
                      self.dir, self.last_error, mode, self.config.flush_interval_ms)

    # -- resuming --------------------------------------------------------------------------------
    def _resume(self) -> None:
        """Continue the chain from the last complete record on disk (a torn last line is cut off)."""
        files = sorted((i, p) for p in self.dir.iterdir() if (i := file_index(p.name)) is not None)
        if not files:
            return
        self._index = files[-1][0]
        for _, path in reversed(files):
            last, last_sig = _scan(path)
            if last is not None:
                if not self.seq:
                    self.seq, self.prev = last["seq"], last["hash"]
                if last_sig:
                    self.prev_sig = last_sig
                    return
        log.info("audit log resumed after seq %d", self.seq)


def _scan(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(the last complete record, the last checkpoint signature) of one file. Only a torn last line
    (a crash mid-write: no newline at the end) is cut off; anything else stays for `verify` to judge."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        log.warning("audit file %s: cutting a torn last line (%d bytes)", path.name, len(data) - end)
        os.truncate(path, end)
    last: dict[str, Any] | None = None
    last_sig = ""
    for line in data[:end].splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("seq"), int) and isinstance(record.get("hash"), str):
            last = record
            if record.get("type") == "checkpoint":
                last_sig = str(record.get("sig", ""))
    return last, last_sig
