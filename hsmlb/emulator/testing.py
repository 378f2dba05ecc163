"""Helpers for tests and benchmarks: run an emulator subprocess, send boto3-free signed requests.

Why here: the suite, the load tools and ad-hoc CPU measurements all need the same two things,
a started emulator whose port is read from its one start-up line (hsmlb.dev.regions.spawn_emulator,
the one starter, does that), and raw requests (unknown members, bad timestamps, replayed
signatures) that boto3's serializer would never produce.
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from hsmlb.dev.regions import EMULATOR_MODULE, Emulator, spawn_emulator
from hsmlb.emulator.sigv4 import SIGNING_NAME


class EmulatorProcess(Emulator):
    """A started emulator (hsmlb.dev.regions.Emulator) under the names the emulator tests use."""

    @property
    def url(self) -> str:
        return self.endpoint_url

    @property
    def proc(self) -> subprocess.Popen[str]:
        return self.process

    def stop(self, timeout_s: float = 15) -> int | None:
        """SIGTERM, then kill if it does not exit in time; returns the exit status."""
        return super().stop(timeout_s)


def start_emulator(keys_file: str | Path, *extra: str, module: tuple[str, ...] = EMULATOR_MODULE,
                   env: dict[str, str] | None = None, timeout_s: float = 30) -> EmulatorProcess:
    """Start `python -m <module> --port 0 --keys KEYS EXTRA...` and wait (bounded) for its start-up line."""
    started = spawn_emulator("apc-emulator", keys_file, *extra, module=module, env=env, timeout_s=timeout_s)
    return EmulatorProcess(**vars(started))


def sign(url: str, body: bytes, headers: dict[str, str], access_key_id: str, secret_access_key: str,
         region: str, when: datetime | None = None) -> dict[str, str]:
    """Headers of a POST signed with botocore's SigV4Auth as of `when` (default now)."""
    request = AWSRequest("POST", url, data=body, headers=dict(headers))
    request.headers["Host"] = url.split("://", 1)[1].split("/", 1)[0]
    signer = SigV4Auth(Credentials(access_key_id, secret_access_key), SIGNING_NAME, region)
    request.context["timestamp"] = (when or datetime.now(UTC)).strftime(SIGV4_TIMESTAMP)
    request.headers["X-Amz-Date"] = request.context["timestamp"]
    signed = signer.signed_headers(signer.headers_to_sign(request))
    signature = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    request.headers["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={signer.scope(request)}, "
                                        f"SignedHeaders={signed}, Signature={signature}")
    return dict(request.headers.items())


def post(url: str, body: bytes, headers: dict[str, str], timeout_s: float = 10) -> tuple[int, dict[str, str], dict]:
    """POST and return (status, headers, decoded JSON body), errors included."""
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, dict(response.headers), json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"{}")
