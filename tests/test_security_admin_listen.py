"""The Admin service on an address of its own (`admin_listen`) with its own mTLS policy: operators reach it
only there, with certificates from their own CA; the data port serves no Admin RPC; authorization still
applies on the Admin port, and a drill still carries the authenticated identity."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from hsmlb.auth.devca import Authority, spiffe_id, write_pair
from hsmlb.auth.tls import channel_credentials
from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests._daemon_helpers import NIST_ECB, nist_request
from tests._tls_helpers import OPERATOR, Pki, make_pki, secure_config
from tests.conftest import Cluster, DaemonProcess, start_daemon


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def split(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonProcess, str, Pki]]:
    """A daemon whose data port trusts the main CA and whose Admin port trusts only the operators' CA."""
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    ops_ca = Authority.create("operators CA")
    (pki.dir / "ops-ca.crt").write_bytes(ops_ca.pem)
    write_pair(pki.dir, "ops-operator", ops_ca.issue("operator", uris=(OPERATOR,)))
    write_pair(pki.dir, "ops-app", ops_ca.issue("app", uris=(spiffe_id("app"),)))  # right CA, not an admin caller
    admin_address = f"127.0.0.1:{_free_port()}"
    logs = tmp_path_factory.mktemp("split")
    config = secure_config(cluster, pki, logs / "hsmlb.yaml", admin_listen={
        "listen": admin_address, "tls": {"cert_file": str(pki.dir / "server.crt"),
                                         "key_file": str(pki.dir / "server.key"),
                                         "client_ca_file": str(pki.dir / "ops-ca.crt")}})
    daemon = start_daemon(config, logs / "daemon.log", wait_nodes_up=False)
    try:
        deadline = time.monotonic() + 60
        with _admin_channel(pki, admin_address, "ops-operator") as channel:
            admin = pb_grpc.AdminStub(channel)
            while time.monotonic() < deadline:
                nodes = admin.ListNodes(pb.ListNodesRequest(), timeout=5).nodes
                if nodes and all(n.backend_state == "up" for n in nodes):
                    break
                time.sleep(0.05)
        yield daemon, admin_address, pki
    finally:
        daemon.stop()


def _admin_channel(pki: Pki, address: str, name: str) -> grpc.Channel:
    cert, key = pki.client(name)
    return grpc.secure_channel(address, channel_credentials(pki.ca_file, cert, key),
                               options=[("grpc.enable_http_proxy", 0)])


def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value.code()


def test_the_data_port_serves_operations_but_no_admin(split: tuple[DaemonProcess, str, Pki]) -> None:
    daemon, _, pki = split
    with pki.channel(daemon.address, "operator") as channel:  # an admin caller, on the wrong port
        assert pb_grpc.OperationsStub(channel).EncryptData(nist_request(), timeout=10).cipher_text == NIST_ECB
        admin = pb_grpc.AdminStub(channel)
        assert _code(lambda: admin.ListNodes(pb.ListNodesRequest(), timeout=5)) == grpc.StatusCode.UNIMPLEMENTED


def test_the_admin_port_has_its_own_client_ca(split: tuple[DaemonProcess, str, Pki]) -> None:
    _, admin_address, pki = split
    with pki.channel(admin_address, "operator") as channel:  # the data port's CA: refused at the handshake
        admin = pb_grpc.AdminStub(channel)
        assert _code(lambda: admin.ListNodes(pb.ListNodesRequest(), timeout=5)) == grpc.StatusCode.UNAVAILABLE
    with _admin_channel(pki, admin_address, "ops-app") as channel:  # the right CA, but not an admin caller
        admin = pb_grpc.AdminStub(channel)
        assert _code(lambda: admin.ListNodes(pb.ListNodesRequest(), timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
        ops = pb_grpc.OperationsStub(channel)
        assert _code(lambda: ops.EncryptData(nist_request(), timeout=5)) == grpc.StatusCode.UNIMPLEMENTED


def test_operator_drills_on_the_admin_port_under_its_own_name(split: tuple[DaemonProcess, str, Pki]) -> None:
    daemon, admin_address, pki = split
    with _admin_channel(pki, admin_address, "ops-operator") as channel:
        admin = pb_grpc.AdminStub(channel)
        try:
            reply = admin.SetNodeState(pb.SetNodeStateRequest(node="node-b", action=pb.FAIL,
                                                              requested_by="mallory@evil.example"), timeout=10)
            assert reply.node.state == f"failed by operator ({OPERATOR})"
        finally:
            admin.SetNodeState(pb.SetNodeStateRequest(node="node-b", action=pb.RESTORE), timeout=10)
    assert "mallory" not in daemon.log_text()


def test_admin_listen_is_validated() -> None:
    from pydantic import ValidationError

    from hsmlb.auth.config import AdminListenConfig

    with pytest.raises(ValidationError, match="listen"):
        AdminListenConfig(listen="no-port")
    assert AdminListenConfig(listen="[::1]:0").tls is None


def test_relative_admin_tls_paths_resolve_beside_the_config(tmp_path: Path, cluster: Cluster) -> None:
    from hsmlb.config import load_config

    path = cluster.write_variant(tmp_path / "hsmlb.yaml", admin_listen={
        "listen": "127.0.0.1:0", "tls": {"cert_file": "server.crt", "key_file": "server.key"}})
    config = load_config(path)
    assert config.admin_listen is not None and config.admin_listen.tls is not None
    assert config.admin_listen.tls.cert_file == tmp_path / "server.crt"
