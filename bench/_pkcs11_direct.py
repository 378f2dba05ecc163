"""Pooled versus open-session-per-op AES-128 ECB on one token, straight through python-pkcs11.

Pooled: one logged-in session and a cached key handle, encrypt N times (what a token worker does).
Per op: open session + login + find key + encrypt + close, N times (what a naive client does).
Run by bench_daemon.py with the cluster's SOFTHSM2_CONF in the environment; prints one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import pkcs11
from pkcs11 import Attribute, Mechanism, ObjectClass

BLOCK = bytes.fromhex("6BC1BEE22E409F96E93D7E117393172A")
CIPHER = bytes.fromhex("3AD77BB40D7A3660A89ECAF32466EF97")


def pooled(token: Any, pin: str, label: str, seconds: float, max_ops: int,
           session_copy: bool = False) -> tuple[int, float, float]:
    with contextlib.closing(token.open(user_pin=pin)) as session:
        key = session.get_key(label=label, object_class=ObjectClass.SECRET_KEY)
        if session_copy:  # as the worker uses it with session_key_copies
            key = key.copy({Attribute.TOKEN: False, Attribute.LABEL: label + " (bench session copy)"})
        if key.encrypt(BLOCK, mechanism=Mechanism.AES_ECB) != CIPHER:
            raise SystemExit("direct: wrong cipher text from the pooled session")
        done = 0
        started, cpu_started = time.perf_counter(), time.process_time()
        stop_at = started + seconds
        while done < max_ops and time.perf_counter() < stop_at:
            key.encrypt(BLOCK, mechanism=Mechanism.AES_ECB)
            done += 1
        return done, time.perf_counter() - started, time.process_time() - cpu_started


def per_op(token: Any, pin: str, label: str, seconds: float, max_ops: int) -> tuple[int, float]:
    done = 0
    started = time.perf_counter()
    stop_at = started + seconds
    while done < max_ops and time.perf_counter() < stop_at:
        session = token.open(user_pin=pin)  # the last session's close logged us out: this logs in again
        try:
            key = session.get_key(label=label, object_class=ObjectClass.SECRET_KEY)
            if key.encrypt(BLOCK, mechanism=Mechanism.AES_ECB) != CIPHER:
                raise SystemExit("direct: wrong cipher text from a per-op session")
        finally:
            session.close()
        done += 1
    return done, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--pin-file", type=Path, required=True)
    parser.add_argument("--label", default="alias/zek-aes128")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--max-ops", type=int, default=5_000_000)
    parser.add_argument("--pooled-only", action="store_true", help="skip the session-per-op measurement")
    parser.add_argument("--session-copy", action="store_true", help="pooled: through a session-object copy of the key")
    args = parser.parse_args()
    pin = args.pin_file.read_text().splitlines()[0].strip()
    lib = pkcs11.lib(args.module)
    token = lib.get_token(token_label=args.token)
    pooled_n, pooled_s, pooled_cpu = pooled(token, pin, args.label, args.seconds, args.max_ops, args.session_copy)
    result = {"pooled_ops": pooled_n, "pooled_ops_per_s": pooled_n / pooled_s,
              "pooled_cpu_us_per_op": pooled_cpu / pooled_n * 1e6}  # the token's own op, python-pkcs11 included
    if not args.pooled_only:
        per_op_n, per_op_s = per_op(token, pin, args.label, args.seconds, args.max_ops)
        result.update(per_op_ops=per_op_n, per_op_ops_per_s=per_op_n / per_op_s)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
