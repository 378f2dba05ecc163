"""Real certificates for the security tests: a CA with server and client certificates, a stranger CA,
an expired client certificate; a daemon on loopback that requires them; channels that present them."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from hsmlb.auth.devca import Authority, spiffe_id, write_pair
from hsmlb.auth.devtls import dev_callers
from hsmlb.auth.tls import channel_credentials
from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests.conftest import Cluster, DaemonProcess, start_daemon

OPERATOR, APP, METERED = spiffe_id("operator"), spiffe_id("app"), spiffe_id("metered")
METERED_RULE = {"identity": METERED, "operations": ["encrypt_data"], "keys": ["alias/zek-*"],
                "rate_limit": {"per_s": 0.2, "burst": 3}}


@dataclass
class Pki:
    dir: Path
    ca: Authority

    @property
    def ca_file(self) -> Path:
        return self.dir / "ca.crt"

    def client(self, name: str) -> tuple[Path, Path]:
        return self.dir / f"{name}.crt", self.dir / f"{name}.key"

    def channel(self, address: str, name: str | None, ca_file: Path | None = None) -> grpc.Channel:
        cert, key = self.client(name) if name else (None, None)
        return grpc.secure_channel(address, channel_credentials(ca_file or self.ca_file, cert, key),
                                   options=[("grpc.enable_http_proxy", 0)])


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = Authority.create("test CA")
    (directory / "ca.crt").write_bytes(ca.pem)
    write_pair(directory, "server", ca.issue("localhost", dns=("localhost",), ips=("127.0.0.1",), server=True))
    for name in ("app", "operator", "metered"):
        write_pair(directory, name, ca.issue(name, uris=(spiffe_id(name),)))
    write_pair(directory, "cnonly", ca.issue("batch-job"))  # no SAN: the subject CN is the identity
    write_pair(directory, "dnsname", ca.issue("ignored-cn", dns=("svc.example.org",), ips=("10.1.2.3",)))
    stranger = Authority.create("another CA")
    write_pair(directory, "stranger", stranger.issue("operator", uris=(OPERATOR,)))
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    write_pair(directory, "expired", ca.issue("operator", uris=(OPERATOR,), days=1, not_before=old))
    return Pki(directory, ca)


def secure_config(cluster: Cluster, pki: Pki, path: Path, nodes: tuple[str, ...] = ("node-a", "node-b"),
                  audit: dict[str, Any] | None = None, **top: Any) -> Path:
    extra: dict[str, Any] = {"tls": {"cert_file": str(pki.dir / "server.crt"), "key_file": str(pki.dir / "server.key"),
                                     "client_ca_file": str(pki.ca_file)},
                             "auth": {"callers": [*dev_callers(), METERED_RULE]}}
    if audit is not None:
        extra["audit"] = audit
    return cluster.write_variant(path, nodes, **extra, **top)


def start_secure(config: Path, log: Path, pki: Pki, timeout: float = 60) -> DaemonProcess:
    daemon = start_daemon(config, log, wait_nodes_up=False)
    deadline = time.monotonic() + timeout
    with pki.channel(daemon.address, "operator") as channel:
        admin = pb_grpc.AdminStub(channel)
        while time.monotonic() < deadline:
            nodes = admin.ListNodes(pb.ListNodesRequest(), timeout=5).nodes
            if nodes and all(n.backend_state == "up" and n.state.startswith("healthy") for n in nodes):
                return daemon
            time.sleep(0.05)
    daemon.stop()
    raise RuntimeError("nodes did not come up")
