"""The runtime route changes (weights, promotions, the switch) in a small JSON file beside the config,
so that they survive a daemon restart. Written atomically (temp file + rename) on every change;
read once at start. A file that cannot be read is logged and ignored: the config's routes serve.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("hsmlb.routes")


def read_state(path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.error("route state %s unreadable (%s); serving the config's routes", path, type(exc).__name__)
        return None
    return data if isinstance(data, dict) else None


def write_state(path: Path | None, state: dict[str, Any]) -> None:
    if path is None:
        return
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        log.error("route state %s not written (%s): this change will not survive a restart", path, exc.strerror)
