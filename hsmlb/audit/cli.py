"""`hsmlb audit keygen` and `hsmlb audit verify`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def keygen(out: Path) -> Path:
    """An Ed25519 private key at `out` (mode 0600, never printed) and its public key at `out`.pub."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub = out.with_name(out.name + ".pub")
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return pub


def cmd_keygen(args: argparse.Namespace) -> int:
    if args.out.exists():
        print(f"hsmlb: {args.out} exists; not overwriting a signing key", file=sys.stderr)
        return 1
    pub = keygen(args.out)
    print(f"private key: {args.out} (mode 0600; name it in audit.signing_key_file)\npublic key:  {pub}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from hsmlb.audit.chain import load_public_key
    from hsmlb.audit.verify import verify

    try:
        key = load_public_key(args.public_key.read_bytes())
    except (OSError, ValueError) as exc:
        print(f"hsmlb: cannot read the public key {args.public_key}: {type(exc).__name__}", file=sys.stderr)
        return 2
    report = verify(args.dir, key, open_tail_ok=args.open_tail)
    for note in report.notes:
        print(f"note: {note}")
    if not report.ok:
        print(f"FAILED: {report.problem}")
        return 1
    print(f"OK: {report.records} records in {report.files} file(s), {report.checkpoints} signed checkpoints, "
          f"last seq {report.last_seq}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    audit = sub.add_parser("audit", help="the tamper-evident audit log: keys and verification")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    gen = audit_sub.add_parser("keygen", help="make the Ed25519 key that signs checkpoints")
    gen.add_argument("--out", type=Path, required=True, help="private key file (its .pub is written beside it)")
    gen.set_defaults(func=cmd_keygen)
    ver = audit_sub.add_parser("verify", help="check hashes, the chain across files and the signed checkpoints")
    ver.add_argument("dir", type=Path)
    ver.add_argument("--public-key", type=Path, required=True)
    ver.add_argument("--open-tail", action="store_true",
                     help="accept records after the last checkpoint (a daemon still running)")
    ver.set_defaults(func=cmd_verify)
