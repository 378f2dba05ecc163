"""Bug hunt: `hsmlb apc-emulator` against hostile or unusual clients, and its shutdown.

A real emulator subprocess on loopback; real boto3 clients where boto3 can say it, and raw
requests signed by botocore's own signer (hsmlb.emulator.testing.sign) or written byte by byte
with http.client where boto3 never would (non-UTF-8 header bytes, UTF-16 bodies, NaN). No mocks.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from hsmlb.emulator.cli import SHUTDOWN_S
from hsmlb.emulator.sigv4 import SIGNING_NAME
from hsmlb.emulator.testing import EmulatorProcess, post, sign, start_emulator

ROOT = Path(__file__).resolve().parents[1]
KEYS_FILE = ROOT / "hsmlb" / "dev" / "dev-keys.yaml"
ACCESS, SECRET, REGION = "AKIDHUNTEMULATOR", "hunt-emulator-secret", "us-east-1"
NO_RETRY = Config(retries={"total_max_attempts": 1}, read_timeout=30, connect_timeout=5)
MAC_PATH = "/mac/generate"
MAC_BODY = {"KeyIdentifier": "alias/cmac-aes128", "MessageData": "00", "GenerationAttributes": {"Algorithm": "CMAC"}}
CONTROL_TARGET = "PaymentCryptographyControlPlane."


def _start(*extra: str) -> EmulatorProcess:
    return start_emulator(KEYS_FILE, "--fault-injection", "--access-key-id", ACCESS, "--secret-access-key", SECRET,
                          *extra)


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorProcess]:
    running = _start()
    yield running
    assert running.stop() == 0


def _client(emulator: EmulatorProcess, service: str = "payment-cryptography-data") -> Any:
    return boto3.client(service, endpoint_url=emulator.url, region_name=REGION, aws_access_key_id=ACCESS,
                        aws_secret_access_key=SECRET, config=NO_RETRY)


def _send(emulator: EmulatorProcess, path: str, body: bytes, headers: dict[str, str | bytes],
          timeout_s: float = 10) -> tuple[int, dict[str, str], bytes]:
    """One request written by http.client, which passes header bytes through as given."""
    host, port = emulator.url.split("://", 1)[1].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
    try:
        conn.putrequest("POST", path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers.items():
            if name.lower() != "content-length":
                conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def _signed(emulator: EmulatorProcess, body: bytes, extra: dict[str, str] | None = None,
            path: str = MAC_PATH) -> dict[str, str]:
    return sign(emulator.url + path, body, {"Content-Type": "application/json", **(extra or {})}, ACCESS, SECRET,
                REGION)


def _stats(emulator: EmulatorProcess) -> dict[str, Any]:
    with urllib.request.urlopen(emulator.url + "/_emulator/stats", timeout=10) as response:
        return dict(json.loads(response.read()))


# -- SigV4 --

def test_content_sha256_header_cannot_stand_in_for_the_body(emulator: EmulatorProcess) -> None:
    """APC hashes the body it received; a signed X-Amz-Content-SHA256 must not vouch for another body."""
    signed_body = json.dumps(MAC_BODY).encode()
    headers = _signed(emulator, signed_body, {"X-Amz-Content-SHA256": hashlib.sha256(signed_body).hexdigest()})
    assert post(emulator.url + MAC_PATH, signed_body, headers)[0] == 200  # the honest request still passes
    swapped = json.dumps({**MAC_BODY, "MessageData": "01"}).encode()
    status, answer_headers, answer = post(emulator.url + MAC_PATH, swapped, headers)
    assert status == 403 and answer_headers["x-amzn-ErrorType"] == "InvalidSignatureException", answer
    unsigned = _signed(emulator, signed_body, {"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    status, answer_headers, _ = post(emulator.url + MAC_PATH, swapped, unsigned)
    assert status == 403 and answer_headers["x-amzn-ErrorType"] == "InvalidSignatureException"


def test_non_utf8_header_bytes_are_refused_not_a_server_fault(emulator: EmulatorProcess) -> None:
    body = json.dumps(MAC_BODY).encode()
    headers: dict[str, str | bytes] = dict(_signed(emulator, body))
    headers["Content-Type"] = b"application/json\xff"  # a signed header, bytes no UTF-8 decoder accepts
    status, answer_headers, _ = _send(emulator, MAC_PATH, body, headers)
    assert status == 403 and answer_headers["x-amzn-errortype"] == "InvalidSignatureException"
    headers = dict(_signed(emulator, body))
    headers["Authorization"] = str(headers["Authorization"]).encode().replace(
        f"Credential={ACCESS}/".encode(), f"Credential={ACCESS}".encode() + b"\xfe/", 1)
    status, answer_headers, _ = _send(emulator, MAC_PATH, body, headers)
    assert status == 403 and answer_headers["x-amzn-errortype"] == "UnrecognizedClientException"


def test_x_amz_date_must_be_ascii_digits(emulator: EmulatorProcess) -> None:
    """A self-consistent signature over a fullwidth-digit date is still not an ISO 8601 basic date."""
    body = json.dumps(MAC_BODY).encode()
    url = emulator.url + MAC_PATH
    request = AWSRequest("POST", url, data=body, headers={"Content-Type": "application/json"})
    request.headers["Host"] = url.split("://", 1)[1].split("/", 1)[0]
    fullwidth = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ").translate(
        {ord(d): chr(0xFF10 + int(d)) for d in "0123456789"})
    signer = SigV4Auth(Credentials(ACCESS, SECRET), SIGNING_NAME, REGION)
    request.context["timestamp"] = request.headers["X-Amz-Date"] = fullwidth
    signature = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    signed = signer.signed_headers(signer.headers_to_sign(request))
    request.headers["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={signer.scope(request)}, "
                                        f"SignedHeaders={signed}, Signature={signature}")
    headers = {k: v.encode() if isinstance(v, str) else v for k, v in request.headers.items()}
    status, answer_headers, _ = _send(emulator, MAC_PATH, body, headers)
    assert status == 403 and answer_headers["x-amzn-errortype"] == "IncompleteSignatureException"


# -- bodies --

def test_body_must_be_utf8_json_without_nan(emulator: EmulatorProcess) -> None:
    utf16 = json.dumps(MAC_BODY).encode("utf-16")
    status, headers, _ = post(emulator.url + MAC_PATH, utf16, _signed(emulator, utf16))
    assert status == 400 and headers["x-amzn-ErrorType"] == "SerializationException"
    nan = json.dumps({**MAC_BODY, "MacLength": float("nan")}).encode()
    assert b"NaN" in nan
    status, headers, _ = post(emulator.url + MAC_PATH, nan, _signed(emulator, nan))
    assert status == 400 and headers["x-amzn-ErrorType"] == "SerializationException"
    plain = json.dumps(MAC_BODY).encode()
    assert post(emulator.url + MAC_PATH, plain, _signed(emulator, plain))[0] == 200


def test_client_gone_mid_body_is_not_counted_as_an_emulator_fault(emulator: EmulatorProcess) -> None:
    body = json.dumps(MAC_BODY).encode()
    headers = _signed(emulator, body)
    host, port = emulator.url.split("://", 1)[1].rsplit(":", 1)
    before = _stats(emulator)["operations"].get("GenerateMac", {})
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items() if k.lower() != "content-length")
        conn.sendall(f"POST {MAC_PATH} HTTP/1.1\r\n{head}Content-Length: {len(body) + 64}\r\n\r\n".encode() + body)
    outcomes: dict[str, int] = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the emulator notices the close on its own schedule
        outcomes = _stats(emulator)["operations"].get("GenerateMac", {})
        if sum(outcomes.values()) > sum(before.values()):
            break
        time.sleep(0.02)
    assert outcomes.get("RequestAbortedException", 0) == before.get("RequestAbortedException", 0) + 1, outcomes
    assert outcomes.get("InternalServerException", 0) == before.get("InternalServerException", 0)
    assert not any("GenerateMac failed" in line for line in emulator.log)


# -- control plane --

@pytest.mark.parametrize("token", ["\u00b2", "\u0661", "9" * 5000],
                         ids=["superscript-two", "arabic-indic-one", "5000-digits"])
def test_odd_next_token_is_a_validation_error(emulator: EmulatorProcess, token: str) -> None:
    control = _client(emulator, "payment-cryptography")
    with pytest.raises(ClientError) as caught:
        control.list_aliases(NextToken=token)
    assert isinstance(caught.value, control.exceptions.ValidationException), caught.value.response["Error"]
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


# -- fault switches --

def test_fault_hook_refuses_numbers_too_big_for_a_float(emulator: EmulatorProcess) -> None:
    before = _stats(emulator)["faults"]
    status, _, answer = post(emulator.url + "/_emulator/faults", b'{"latency_ms": 1' + b"0" * 400 + b"}",
                             {"Content-Type": "application/json"})
    assert status == 400 and "latency_ms" in answer["message"]
    assert _stats(emulator)["faults"] == before


# -- shutdown --

def _in_flight_call(emulator: EmulatorProcess) -> tuple[threading.Thread, dict[str, Any]]:
    """A GenerateMac on a thread, returned once the emulator has started its injected latency."""
    outcome: dict[str, Any] = {}
    apc = _client(emulator)

    def call() -> None:
        try:
            outcome["mac"] = apc.generate_mac(**MAC_BODY)["Mac"]
        except Exception as exc:  # the test asserts on which
            outcome["error"] = type(exc).__name__

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not _stats(emulator)["injected"].get("latency") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _stats(emulator)["injected"].get("latency"), "the request never reached the emulator"
    return thread, outcome


def test_sigterm_lets_a_short_in_flight_request_finish() -> None:
    running = _start("--latency-ms", "800")
    try:
        thread, outcome = _in_flight_call(running)
        running.proc.send_signal(signal.SIGTERM)
        thread.join(15)
        assert running.proc.wait(15) == 0
        assert outcome.get("mac"), outcome
    finally:
        running.stop()


def test_sigterm_drain_is_bounded_by_shutdown_s() -> None:
    running = _start("--latency-ms", "30000")
    try:
        thread, outcome = _in_flight_call(running)
        signalled = time.monotonic()
        running.proc.send_signal(signal.SIGTERM)
        assert running.proc.wait(SHUTDOWN_S * 3) == 0
        assert time.monotonic() - signalled < SHUTDOWN_S + 2.5  # generous; aiohttp alone took 2 x SHUTDOWN_S
        thread.join(15)
        assert "mac" not in outcome and outcome.get("error"), outcome
    finally:
        running.stop()


def test_second_sigterm_stops_without_waiting_for_the_drain() -> None:
    running = _start("--latency-ms", "30000")
    try:
        thread, _ = _in_flight_call(running)
        running.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        signalled = time.monotonic()
        running.proc.send_signal(signal.SIGTERM)
        assert running.proc.wait(SHUTDOWN_S * 3) == 0
        assert time.monotonic() - signalled < SHUTDOWN_S / 2
        thread.join(15)
    finally:
        running.stop()
