"""What `hsmlb config check` and the daemon's start say about security: TLS material that loads and
matches, the audit key and directory, and a warning for each open door (plaintext beyond loopback,
no callers configured)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from typing import Any

from hsmlb.config import Config, ConfigError


def is_loopback(listen: str) -> bool:
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warnings(config: Config) -> list[str]:
    """The open doors. On loopback (a dev daemon) only log_only is worth a line; beyond it, each one."""
    out = ["auth.log_only: denials are only logged"] if config.auth.log_only else []
    if is_loopback(config.listen):
        return out
    if config.tls is None:
        out.append(f"listen {config.listen} is beyond loopback without tls: anyone who reaches it can use every key")
    elif config.tls.client_ca_file is None:
        out.append("tls without client_ca_file: callers are not authenticated (no mTLS)")
    if not config.auth.callers:
        out.append("auth.callers is empty: every caller may use every operation, key and the Admin service")
    if config.audit is None:
        out.append("no audit: section: operations are not audited")
    return out


def _public(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def check(config: Config) -> list[str]:
    """Load every piece of security material the config names; ConfigError names the first that fails
    (by field and path, never its content). Returns lines describing what was found."""
    from cryptography import x509  # here: the daemon's start imports this module for warnings() only
    from cryptography.hazmat.primitives import serialization

    lines = []
    tls = config.tls
    if tls is not None:
        try:
            cert = x509.load_pem_x509_certificate(tls.cert_file.read_bytes())
            key = serialization.load_pem_private_key(tls.key_file.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"tls: cannot load cert_file/key_file: {type(exc).__name__}") from None
        if _public(cert.public_key()) != _public(key.public_key()):
            raise ConfigError("tls: key_file is not the private key of cert_file")
        days = (cert.not_valid_after_utc - dt.datetime.now(dt.UTC)).days
        lines.append(f"tls: server certificate valid for {days} more days"
                     + (", client certificates required (mTLS)" if tls.client_ca_file else ""))
        if tls.client_ca_file is not None:
            try:
                x509.load_pem_x509_certificates(tls.client_ca_file.read_bytes())
            except (OSError, ValueError) as exc:
                raise ConfigError(f"tls.client_ca_file: cannot load {tls.client_ca_file}: "
                                  f"{type(exc).__name__}") from None
    if config.auth.callers:
        lines.append(f"auth: {len(config.auth.callers)} caller rules, deny by default"
                     + (" (log_only)" if config.auth.log_only else ""))
    if config.audit is not None:
        from hsmlb.audit.chain import load_private_key

        try:
            load_private_key(config.audit.read_signing_key())
        except ValueError as exc:
            raise ConfigError(f"audit signing key: {exc if 'Ed25519' in str(exc) else type(exc).__name__}") from None
        directory = config.audit.dir
        parent = directory if directory.exists() else directory.parent
        if not os.access(parent, os.W_OK):
            raise ConfigError(f"audit.dir: {directory} is not writable")
        lines.append(f"audit: {directory}, checkpoints signed, on_failure {config.audit.on_failure}")
    return lines + [f"warning: {w}" for w in warnings(config)]
