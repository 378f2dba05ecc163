"""The record format: canonical JSON, the hash chain, and the checkpoint's signed message.

A record is one JSON object per line. Its `hash` is SHA-256 over the canonical JSON (sorted keys,
no spaces, ASCII) of the record without `hash`, which includes `prev`, the previous record's hash;
so editing, removing, inserting or reordering any record breaks every hash after it. A checkpoint
record signs (Ed25519) the seq and hash of the record before it and the previous checkpoint's
signature, as CloudTrail's digest files sign the previous digest: a rewrite of the whole log, or
a truncation back past a checkpoint, cannot be signed again without the private key.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

GENESIS = "0" * 64  # the `prev` of the very first record
FILE_PREFIX, FILE_SUFFIX = "audit-", ".jsonl"


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)  # one, not one per call


def canonical(record: dict[str, Any]) -> bytes:
    return _ENCODER.encode(record).encode()


def record_hash(record: dict[str, Any]) -> str:
    """SHA-256 over the canonical record without its own `hash` (it includes `prev`)."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical(body)).hexdigest()


def seal(record: dict[str, Any], prev: str) -> bytes:
    """The record chained to `prev`, as one line: its canonical JSON with `hash` appended last.

    The line itself need not be canonical (verify re-canonicalises what it parses), so the JSON is
    encoded once and the hash spliced in: half the writer's cost per record."""
    record["prev"] = prev
    body = canonical(record)
    digest = hashlib.sha256(body).hexdigest()
    record["hash"] = digest
    return b"%s,\"hash\":\"%s\"}\n" % (body[:-1], digest.encode())


def checkpoint_message(covers_seq: int, covers_hash: str, prev_sig: str) -> bytes:
    return canonical({"covers_hash": covers_hash, "covers_seq": covers_seq, "prev_sig": prev_sig})


def sign(key: Ed25519PrivateKey, covers_seq: int, covers_hash: str, prev_sig: str) -> str:
    return base64.b64encode(key.sign(checkpoint_message(covers_seq, covers_hash, prev_sig))).decode()


def load_private_key(pem: bytes) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("the audit signing key must be an Ed25519 private key (hsmlb audit keygen makes one)")
    return key


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("the audit public key must be an Ed25519 public key")
    return key


def file_name(index: int) -> str:
    return f"{FILE_PREFIX}{index:08d}{FILE_SUFFIX}"


def file_index(name: str) -> int | None:
    if name.startswith(FILE_PREFIX) and name.endswith(FILE_SUFFIX):
        digits = name[len(FILE_PREFIX):-len(FILE_SUFFIX)]
        if digits.isdigit():
            return int(digits)
    return None
