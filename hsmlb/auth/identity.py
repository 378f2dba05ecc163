"""The caller's identity, from the client certificate gRPC verified.

Preference, as SPIFFE-minded meshes have it: a spiffe:// URI SAN, else another URI SAN, else a DNS
SAN, else the subject CN. No certificate (a dev daemon without TLS): `anonymous`; the peer address
travels beside it in Call.peer, and a policy can refuse `anonymous`.
"""

from __future__ import annotations

from typing import Any

from hsmlb.api.filters import ANONYMOUS


def _first(ctx: dict[str, list[bytes]], key: str, prefix: bytes = b"") -> str:
    for value in ctx.get(key) or ():
        if value.startswith(prefix):
            return value.decode("utf-8", "replace")
    return ""


def identity_of(context: Any) -> str:
    """The caller's identity from a grpc.aio ServicerContext (`anonymous` without a verified certificate)."""
    if context is None:
        return ANONYMOUS
    ctx = context.auth_context()
    if not ctx.get("x509_pem_cert") and not ctx.get("x509_common_name") and not ctx.get("peer_dns"):
        return ANONYMOUS  # TLS without a client certificate, or no TLS at all
    return (_first(ctx, "peer_spiffe_id") or _first(ctx, "peer_uri", b"spiffe://") or _first(ctx, "peer_uri")
            or _first(ctx, "peer_dns") or _first(ctx, "x509_common_name") or ANONYMOUS)
