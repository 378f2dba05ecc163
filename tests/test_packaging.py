"""Packaging hygiene (issue 10): the wheel carries the LICENSE, a build leaves no debris in the checkout,
and the checkout's own directories cannot shadow hsmlb's modules when run from the directory holding it."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _debris() -> set[str]:
    """build/ and *.egg-info where setuptools leaves them by default: beside each setup.py and the package."""
    return {str(p.relative_to(ROOT)) for d in (ROOT, ROOT / "hsmlb", ROOT / "clients" / "python")
            for p in d.iterdir() if p.name == "build" or p.name.endswith(".egg-info")}


def test_wheel_has_the_license_and_the_build_leaves_no_debris(tmp_path: Path) -> None:
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")
    before = _debris()  # a checkout installed before this change may hold a stale egg-info
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "wheel"),
                           str(ROOT)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HSMLB_BUILD_DIR": str(tmp_path / "build")})
    assert done.returncode == 0, done.stderr[-3000:]
    wheel = next((tmp_path / "wheel").glob("hsmlb-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata or "License: Apache-2.0" in metadata
    assert "hsmlb/dev/dev-keys.yaml" in names and "hsmlb/v1/hsmlb_pb2.py" in names
    client = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "wheel"),
                             str(ROOT / "clients" / "python")], capture_output=True, text=True, timeout=600)
    assert client.returncode == 0, client.stderr[-3000:]
    assert _debris() == before, _debris() - before  # nothing new in the checkout


def test_checkout_does_not_shadow_the_config_module(tmp_path: Path) -> None:
    """Run from the directory holding a checkout named hsmlb, a top-level config/ in it became the
    namespace package hsmlb.config: `ImportError: cannot import name 'ConfigError'`."""
    (tmp_path / "hsmlb").symlink_to(ROOT)
    done = subprocess.run([sys.executable, "-c", "from hsmlb.config import ConfigError; import hsmlb.cli"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    shadows = {p.name for p in ROOT.iterdir() if p.is_dir()} & {p.stem for p in (ROOT / "hsmlb").iterdir()}
    assert shadows <= {"hsmlb"}, shadows  # no top-level directory named like one of hsmlb's modules
