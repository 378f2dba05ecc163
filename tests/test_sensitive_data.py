"""PINs, key material and request data never appear in error messages, node details or the daemon's log.

A daemon of this module's own, logging at DEBUG, gets requests that carry Luhn-valid PANs and fail in
every layer (codec, router, token, node faults, undecodable bytes, the Stream). Then its error
messages, its Admin node details and its whole log are searched for the PANs, the PINs and the keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from hsmlb.keys import load_keys
from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests.conftest import Cluster, DaemonProcess, debug_logging, start_daemon, sym

# Card-network test PANs (Luhn-valid, not real accounts).
PANS = ("4111111111111111", "5500005555555559", "4012888888881881")
NODES = ("node-a", "node-b", "node-c", "node-d")
AES = "alias/zek-aes128"


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


@dataclass
class Traffic:
    errors: list[str] = field(default_factory=list)  # every error message the daemon returned
    node_details: list[str] = field(default_factory=list)
    successes: int = 0


def _bad_requests(pan: str) -> list[tuple[str, Any]]:
    """(method, request) pairs carrying `pan` that each fail, in a different layer."""
    def mac(alias: str = "alias/cmac-aes128", data: str = pan, length: int = 0) -> pb.GenerateMacRequest:
        return pb.GenerateMacRequest(key_identifier=alias, message_data=data, mac_length=length,
                                     generation_attributes=pb.MacAttributes(algorithm=pb.CMAC))

    def enc(data: str, alias: str = AES, mode: int = pb.ECB, iv: str = "") -> pb.EncryptDataRequest:
        return pb.EncryptDataRequest(key_identifier=alias, plain_text=data, encryption_attributes=sym(mode, iv))

    return [
        ("EncryptData", enc(pan)),  # 8 bytes for AES: refused by the token (DataLenRange)
        ("EncryptData", enc("PAN=" + pan)),  # not hex
        ("EncryptData", enc(pan + "F")),  # odd length
        ("EncryptData", enc(pan[:8] + " " + pan[8:])),  # spaces
        ("EncryptData", enc(pan + "00" * 8, alias="alias/no-such-key")),  # unknown key
        ("EncryptData", enc(pan + "00" * 8, alias="alias/cmac-aes128")),  # usage
        ("EncryptData", enc(pan * 2, mode=pb.OFB)),  # unsupported mode
        ("EncryptData", enc(pan * 2, iv=pan)),  # IV with ECB
        ("EncryptData", enc(pan * 2, mode=pb.CBC, iv=pan)),  # 8-byte IV for AES: refused by the token
        ("DecryptData", pb.DecryptDataRequest(key_identifier=AES, cipher_text=pan * 3, decryption_attributes=sym(
            pb.ECB))),  # 24 bytes for AES
        ("GenerateMac", mac(length=99)),
        ("GenerateMac", mac(alias=AES)),
        ("GenerateMac", mac(data=pan + "Z")),
        ("VerifyMac", pb.VerifyMacRequest(key_identifier="alias/cmac-aes128", message_data=pan, mac=pan + "X",
                                          verification_attributes=pb.MacAttributes(algorithm=pb.CMAC))),
        ("Sign", pb.SignRequest(key_identifier="alias/sign-rsa", message=pan, signing_algorithm=pb.ECDSA_SHA_256)),
        ("Sign", pb.SignRequest(key_identifier="alias/sign-rsa", message=pan)),  # no algorithm
        ("Sign", pb.SignRequest(key_identifier="alias/cmac-aes128", message=pan,  # secret key: a node fault today
                                signing_algorithm=pb.RSASSA_PKCS1_V1_5_SHA_256)),
        ("Verify", pb.VerifyRequest(key_identifier="alias/sign-ec", message=pan, signature=pan + "G",
                                    signing_algorithm=pb.ECDSA_SHA_256)),
    ]


STREAM_FIELDS = {"EncryptData": "encrypt_data", "DecryptData": "decrypt_data", "GenerateMac": "generate_mac",
                 "VerifyMac": "verify_mac", "Sign": "sign", "Verify": "verify"}


def _send(ops: pb_grpc.OperationsStub, traffic: Traffic, method: str, request: Any) -> None:
    try:
        getattr(ops, method)(request, timeout=30)
        traffic.successes += 1
    except grpc.RpcError as err:
        traffic.errors.append(f"{err.code()} {err.details()} {err.debug_error_string()}")


def _drive(daemon: DaemonProcess) -> Traffic:
    traffic = Traffic()
    with daemon.channel() as channel:
        ops, admin = pb_grpc.OperationsStub(channel), pb_grpc.AdminStub(channel)
        for pan in PANS:
            for method, request in _bad_requests(pan):
                _send(ops, traffic, method, request)
            # the same bad requests over the Stream, with a good one carrying the PAN too
            stream = [pb.StreamRequest(request_id=i, **{STREAM_FIELDS[m]: r})
                      for i, (m, r) in enumerate(_bad_requests(pan), start=1)]
            stream.append(pb.StreamRequest(request_id=999, encrypt_data=pb.EncryptDataRequest(
                key_identifier=AES, plain_text=pan * 2, encryption_attributes=sym(pb.ECB))))
            for reply in ops.Stream(iter(stream), timeout=60):
                if reply.WhichOneof("result") == "status":
                    traffic.errors.append(reply.status.message)
                else:
                    traffic.successes += 1
            # bytes the server cannot decode (invalid UTF-8 after the PAN)
            raw = pb.EncryptDataRequest(key_identifier=AES, plain_text=pan * 2).SerializeToString()
            try:
                channel.unary_unary("/hsmlb.v1.Operations/EncryptData")(raw + b"\x12\x12" + pan.encode() + b"\xff\xfe",
                                                                         timeout=10)
            except grpc.RpcError as err:
                traffic.errors.append(f"{err.code()} {err.details()} {err.debug_error_string()}")
        # node faults: every token fails every op for a moment, while requests carry a PAN
        for node in NODES:
            admin.InjectFault(pb.InjectFaultRequest(node=node, fault="error_rate", value=1.0), timeout=10)
        for pan in PANS:
            _send(ops, traffic, "EncryptData", pb.EncryptDataRequest(
                key_identifier=AES, plain_text=pan * 2, encryption_attributes=sym(pb.ECB)))
        traffic.node_details = [n.detail for n in admin.ListNodes(pb.ListNodesRequest(), timeout=10).nodes]
        # Not reset: at error_rate 1.0 the worker fails the reset request too; this daemon serves nothing more.
    return traffic


@pytest.fixture(scope="module")
def debug_daemon(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with debug_logging():
        proc = start_daemon(cluster.config, tmp_path_factory.mktemp("sensitive") / "daemon.log")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def traffic(debug_daemon: DaemonProcess) -> Traffic:
    return _drive(debug_daemon)


@pytest.fixture(scope="module")
def secrets(cluster: Cluster) -> dict[str, str]:
    """name -> secret text that must never be shown: PINs, symmetric material, private-key DER."""
    found = {name: (cluster.state_dir / name).read_text().strip() for name in ("user.pin", "so.pin")}
    for entry in load_keys(cluster.keys_file):
        if entry.material_hex:
            found[entry.alias] = entry.material_hex.upper()
    for der in sorted((cluster.state_dir / "generated").glob("*.der")):
        found[der.name] = der.read_bytes().hex().upper()
    return found


def _leaks(text: str, secrets: dict[str, str]) -> list[str]:
    upper = text.upper()
    return [name for name, value in secrets.items() if value.upper() in upper]


def test_pans_are_luhn_valid() -> None:
    assert all(luhn_valid(pan) for pan in PANS)
    assert not luhn_valid("4111111111111112")


def test_traffic_reached_every_layer(traffic: Traffic) -> None:
    per_pan = len(_bad_requests(PANS[0]))
    assert len(traffic.errors) >= len(PANS) * (2 * per_pan + 1) + len(PANS)
    assert traffic.successes == len(PANS)  # only the one good stream message per PAN
    joined = "\n".join(traffic.errors)
    for evidence in ("hex", "usage", "not supported", "data length", "no node holds", "InjectedDeviceError"):
        assert evidence in joined


@pytest.mark.parametrize("pan", PANS)
def test_error_messages_carry_no_pan(traffic: Traffic, pan: str) -> None:
    assert [e for e in traffic.errors if pan in e] == []
    assert [e for e in traffic.errors if pan[:12] in e or pan[-10:] in e] == []  # nor a long part of it


def test_error_messages_carry_no_pin_or_key(traffic: Traffic, secrets: dict[str, str]) -> None:
    assert _leaks("\n".join(traffic.errors), secrets) == []


def test_node_details_carry_no_request_data(traffic: Traffic, secrets: dict[str, str]) -> None:
    text = "\n".join(traffic.node_details)
    assert any(traffic.node_details)  # the faults left a reason to search
    assert [pan for pan in PANS if pan in text] == []
    assert _leaks(text, secrets) == []


def test_daemon_log_has_no_pin_key_or_pan(traffic: Traffic, debug_daemon: DaemonProcess,
                                         secrets: dict[str, str]) -> None:
    debug_daemon.stop()  # flush everything, shutdown included
    log = debug_daemon.log_text()
    assert "fault injection: error_rate" in log  # the log did record this traffic
    assert "refused a request that is not a valid hsmlb.v1.EncryptDataRequest" in log  # and the undecodable ones
    assert [pan for pan in PANS if pan in log] == []
    assert _leaks(log, secrets) == []


def test_config_holds_no_pin_or_key(cluster: Cluster, secrets: dict[str, str]) -> None:
    text = Path(cluster.config).read_text()
    assert _leaks(text, secrets) == []
    for node in yaml.safe_load(text)["nodes"]:
        assert "pin" not in node and "user_pin" not in node
        assert node["pin_file"]
