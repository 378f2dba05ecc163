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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hsmlb.config import ConfigError
from hsmlb.dev.procs import die_with_parent_env, stop
from hsmlb.emulator.cli import parse_ready_line

CREDENTIALS_FILE = "aws-credentials"
DEV_REGIONS = (("apc-east", "us-east-1"), ("apc-west", "us-west-2"))
START_TIMEOUT_S = 20.0
EMULATOR_MODULE = ("hsmlb", "apc-emulator")  # run as `python -m hsmlb apc-emulator`


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
    log: list[str] = field(default_factory=list)  # its stdout and stderr: the first lines and a bounded tail
    drain: threading.Thread | None = field(default=None, repr=False)  # the thread that fills `log`

    def stop(self, timeout_s: float = 5.0) -> int | None:
        """SIGTERM (in-flight requests finish), kill if it is not gone in time; its exit status. On
        return `log` is complete: the drain thread has read the output to its end (bounded wait)."""
        code = stop(self.process, timeout=timeout_s)
        if self.drain is not None:
            self.drain.join(timeout_s)
        return code


def spawn_emulator(name: str, keys_file: str | Path, *flags: str, port: int = 0, env: Mapping[str, str] | None = None,
                   module: Sequence[str] = EMULATOR_MODULE, timeout_s: float = START_TIMEOUT_S) -> Emulator:
    """Start `python -m <module> --port PORT --keys KEYS FLAGS...`; wait (bounded) for its ready line.

    The one emulator starter (dev regions, tests, benchmarks). A thread reads the emulator's output
    for its whole life, because a full pipe would block it; the lines land in Emulator.log. The
    emulator dies with this process, however it dies (dev/procs.py die_with_parent).
    """
    command = [sys.executable, "-m", *module, "--port", str(port), "--keys", str(keys_file), *flags]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**(os.environ if env is None else env), **die_with_parent_env()})
    output = _Output()
    drain = threading.Thread(target=output.drain, args=(process,), daemon=True, name=f"drain-{name}")
    drain.start()
    ready = output.wait_ready(timeout_s)
    if ready is not None:
        url, region = ready
        return Emulator(name, region, process, url, output.lines, drain)
    stop(process, signal.SIGKILL, timeout=5.0)
    raise ConfigError(f"emulated region {name} did not start: {' | '.join(output.lines[-5:]) or 'no output'}")


def start_emulator(name: str, region: str, keys_file: Path, state_dir: Path, port: int = 0,
                   fault_injection: bool = False) -> Emulator:
    """Start one region with the state dir's dev credentials and wait (bounded) for its ready line."""
    access, secret, _ = dev_credentials(state_dir)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret}
    return spawn_emulator(name, keys_file, "--region", region, *(["--fault-injection"] if fault_injection else []),
                          port=port, env=env)


class _Output:
    """An emulator's output lines, read on a thread, and the (url, region) of its ready line."""

    def __init__(self, keep: int = 200) -> None:
        self.lines: list[str] = []
        self.keep = keep
        self.ready: tuple[str, str] | None = None
        self._settled = threading.Event()  # the ready line, or end of output (it exited first)

    def drain(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        try:
            for line in process.stdout:
                self.lines.append(line.rstrip())
                if self.ready is None and (parsed := parse_ready_line(line)) is not None:
                    self.ready = parsed
                    self._settled.set()
                if len(self.lines) > self.keep:
                    del self.lines[1 : len(self.lines) - self.keep]  # keep the first line (start-up) and the tail
        finally:
            self._settled.set()

    def wait_ready(self, timeout_s: float) -> tuple[str, str] | None:
        self._settled.wait(timeout_s)
        return self.ready


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
