"""The `audit:` config section."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class AuditConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    dir: Path = Field(description="directory of the hash-chained JSONL files (created if missing)")
    signing_key_file: Path | None = Field(None, description="Ed25519 private key (PEM) that signs checkpoints "
                                          "(`hsmlb audit keygen`); a secret: mount it, never inline it")
    signing_key_env: str | None = Field(None, description="environment variable holding that PEM instead")
    checkpoint_interval_s: float = Field(60.0, gt=0, le=86400, description="a signed checkpoint at least this "
                                         "often, traffic or not (and at every rotation and at stop)")
    flush_interval_ms: float = Field(50.0, gt=0, le=100, description="records are written, flushed and "
                                     "fsynced together at this interval: the most a crash can lose")
    rotate_bytes: int = Field(64 * 1024 * 1024, ge=4096, description="start a new file beyond this size")
    rotate_s: float = Field(86400.0, gt=0, description="start a new file after this long")
    on_failure: Literal["fail_closed", "alarm"] = Field(
        "fail_closed", description="when records cannot be written: fail_closed refuses cryptographic and admin "
        "operations (UNAVAILABLE) until they can; alarm keeps serving and raises a counted, logged alarm")
    max_pending: int = Field(200_000, ge=1000, description="records held in memory while the disk refuses them")

    @model_validator(mode="after")
    def _one_key(self) -> AuditConfig:
        if (self.signing_key_file is None) == (self.signing_key_env is None):
            raise ValueError("exactly one of signing_key_file or signing_key_env is required")
        return self

    def read_signing_key(self) -> bytes:
        """The PEM bytes; the error names the source, never the content."""
        from hsmlb.config import ConfigError

        if self.signing_key_env is not None:
            value = os.environ.get(self.signing_key_env)
            if not value:
                raise ConfigError(f"audit.signing_key_env: environment variable {self.signing_key_env} is not set")
            return value.encode()
        assert self.signing_key_file is not None
        try:
            return self.signing_key_file.read_bytes()
        except OSError as exc:
            raise ConfigError(f"audit.signing_key_file: cannot read {self.signing_key_file}: "
                              f"{exc.__class__.__name__}") from None
