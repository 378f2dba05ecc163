"""Channel credentials and options shared by both clients: plaintext on loopback, TLS or mutual TLS.

TLS material may be given as PEM bytes, a PEM string, or a path to a PEM file (str or Path): a
service reads its certificate from a mounted secret and the tests pass bytes they generated.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

Pem = bytes | str | os.PathLike | None
# One TCP connection per client: batching already amortises it. Generous message sizes: a full batch
# of 1,024 operations with 1 KiB of data each is ~2 MiB.
DEFAULT_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
)


def read_pem(value: Pem) -> bytes | None:
    """PEM bytes from bytes, a PEM string, or a file path."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    return Path(value).read_bytes()


@dataclass(frozen=True)
class Tls:
    """TLS settings. `enabled` with no roots uses the system's; a chain and key make it mutual TLS."""

    enabled: bool = False
    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    server_name: str | None = None  # the name to check the server's certificate for, if not the target's host

    @classmethod
    def of(cls, tls: bool, root_certificates: Pem, certificate_chain: Pem, private_key: Pem,
           server_name: str | None) -> Tls:
        roots, chain, key = read_pem(root_certificates), read_pem(certificate_chain), read_pem(private_key)
        if (chain is None) != (key is None):
            raise ValueError("mutual TLS needs both certificate_chain and private_key")
        return cls(bool(tls or roots or chain), roots, chain, key, server_name)

    def credentials(self) -> grpc.ChannelCredentials | None:
        if not self.enabled:
            return None
        return grpc.ssl_channel_credentials(root_certificates=self.root_certificates, private_key=self.private_key,
                                            certificate_chain=self.certificate_chain)

    def options(self, extra: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
        options = [*DEFAULT_OPTIONS, *extra]
        if self.enabled and self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        return options


def sync_channel(target: str, tls: Tls, options: Sequence[tuple[str, Any]]) -> grpc.Channel:
    creds = tls.credentials()
    if creds is None:
        return grpc.insecure_channel(target, options=tls.options(options))
    return grpc.secure_channel(target, creds, options=tls.options(options))


def aio_channel(target: str, tls: Tls, options: Sequence[tuple[str, Any]]) -> grpc.aio.Channel:
    creds = tls.credentials()
    if creds is None:
        return grpc.aio.insecure_channel(target, options=tls.options(options))
    return grpc.aio.secure_channel(target, creds, options=tls.options(options))
