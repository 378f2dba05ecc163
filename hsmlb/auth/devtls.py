"""`hsmlb dev up --tls`: the dev config made to require mTLS, name its callers, and audit.

`app` (spiffe://hsmlb.dev/app) may use data-encryption and MAC operations on the data and MAC keys
only, at a bounded rate; `operator` (spiffe://hsmlb.dev/operator) may do everything, Admin included.
The audit log goes to <state>/audit, signed with <state>/audit-signing.key (made once, 0600).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from hsmlb.auth.devca import dev_pki, spiffe_id

APP_OPERATIONS = ["encrypt_data", "decrypt_data", "generate_mac", "verify_mac", "generate_random"]
APP_KEYS = ["alias/zek-*", "alias/dek-*", "alias/cmac-*", "alias/hmac-*"]


def dev_callers(app_rate: dict[str, float] | None = None) -> list[dict[str, Any]]:
    app: dict[str, Any] = {"identity": spiffe_id("app"), "operations": APP_OPERATIONS, "keys": APP_KEYS}
    if app_rate:
        app["rate_limit"] = app_rate
    return [app, {"identity": spiffe_id("operator"), "operations": ["*"], "keys": ["*"], "admin": True}]


def secure_dev_config(config_path: Path, state_dir: Path, audit: bool = True) -> dict[str, Path]:
    """Rewrite the dev config with tls:, auth: and (by default) audit:; returns the PKI's file paths."""
    from hsmlb.audit.cli import keygen

    state_dir = state_dir.resolve()
    pki = dev_pki(state_dir / "tls")
    data = yaml.safe_load(config_path.read_text())
    data["tls"] = {"cert_file": str(pki["server_cert"]), "key_file": str(pki["server_key"]),
                   "client_ca_file": str(pki["ca"])}
    data["auth"] = {"callers": dev_callers({"per_s": 2000.0, "burst": 4000.0})}
    if audit:
        signing = state_dir / "audit-signing.key"
        if not signing.exists():
            keygen(signing)
        data["audit"] = {"dir": str(state_dir / "audit"), "signing_key_file": str(signing)}
        pki["audit_public_key"] = signing.with_name(signing.name + ".pub")
    config_path.write_text("# written by `hsmlb dev up --tls`; PINs and keys live in files, never here\n"
                           + yaml.safe_dump(data))
    return pki
