"""The SDK over mutual TLS to a real daemon that requires client certificates (sec's test PKI): both clients
take PEM file paths or bytes, the daemon's authorization reaches them as typed errors, and a client without
a certificate is refused."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import hsmlb_client
import pytest

from tests._daemon_helpers import NIST_ECB, NIST_KEY, NIST_PLAIN
from tests._tls_helpers import Pki, make_pki, secure_config, start_secure
from tests.conftest import Cluster, DaemonProcess

ECB = {"symmetric": {"mode": "ECB"}}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("sdk-pki"))


@pytest.fixture(scope="module")
def secure(cluster: Cluster, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    logs = tmp_path_factory.mktemp("sdk-secure")
    daemon = start_secure(secure_config(cluster, pki, logs / "hsmlb.yaml"), logs / "daemon.log", pki)
    yield daemon
    daemon.stop()


def _tls(pki: Pki, name: str) -> dict[str, object]:
    cert, key = pki.client(name)
    return {"root_certificates": str(pki.ca_file), "certificate_chain": cert, "private_key": key.read_bytes(),
            "server_name": "localhost"}


async def test_async_client_over_mutual_tls(secure: DaemonProcess, pki: Pki) -> None:
    async with hsmlb_client.AsyncClient(secure.address, **_tls(pki, "app")) as client:  # type: ignore[arg-type]
        reply = await client.encrypt_data(key_identifier=NIST_KEY, plain_text=NIST_PLAIN, encryption_attributes=ECB)
        assert reply.cipher_text == NIST_ECB
        with pytest.raises(hsmlb_client.PermissionDenied) as refused:  # app may not use the PIN keys
            await client.encrypt_data(key_identifier="alias/pek-tdes", plain_text="00" * 8, encryption_attributes=ECB)
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_sync_client_over_mutual_tls(secure: DaemonProcess, pki: Pki) -> None:
    with hsmlb_client.Client(secure.address, **_tls(pki, "app")) as client:  # type: ignore[arg-type]
        reply = client.encrypt_data(key_identifier=NIST_KEY, plain_text=NIST_PLAIN, encryption_attributes=ECB)
        assert reply.cipher_text == NIST_ECB


async def test_a_client_without_a_certificate_is_refused(secure: DaemonProcess, pki: Pki) -> None:
    async with hsmlb_client.AsyncClient(secure.address, root_certificates=Path(pki.ca_file).read_bytes(),
                                        server_name="localhost", wait_for_ready=False) as client:
        async with asyncio.timeout(30):
            with pytest.raises(hsmlb_client.HsmlbError) as refused:
                await client.encrypt_data(key_identifier=NIST_KEY, plain_text=NIST_PLAIN,
                                          encryption_attributes=ECB, timeout=5)
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE


def test_half_a_client_identity_is_a_configuration_error(pki: Pki) -> None:
    cert, _ = pki.client("app")
    with pytest.raises(ValueError, match="certificate_chain and private_key"):
        hsmlb_client.Client("127.0.0.1:1", root_certificates=pki.ca_file, certificate_chain=cert)
