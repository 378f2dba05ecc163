"""Shared fixtures: a real SoftHSM2 dev cluster and real daemons on loopback. No mocks."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from hsmlb.dev.cluster import default_keys_file, dev_up
from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc

VECTORS = Path(__file__).resolve().parent / "vectors" / "public_kat.json"
START_TIMEOUT_S = 60


@dataclass
class Cluster:
    state_dir: Path
    config: Path
    keys_file: Path


@dataclass
class DaemonProcess:
    proc: subprocess.Popen[bytes]
    address: str
    log_path: Path
    config: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start_daemon(config: Path, log_path: Path) -> DaemonProcess:
    """Run `hsmlb serve` as a child process and wait until it prints its address."""
    log = log_path.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "hsmlb", "serve", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + START_TIMEOUT_S
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode()
        if line.startswith("hsmlb listening on "):
            address = line.split()[-1]
            daemon = DaemonProcess(proc, address, log_path, config)
            _wait_nodes_up(daemon, deadline)
            return daemon
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"daemon did not start:\n{log_path.read_text()}")


def _wait_nodes_up(daemon: DaemonProcess, deadline: float) -> None:
    with daemon.channel() as channel:
        admin = pb_grpc.AdminStub(channel)
        while time.monotonic() < deadline:
            nodes = admin.ListNodes(pb.ListNodesRequest(), timeout=5).nodes
            if nodes and all(n.backend_state == "up" and n.state.startswith("healthy") for n in nodes):
                return
            time.sleep(0.05)
    raise RuntimeError("nodes did not come up")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    state_dir = tmp_path_factory.mktemp("cluster")
    keys = default_keys_file()
    config = dev_up(state_dir, keys, listen="127.0.0.1:0", fault_injection=True)
    return Cluster(state_dir=state_dir, config=config, keys_file=keys)


@pytest.fixture(scope="session")
def daemon(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One daemon shared by the read-only tests."""
    proc = start_daemon(cluster.config, tmp_path_factory.mktemp("logs") / "daemon.log")
    yield proc
    proc.stop()


@pytest.fixture
def fresh_daemon(cluster: Cluster, tmp_path: Path) -> Iterator[DaemonProcess]:
    """A daemon of the test's own, for tests that break nodes or stop the daemon."""
    proc = start_daemon(cluster.config, tmp_path / "daemon.log")
    yield proc
    proc.stop()


@pytest.fixture
def ops(daemon: DaemonProcess) -> Iterator[pb_grpc.OperationsStub]:
    with daemon.channel() as channel:
        yield pb_grpc.OperationsStub(channel)


@pytest.fixture
def admin(daemon: DaemonProcess) -> Iterator[pb_grpc.AdminStub]:
    with daemon.channel() as channel:
        yield pb_grpc.AdminStub(channel)


@pytest.fixture(scope="session")
def vectors() -> dict[str, dict]:
    data = json.loads(VECTORS.read_text())
    return {v["id"]: v for v in data["vectors"]}


@pytest.fixture(scope="session")
def token_session(cluster: Cluster) -> Iterator[object]:
    """A direct python-pkcs11 session on node-b's token, to compare daemon results against.

    dev_up already loaded SoftHSM2 in this process with the cluster's SOFTHSM2_CONF; the test
    process only ever calls it from this one thread.
    """
    import pkcs11

    from hsmlb.dev.cluster import find_module

    lib = pkcs11.lib(str(find_module()))
    pin = (cluster.state_dir / "user.pin").read_text().strip()
    token = lib.get_token(token_label="node-b")
    with contextlib.closing(token.open(user_pin=pin)) as session:
        yield session


def sym(mode: int, iv: str = "") -> pb.EncryptionDecryptionAttributes:
    return pb.EncryptionDecryptionAttributes(
        symmetric=pb.SymmetricEncryptionAttributes(mode=mode, initialization_vector=iv))
