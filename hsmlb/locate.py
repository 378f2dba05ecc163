"""Where is the daemon? How the client commands (`hsmlb nodes`, `node`, `call`) find it from any directory.

In order: --address, --config, $HSMLB_ADDRESS, $HSMLB_CONFIG, ./.hsmlb/dev/hsmlb.yaml (a checkout's dev
cluster), then the per-user record that `hsmlb dev up --serve` leaves in
$XDG_STATE_HOME/hsmlb/dev.json (default ~/.local/state/hsmlb/dev.json). Why a record: a newcomer's
second shell starts in another directory, and the dev cluster's config lives under the checkout.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from hsmlb.config import ConfigError, load_config

log = logging.getLogger("hsmlb.cli")
ENV_ADDRESS = "HSMLB_ADDRESS"
ENV_CONFIG = "HSMLB_CONFIG"
DEV_CONFIG = Path(".hsmlb/dev/hsmlb.yaml")


def state_file() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "hsmlb" / "dev.json"


def remember(config_path: Path, listen: str) -> None:
    """Record the dev daemon's config and address for later client commands; best effort, never fatal."""
    if listen.rsplit(":", 1)[-1] == "0":  # a port chosen at start: nothing useful to record
        return
    path = state_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"config": str(config_path.resolve()), "address": _dial(listen)}) + "\n")
        tmp.replace(path)
    except OSError as exc:
        log.info("could not record the daemon's address in %s: %s", path, exc.strerror)


def _dial(listen: str) -> str:
    host, port = listen.rsplit(":", 1)
    return f"{'127.0.0.1' if host in ('0.0.0.0', '[::]') else host}:{port}"


def _from_config(config_path: Path) -> str:
    listen = load_config(config_path).listen
    if listen.rsplit(":", 1)[1].lstrip("0") == "":  # the daemon took whatever port it was given
        raise ConfigError(f"{config_path}: listen {listen} is a port chosen at start; pass --address HOST:PORT "
                          "(the daemon prints it: 'hsmlb listening on ...')")
    return _dial(listen)


def _recorded() -> str | None:
    path = state_file()
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    config = record.get("config")
    if isinstance(config, str) and Path(config).is_file():
        return _from_config(Path(config))
    address = record.get("address")
    return address if isinstance(address, str) and address else None


def find_address(address: str | None = None, config: Path | None = None) -> str:
    """The daemon's HOST:PORT, or ConfigError saying every way to name it."""
    if address:
        return address
    if config is not None:
        return _from_config(config)
    if os.environ.get(ENV_ADDRESS):
        return os.environ[ENV_ADDRESS]
    if os.environ.get(ENV_CONFIG):
        return _from_config(Path(os.environ[ENV_CONFIG]))
    if DEV_CONFIG.is_file():
        return _from_config(DEV_CONFIG)
    recorded = _recorded()
    if recorded:
        return recorded
    raise ConfigError(f"no daemon to talk to: pass --address HOST:PORT or --config FILE, set {ENV_ADDRESS} or "
                      f"{ENV_CONFIG}, or start the dev cluster (`./scripts/run-dev`), which records itself in "
                      f"{state_file()}")
