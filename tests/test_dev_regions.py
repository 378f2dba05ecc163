"""The dev regions' credentials: generated once, private, and usable before `dev up` made the dir."""

from __future__ import annotations

import stat
from pathlib import Path

from hsmlb.dev.regions import dev_credentials


def test_credentials_are_created_in_a_fresh_state_dir_once_and_private(tmp_path: Path) -> None:
    state_dir = tmp_path / "not-yet" / "created"
    access, secret, path = dev_credentials(state_dir)
    assert path.parent == state_dir and path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert access.startswith("AKID") and len(secret) >= 30
    assert dev_credentials(state_dir) == (access, secret, path)  # stable across calls
