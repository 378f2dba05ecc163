"""SigV4 verification of incoming requests, using botocore's own signer to rebuild the signature.

Why: the daemon's APC backend must be proven to sign exactly as real AWS expects (service name,
region scope, double-encoded alias paths, signed payload). Recomputing with botocore's SigV4Auth
over the request as received, with the request's own X-Amz-Date, gives AWS's answer without
re-implementing the canonicalisation here.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from hashlib import sha256
from typing import Any
from urllib.parse import urlsplit

from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth
from botocore.credentials import Credentials

from hsmlb.emulator.errors import ApiError

SIGNING_NAME = "payment-cryptography"
MAX_SKEW = timedelta(minutes=5)
_AUTH = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=(?P<credential>[^,\s]+),\s*SignedHeaders=(?P<signed>[^,\s]+),"
    r"\s*Signature=(?P<signature>[0-9a-f]{64})\s*")
_MAX_SIGNED_HEADERS = 64
_AMZ_DATE = re.compile(r"[0-9]{8}T[0-9]{6}Z")  # SIGV4_TIMESTAMP's shape; ASCII digits only (\d takes any)


@dataclass(slots=True)
class IncomingRequest:
    """The duck-typed request botocore's SigV4Auth reads (method, url, headers, body, context)."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes
    params: dict[str, str] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)


class _SignedHeaders(dict[str, list[str]]):
    """The header map SigV4Auth reads (iteration plus get_all), without email.message's cost."""

    def get_all(self, name: str) -> list[str]:
        return self[name]


class _ReceivedSigner(SigV4Auth):
    """SigV4Auth that signs the headers the client said it signed, not its own selection."""

    def __init__(self, credentials: Credentials, region: str, signed: list[str]) -> None:
        super().__init__(credentials, SIGNING_NAME, region)
        self._signed = signed

    def headers_to_sign(self, request: Any) -> _SignedHeaders:
        return _SignedHeaders((name, request.headers.getall(name, [])) for name in self._signed)

    def canonical_request(self, request: Any) -> str:
        """botocore's canonical request, but hashing the body as received.

        botocore takes a present X-Amz-Content-SHA256 header as the payload hash (S3's rule); APC
        hashes the bytes it got, so a signed header must not vouch for a body it was not computed over.
        """
        headers = self.headers_to_sign(request)
        return "\n".join((request.method.upper(), self._normalize_url_path(urlsplit(request.url).path),
                          self.canonical_query_string(request), self.canonical_headers(headers) + "\n",
                          self.signed_headers(headers), sha256(request.body).hexdigest()))


def _parse_amz_date(value: str) -> datetime:
    """X-Amz-Date (SIGV4_TIMESTAMP, e.g. 20240101T120000Z) without strptime's per-call overhead."""
    if not _AMZ_DATE.fullmatch(value):
        raise ValueError("not an X-Amz-Date")
    return datetime(int(value[0:4]), int(value[4:6]), int(value[6:8]), int(value[9:11]), int(value[11:13]),
                    int(value[13:15]), tzinfo=UTC)


_MISMATCH = ("The request signature we calculated does not match the signature you provided. Check your AWS "
             "Secret Access Key and signing method. Consult the service documentation for details.")


def _denied(code: str, message: str) -> ApiError:
    return ApiError(code, message)


class SigV4Verifier:
    """Checks Authorization against one configured key pair and region."""

    def __init__(self, access_key_id: str, secret_access_key: str, region: str) -> None:
        if not access_key_id or not secret_access_key:
            raise ValueError("both an access key id and a secret access key are required")
        self.access_key_id = access_key_id
        self.region = region
        self._credentials = Credentials(access_key_id, secret_access_key)

    def verify(self, request: IncomingRequest, now: datetime | None = None) -> None:
        """Raise ApiError (403) unless the request is signed by our credentials, in scope and on time."""
        header = request.headers.get("Authorization")
        if not header:
            raise _denied("MissingAuthenticationTokenException", "Missing Authentication Token")
        match = _AUTH.fullmatch(header.strip())
        if match is None:
            raise _denied("IncompleteSignatureException",
                          "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' "
                          "with the AWS4-HMAC-SHA256 algorithm.")
        parts = match["credential"].split("/")
        if len(parts) != 5 or parts[4] != "aws4_request":
            raise _denied("IncompleteSignatureException", "Credential must have the form "
                          "<access key>/<date>/<region>/<service>/aws4_request.")
        access_key, scope_date, region, service, _ = parts
        if not hmac.compare_digest(access_key.encode(errors="surrogateescape"), self.access_key_id.encode()):
            raise _denied("UnrecognizedClientException", "The security token included in the request is invalid.")
        amz_date = request.headers.get("X-Amz-Date", "")
        try:
            when = _parse_amz_date(amz_date)
        except ValueError:
            raise _denied("IncompleteSignatureException",
                          "Authorization requires a valid X-Amz-Date header.") from None
        self._check_clock(amz_date, when, now or datetime.now(UTC))
        if scope_date != amz_date[:8]:
            raise _denied("InvalidSignatureException", "Credential scope date does not match X-Amz-Date.")
        if region != self.region:
            raise _denied("InvalidSignatureException",
                          f"Credential should be scoped to a valid region, not '{region[:32]}'.")
        if service != SIGNING_NAME:
            raise _denied("InvalidSignatureException",
                          f"Credential should be scoped to correct service: '{SIGNING_NAME}'.")
        signed = match["signed"].split(";")
        if len(signed) > _MAX_SIGNED_HEADERS or "host" not in signed or signed != sorted(signed):
            raise _denied("IncompleteSignatureException",
                          "SignedHeaders must be sorted, lower case and include 'host'.")
        request.context["timestamp"] = amz_date
        signer = _ReceivedSigner(self._credentials, region, signed)
        try:
            string_to_sign = signer.string_to_sign(request, signer.canonical_request(request))
            expected = signer.signature(string_to_sign, request)
        except UnicodeEncodeError:  # header bytes that are not UTF-8 (aiohttp keeps them as surrogates)
            expected = ""
        if not hmac.compare_digest(expected.encode(), match["signature"].encode()):
            raise _denied("InvalidSignatureException", _MISMATCH)

    @staticmethod
    def _check_clock(amz_date: str, when: datetime, now: datetime) -> None:
        fmt = SIGV4_TIMESTAMP
        if when < now - MAX_SKEW:
            raise _denied("InvalidSignatureException",
                          f"Signature expired: {amz_date} is now earlier than "
                          f"{(now - MAX_SKEW).strftime(fmt)} ({now.strftime(fmt)} - 5 min.)")
        if when > now + MAX_SKEW:
            raise _denied("InvalidSignatureException",
                          f"Signature not yet current: {amz_date} is still later than "
                          f"{(now + MAX_SKEW).strftime(fmt)} ({now.strftime(fmt)} + 5 min.)")
