"""The `tls:` and `auth:` config sections (frozen, extra fields refused, like hsmlb/config.py)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TlsConfig(_Frozen):
    """Server TLS. With client_ca_file, every client must present a certificate that CA signed (mTLS).
    The files are re-read when they change, for new connections, without a restart."""

    cert_file: Path = Field(description="server certificate chain (PEM)")
    key_file: Path = Field(description="server private key (PEM); a secret: mount it, never inline it")
    client_ca_file: Path | None = Field(None, description="CA bundle for client certificates: mTLS when set")


class AdminListenConfig(_Frozen):
    """The Admin service (drills, fault injection, routes) on an address of its own, so operators can put it
    on another interface or port than the data path, with its own mTLS policy (e.g. a client CA that only
    signs operators' certificates). The data port then serves no Admin RPC at all."""

    listen: str = Field(pattern=r"^[^:\s]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$",
                        description="host:port of the Admin service (port 0: any free port)")
    tls: TlsConfig | None = Field(None, description="its own TLS; none: the daemon's `tls:` (plaintext if none)")


class RateLimit(_Frozen):
    per_s: float = Field(gt=0, description="operations per second, sustained")
    burst: float = Field(gt=0, description="operations allowed at once (the bucket's depth)")


class CallerRule(_Frozen):
    """One caller (or a family of them): what it may call and with which keys."""

    identity: str = Field(min_length=1, description="exact identity, or a pattern with * and ? "
                          "(spiffe://example.org/payments/*); `anonymous` names callers without a certificate")
    operations: list[str] = Field(default_factory=list, description="operation names (encrypt_data, "
                                  "translate_pin_data, ...) or *; empty: none")
    keys: list[str] = Field(default_factory=list, description="key alias patterns (alias/pin-*); empty: none")
    admin: bool = Field(False, description="may use the Admin service (drills, fault injection, routes)")
    rate_limit: RateLimit | None = None


class AuthConfig(_Frozen):
    """Authorization. No callers: every caller may do everything (dev). Any caller listed: deny by default."""

    callers: list[CallerRule] = Field(default_factory=list)
    deny: list[str] = Field(default_factory=list, description="identity patterns always refused, checked first")
    log_only: bool = Field(False, description="log and count what would be denied, deny nothing (roll-out)")
    max_concurrent_rpcs: int = Field(0, ge=0, description="RPCs in flight at once beyond which new ones get "
                                     "RESOURCE_EXHAUSTED (a backstop behind the per-caller rates); 0: no cap")

    @model_validator(mode="after")
    def _known_operations(self) -> AuthConfig:
        if not self.callers:
            return self
        from hsmlb.api.codecs import CODECS  # here: importing the model must not pull in grpc

        for index, rule in enumerate(self.callers):
            unknown = [op for op in rule.operations if op != "*" and op not in CODECS]
            if unknown:
                raise ValueError(f"callers.{index}.operations: unknown operation {unknown[0]!r} "
                                 f"(known: {', '.join(sorted(CODECS))}, or *)")
        return self
