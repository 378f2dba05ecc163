"""Shared fixtures: a real SoftHSM2 dev cluster and real daemons on loopback. No mocks."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from hsmlb.dev.cluster import default_keys_file, dev_up
from hsmlb.dev.procs import stop as stop_child
from hsmlb.dev.regions import Emulator, region_node_config, start_dev_regions
from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc

VECTORS = Path(__file__).resolve().parent / "vectors" / "public_kat.json"
START_TIMEOUT_S = 60


@dataclass
class Cluster:
    state_dir: Path
    config: Path
    keys_file: Path

    def write_variant(self, path: Path, nodes: Iterable[str] | None = None, extra_nodes: Iterable[dict[str, Any]] = (),
                      mutate: Callable[[dict[str, Any]], None] | None = None, **top: Any) -> Path:
        """The cluster's config listening on a free port, with only `nodes` (all if None) plus
        `extra_nodes`, top-level keys replaced by `top`, then `mutate` applied; written to `path`."""
        data = yaml.safe_load(self.config.read_text())
        data["listen"] = "127.0.0.1:0"
        if nodes is not None:
            keep = set(nodes)
            data["nodes"] = [n for n in data["nodes"] if n["name"] in keep]
        data["nodes"] += list(extra_nodes)
        data.update(top)
        if mutate is not None:
            mutate(data)
        path.write_text(yaml.safe_dump(data))
        return path


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

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        return stop_child(self.proc, sig, timeout)


@contextlib.contextmanager
def debug_logging() -> Iterator[None]:
    """Daemons and emulators started inside log at DEBUG (their CLIs take HSMLB_LOG_LEVEL as the
    --log-level default): what the sensitive-data tests search must include the most verbose output."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HSMLB_LOG_LEVEL", "DEBUG")
        yield


def start_daemon(config: Path, log_path: Path, new_session: bool = False, wait_nodes_up: bool = True) -> DaemonProcess:
    """Run `hsmlb serve` as a child process and wait until it prints its address.

    new_session: the daemon leads a process group of its own (with its token workers), as under a
    service manager, so a test can signal the whole group. wait_nodes_up=False: return once it
    listens, for tests of a daemon serving with some nodes down."""
    with log_path.open("wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen([sys.executable, "-m", "hsmlb", "serve", "--config", str(config)],
                                stdout=subprocess.PIPE, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                start_new_session=new_session)
    deadline = time.monotonic() + START_TIMEOUT_S
    assert proc.stdout is not None
    try:
        while time.monotonic() < deadline:
            line = proc.stdout.readline().decode()
            if line.startswith("hsmlb listening on "):
                address = line.split()[-1]
                daemon = DaemonProcess(proc, address, log_path, config)
                if wait_nodes_up:
                    _wait_nodes_up(daemon, deadline)
                return daemon
            if not line and proc.poll() is not None:
                break
    except BaseException:
        stop_child(proc, signal.SIGKILL, 10)
        raise
    stop_child(proc, signal.SIGKILL, 10)
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


@dataclass
class PaymentCluster(Cluster):
    """Tokens plus two emulated APC regions (apc-east, apc-west) with fault switches."""

    emulators: list[Emulator]

    def emulator(self, name: str) -> Emulator:
        return next(e for e in self.emulators if e.name == name)

    def variant(self, nodes: list[str], name: str, extra_nodes: Sequence[dict[str, Any]] = (),
                **overrides: object) -> Path:
        """The same cluster config restricted to some nodes (to run an op on one backend kind), plus
        `extra_nodes` (e.g. a region of the test's own), with top-level `overrides`."""
        return self.write_variant(self.state_dir / f"hsmlb-{name}.yaml", nodes, extra_nodes, **overrides)


def set_faults(emulator: Emulator, **faults: float) -> None:
    """Flip an emulated region's fault switches (latency_ms, error_rate, throttle_rate, corrupt_rate) at runtime."""
    body = json.dumps({"latency_ms": 0.0, "error_rate": 0.0, "throttle_rate": 0.0, "corrupt_rate": 0.0,
                       **faults}).encode()
    request = urllib.request.Request(emulator.endpoint_url + "/_emulator/faults", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


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

    # dev_up provisions in child processes, so this is the process's first load of SoftHSM2: point it
    # at this cluster's tokens (another fixture's dev_up may have changed the variable since).
    os.environ["SOFTHSM2_CONF"] = str(cluster.state_dir / "softhsm2.conf")
    lib = pkcs11.lib(str(find_module()))
    pin = (cluster.state_dir / "user.pin").read_text().strip()
    token = lib.get_token(token_label="node-b")
    with contextlib.closing(token.open(user_pin=pin)) as session:
        yield session


def sym(mode: int, iv: str = "") -> pb.EncryptionDecryptionAttributes:
    return pb.EncryptionDecryptionAttributes(
        symmetric=pb.SymmetricEncryptionAttributes(mode=mode, initialization_vector=iv))


# ------------------------------------------------------------------ payment clusters, provisioned out of process
# Aliases that the strict token node-d also holds in `strict_payment_cluster`: a holder that cannot serve them
# (no host-side derivation), so UNAVAILABLE and NodeStatus.skipped_ops can be shown.
STRICT_HELD_ALIASES = ("alias/cvk-1", "alias/mac-retail")


def provision_payment_cluster(state_dir: Path, keys_file: Path) -> PaymentCluster:
    """Tokens node-a..d via `hsmlb dev up` in a child process, then regions apc-east/apc-west.

    Out of process because dev_up in this process can provision only one state dir per session:
    python-pkcs11 keeps the SoftHSM2 library initialised against the first SOFTHSM2_CONF it saw
    (the `cluster` fixture's), so a second in-process dev_up logs in to the wrong tokens.
    """
    state_dir = state_dir.resolve()
    done = subprocess.run([sys.executable, "-m", "hsmlb", "dev", "up", "--state-dir", str(state_dir), "--keys",
                           str(keys_file), "--listen", "127.0.0.1:0", "--fault-injection"],
                          capture_output=True, text=True, timeout=180, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"hsmlb dev up failed:\n{done.stderr[-2000:]}")
    config = Path(done.stdout.strip().splitlines()[-1])
    emulators = start_dev_regions(keys_file, state_dir, fault_injection=True)
    data = yaml.safe_load(config.read_text())
    data["nodes"] += [region_node_config(e, state_dir) for e in emulators]
    config.write_text(yaml.safe_dump(data))
    return PaymentCluster(state_dir=state_dir, config=config, keys_file=keys_file, emulators=emulators)


@pytest.fixture(scope="session")
def strict_payment_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PaymentCluster]:
    """Like payment_cluster, with node-d (strict token) also holding STRICT_HELD_ALIASES; usable in any order
    with the `cluster` fixture (provisioned out of process)."""
    state_dir = tmp_path_factory.mktemp("strict-payment-cluster")
    entries = yaml.safe_load(default_keys_file().read_text())
    for entry in entries:
        if entry["alias"] in STRICT_HELD_ALIASES:
            entry["nodes"] = ["node-a", "node-b", "node-c", "node-d"]
    keys_file = state_dir / "dev-keys-strict.yaml"
    keys_file.write_text(yaml.safe_dump(entries))
    payment = provision_payment_cluster(state_dir, keys_file)
    try:
        yield payment
    finally:
        for emulator in payment.emulators:
            emulator.stop()


def node_table(daemon: DaemonProcess) -> dict[str, pb.NodeStatus]:
    with daemon.channel() as channel:
        return {n.name: n for n in pb_grpc.AdminStub(channel).ListNodes(pb.ListNodesRequest(), timeout=10).nodes}
