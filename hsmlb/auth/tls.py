"""TLS material for the server and its clients; server certificates re-read when their files change.

`grpc.dynamic_ssl_server_credentials` asks a fetcher for new material at each new connection's
handshake, on a gRPC thread. The fetcher stats the files (a few µs per connection, not per RPC) and
re-reads them only when a modification time or size changed; a half-written pair (key and
certificate not matching yet) is caught by gRPC, which keeps the previous material, and is retried
at the next connection.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import grpc

from hsmlb.auth.config import TlsConfig

log = logging.getLogger("hsmlb.tls")


def _stamp(paths: tuple[Path, ...]) -> tuple[tuple[int, int], ...]:
    out = []
    for path in paths:
        try:
            st = os.stat(path)
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((0, 0))
    return tuple(out)


class ReloadingServerCredentials:
    """Server credentials whose certificate, key and client CA follow their files."""

    def __init__(self, config: TlsConfig) -> None:
        self.config = config
        self._paths = tuple(p for p in (config.cert_file, config.key_file, config.client_ca_file) if p is not None)
        self._lock = threading.Lock()
        self._stamp = _stamp(self._paths)
        self.reloads = 0
        initial = self._read()  # at start a missing or unreadable file is a config error: raise
        self.credentials = grpc.dynamic_ssl_server_credentials(
            initial, self._fetch, require_client_authentication=config.client_ca_file is not None)

    def _read(self) -> grpc.ServerCertificateConfiguration:
        c = self.config
        ca = c.client_ca_file.read_bytes() if c.client_ca_file is not None else None
        return grpc.ssl_server_certificate_configuration([(c.key_file.read_bytes(), c.cert_file.read_bytes())], ca)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's callback, per new connection: new material when a file changed, else None (keep)."""
        stamp = _stamp(self._paths)
        if stamp == self._stamp:
            return None
        with self._lock:
            if stamp == self._stamp:
                return None
            try:
                material = self._read()
            except OSError as exc:
                log.warning("TLS files changed but cannot be read (%s); keeping the previous certificate",
                            type(exc).__name__)
                return None
            self._stamp = stamp
            self.reloads += 1
        log.info("TLS certificate files changed: new connections use the new certificate")
        return material


def _read_optional(path: str | Path | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def channel_credentials(ca_file: str | Path | None, cert_file: str | Path | None = None,
                        key_file: str | Path | None = None) -> grpc.ChannelCredentials:
    """Client side: trust `ca_file` (else the system roots) and present `cert_file`/`key_file` if given."""
    if (cert_file is None) != (key_file is None):
        raise ValueError("a client certificate needs both --cert and --key")
    return grpc.ssl_channel_credentials(_read_optional(ca_file), _read_optional(key_file), _read_optional(cert_file))
