"""Acceptance 1 and 2 of the security issue, with real certificates on loopback: who may connect, who
may do what, whose name a drill carries, certificate rotation without a restart, per-caller rates."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from hsmlb.auth.devca import Authority, write_pair
from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests._daemon_helpers import NIST_ECB, nist_request
from tests._tls_helpers import APP, METERED, OPERATOR, Pki, make_pki, secure_config, start_secure
from tests.conftest import Cluster, DaemonProcess, sym


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def secure(cluster: Cluster, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    logs = tmp_path_factory.mktemp("secure")
    daemon = start_secure(secure_config(cluster, pki, logs / "hsmlb.yaml"), logs / "daemon.log", pki)
    yield daemon
    daemon.stop()


def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value.code()


@pytest.mark.parametrize("who", [None, "stranger", "expired"])
def test_refused_without_a_valid_client_certificate(secure: DaemonProcess, pki: Pki, who: str | None) -> None:
    with pki.channel(secure.address, who) as channel:
        ops = pb_grpc.OperationsStub(channel)
        assert _code(lambda: ops.EncryptData(nist_request(), timeout=5)) == grpc.StatusCode.UNAVAILABLE
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in secure.log_text() or who is not None


def test_plaintext_is_refused(secure: DaemonProcess) -> None:
    with grpc.insecure_channel(secure.address) as channel:
        ops = pb_grpc.OperationsStub(channel)
        assert _code(lambda: ops.EncryptData(nist_request(), timeout=5)) == grpc.StatusCode.UNAVAILABLE


def test_app_may_use_its_operations_and_keys_only(secure: DaemonProcess, pki: Pki) -> None:
    with pki.channel(secure.address, "app") as channel:
        ops, admin = pb_grpc.OperationsStub(channel), pb_grpc.AdminStub(channel)
        assert ops.EncryptData(nist_request(), timeout=10).cipher_text == NIST_ECB
        other_key = pb.EncryptDataRequest(key_identifier="alias/pek-tdes", plain_text="00" * 8,
                                          encryption_attributes=sym(pb.ECB))
        with pytest.raises(grpc.RpcError) as info:
            ops.EncryptData(other_key, timeout=10)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert info.value.details() == f"caller {APP} may not use key alias/pek-tdes for encrypt_data"
        sign = pb.SignRequest(key_identifier="alias/sign-ec", message="00", signing_algorithm=pb.ECDSA_SHA_256)
        with pytest.raises(grpc.RpcError) as info:
            ops.Sign(sign, timeout=10)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert info.value.details() == f"caller {APP} may not call sign"
        with pytest.raises(grpc.RpcError) as info:
            admin.ListNodes(pb.ListNodesRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert info.value.details() == f"caller {APP} may not use the Admin service (ListNodes)"
        assert _code(lambda: admin.SetNodeState(pb.SetNodeStateRequest(node="node-a", action=pb.FAIL),
                                                timeout=10)) == grpc.StatusCode.PERMISSION_DENIED
        # on a stream each operation is judged on its own: the allowed one is served beside the refused ones
        replies = {r.request_id: r for r in ops.Stream(iter([
            pb.StreamRequest(request_id=1, encrypt_data=nist_request()),
            pb.StreamRequest(request_id=2, encrypt_data=other_key),
            pb.StreamRequest(request_id=3, sign=sign)]), timeout=10)}
        assert replies[1].encrypt_data.cipher_text == NIST_ECB
        assert replies[2].status.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
        assert "alias/pek-tdes" in replies[2].status.message and APP in replies[2].status.message
        assert replies[3].status.code == grpc.StatusCode.PERMISSION_DENIED.value[0]


@pytest.mark.parametrize("who, identity", [("cnonly", "batch-job"), ("dnsname", "svc.example.org")])
def test_identity_from_dns_san_or_cn_and_unknown_callers_are_denied(secure: DaemonProcess, pki: Pki, who: str,
                                                                    identity: str) -> None:
    with pki.channel(secure.address, who) as channel, pytest.raises(grpc.RpcError) as info:
        pb_grpc.OperationsStub(channel).EncryptData(nist_request(), timeout=10)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert info.value.details() == f"caller {identity} may not call encrypt_data with key alias/zek-aes128"


def test_operator_drills_under_its_own_name(secure: DaemonProcess, pki: Pki) -> None:
    with pki.channel(secure.address, "operator") as channel:
        admin = pb_grpc.AdminStub(channel)
        try:
            reply = admin.SetNodeState(pb.SetNodeStateRequest(node="node-b", action=pb.FAIL,
                                                              requested_by="mallory@evil.example"), timeout=10)
            assert reply.node.state == f"failed by operator ({OPERATOR})"
            assert "mallory" not in secure.log_text()
        finally:
            admin.SetNodeState(pb.SetNodeStateRequest(node="node-b", action=pb.RESTORE), timeout=10)
        assert pb_grpc.OperationsStub(channel).EncryptData(nist_request(), timeout=10).cipher_text == NIST_ECB


def test_rate_limit_answers_with_a_retry_hint_and_spares_other_callers(secure: DaemonProcess, pki: Pki) -> None:
    with pki.channel(secure.address, "metered") as metered, pki.channel(secure.address, "app") as app:
        ops = pb_grpc.OperationsStub(metered)
        for _ in range(3):  # the burst
            assert ops.EncryptData(nist_request(), timeout=10).cipher_text == NIST_ECB
        with pytest.raises(grpc.RpcError) as info:
            ops.EncryptData(nist_request(), timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert METERED in info.value.details() and "rate limit" in info.value.details()
        pushback = dict(info.value.trailing_metadata())["grpc-retry-pushback-ms"]
        assert 0 < int(pushback) <= 5000  # 0.2/s: at most 5 s to the next token
        # the same caller's stream: the refusal is the item's status, the hint in its message
        reply = next(iter(ops.Stream(iter([pb.StreamRequest(request_id=9, encrypt_data=nist_request())]),
                                     timeout=10)))
        assert reply.status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert "retry after" in reply.status.message
        app_ops = pb_grpc.OperationsStub(app)
        for _ in range(10):  # another caller is unaffected
            assert app_ops.EncryptData(nist_request(), timeout=10).cipher_text == NIST_ECB


def test_rotated_server_certificate_serves_new_connections(cluster: Cluster, pki: Pki, tmp_path: Path) -> None:
    # the daemon's own copies of its files, so rotating them leaves the module's daemon alone
    (tmp_path / "tls").mkdir()
    for name in ("server.crt", "server.key"):
        (tmp_path / "tls" / name).write_bytes((pki.dir / name).read_bytes())
    config = secure_config(cluster, pki, tmp_path / "hsmlb.yaml", nodes=("node-a",))
    text = config.read_text().replace(str(pki.dir / "server."), str(tmp_path / "tls" / "server."))
    config.write_text(text)
    daemon = start_secure(config, tmp_path / "daemon.log", pki)
    try:
        new_ca = Authority.create("rotated server CA")
        (tmp_path / "new-ca.crt").write_bytes(new_ca.pem)
        with pki.channel(daemon.address, "app", ca_file=tmp_path / "new-ca.crt") as channel:
            assert _code(lambda: pb_grpc.OperationsStub(channel).EncryptData(nist_request(), timeout=5)) \
                == grpc.StatusCode.UNAVAILABLE  # not yet: the daemon still shows the first certificate
        write_pair(tmp_path / "tls", "server", new_ca.issue("localhost", ips=("127.0.0.1",), server=True))
        with pki.channel(daemon.address, "app", ca_file=tmp_path / "new-ca.crt") as channel:
            assert pb_grpc.OperationsStub(channel).EncryptData(nist_request(), timeout=10).cipher_text == NIST_ECB
        with pki.channel(daemon.address, "app") as channel:  # a new connection trusting only the old CA
            assert _code(lambda: pb_grpc.OperationsStub(channel).EncryptData(nist_request(), timeout=5)) \
                == grpc.StatusCode.UNAVAILABLE
        assert "TLS certificate files changed" in daemon.log_text()
    finally:
        daemon.stop()
