"""TLS for every load generator (Locust users, the stream client, the SDK client, the harness's probes).

The same environment variables as the hsmlb CLI: HSMLB_CA (the CA that signed the daemon's
certificate), HSMLB_CERT and HSMLB_KEY (a client certificate and key, for mTLS). Environment, so that
Locust's worker processes inherit it; `python -m loadtest run|stream --ca --cert --key` sets it.
Unset: plaintext, as before.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import grpc

ENV = ("HSMLB_CA", "HSMLB_CERT", "HSMLB_KEY")


def _files() -> tuple[str | None, str | None, str | None]:
    ca, cert, key = (os.environ.get(name) or None for name in ENV)
    return ca, cert, key


def enabled() -> bool:
    return any(_files())


def export(ca: str | None, cert: str | None, key: str | None) -> None:
    """Flags -> environment, for this process and every child it starts."""
    for name, value in zip(ENV, (ca, cert, key), strict=True):
        if value:
            os.environ[name] = str(Path(value).resolve())


def credentials() -> grpc.ChannelCredentials:
    ca, cert, key = (Path(p).read_bytes() if p else None for p in _files())
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def channel(target: str) -> grpc.Channel:
    return grpc.secure_channel(target, credentials()) if enabled() else grpc.insecure_channel(target)


def aio_channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(target, credentials()) if enabled() else grpc.aio.insecure_channel(target)


def sdk_kwargs() -> dict[str, Any]:
    """hsmlb_client.Client/AsyncClient keyword arguments (it reads PEM files from paths itself)."""
    ca, cert, key = _files()
    return {"root_certificates": ca, "certificate_chain": cert, "private_key": key} if enabled() else {}


def add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("TLS (mTLS) to the daemon; or env " + ", ".join(ENV))
    group.add_argument("--ca", help="CA certificate that signed the daemon's certificate")
    group.add_argument("--cert", help="client certificate (mTLS)")
    group.add_argument("--key", help="client private key (mTLS): a file, never the key itself")
