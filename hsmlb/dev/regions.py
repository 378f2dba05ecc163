"""Emulated APC regions for the dev cluster and the tests: `hsmlb apc-emulator` subprocesses.

Each region is its own process on a loopback port, so stopping one is a real regional outage.
Credentials are generated once per state dir into a shared-credentials file (0600) that both the
emulators and the daemon's region nodes read, as a real deployment reads ~/.aws/credentials.
"""

from __future__ import annotations

import configparser
import os
import secrets
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from hsmlb.config import ConfigError

CREDENTIALS_FILE = "aws-credentials"
DEV_REGIONS = (("apc-east", "us-east-1"), ("apc-west", "us-west-2"))
START_TIMEOUT_S = 20.0
READY_LINE = "apc-emulator listening on "


def dev_credentials(state_dir: Path) -> tuple[str, str, Path]:
    """(access key id, secret, credentials file), generated once per state dir."""
    state_dir.mkdir(parents=True, exist_ok=True)  # regions may start before `dev up` creates the rest
    state_dir.chmod(0o700)
    path = state_dir / CREDENTIALS_FILE
    if not path.exists():
        parser = configparser.ConfigParser()
        parser["default"] = {"aws_access_key_id": "AKIDHSMLBDEV" + secrets.token_hex(4).upper(),
                             "aws_secret_access_key": secrets.token_urlsafe(30)}
        with path.open("w") as handle:
            parser.write(handle)
        path.chmod(0o600)
    parser = configparser.ConfigParser()
    parser.read(path)
    return parser["default"]["aws_access_key_id"], parser["default"]["aws_secret_access_key"], path


@dataclass
class Emulator:
    name: str
    region: str
    process: subprocess.Popen[str]
    endpoint_url: str
    log: list[str] = field(default_factory=list)

    def stop(self, timeout_s: float = 5.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)


def start_emulator(name: str, region: str, keys_file: Path, state_dir: Path, port: int = 0,
                   fault_injection: bool = False) -> Emulator:
    """Start one region and wait (bounded) for its `listening on` line."""
    access, secret, _ = dev_credentials(state_dir)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret}
    command = [sys.executable, "-m", "hsmlb", "apc-emulator", "--port", str(port), "--keys", str(keys_file),
               "--region", region, *(["--fault-injection"] if fault_injection else [])]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    seen: list[str] = []
    ready = threading.Event()
    threading.Thread(target=_drain, args=(process, seen, ready), daemon=True, name=f"drain-{name}").start()
    if ready.wait(START_TIMEOUT_S):
        url = next(line for line in seen if line.startswith(READY_LINE)).split()[3]
        return Emulator(name, region, process, url, seen)
    process.kill()
    process.wait(5)
    raise ConfigError(f"emulated region {name} did not start: {' | '.join(seen[-5:]) or 'no output'}")


def _drain(process: subprocess.Popen[str], lines: list[str], ready: threading.Event, keep: int = 200) -> None:
    """Read the emulator's output on a thread (a full pipe would block it); flag its ready line."""
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line.rstrip())
        if line.startswith(READY_LINE):
            ready.set()
        if len(lines) > keep:
            del lines[1 : len(lines) - keep]  # keep the first lines (start-up) and the tail


def start_dev_regions(keys_file: Path, state_dir: Path, fault_injection: bool = False) -> list[Emulator]:
    started: list[Emulator] = []
    try:
        for name, region in DEV_REGIONS:
            started.append(start_emulator(name, region, keys_file, state_dir, fault_injection=fault_injection))
    except BaseException:
        for emulator in started:
            emulator.stop()
        raise
    return started


def region_node_config(emulator: Emulator, state_dir: Path, connections: int = 8) -> dict[str, object]:
    return {"name": emulator.name, "kind": "apc", "region": emulator.region, "endpoint_url": emulator.endpoint_url,
            "credentials_file": str(dev_credentials(state_dir)[2]), "connections": connections}
