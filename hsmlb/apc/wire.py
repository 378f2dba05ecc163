"""APC requests on the wire, client side: rest-json templates, SigV4 signing, error answers.

Why not the boto3 client on the hot path: a boto3 call costs about a millisecond of CPU (event
hooks, parameter validation, endpoint rules, retry handler) for what is one small JSON POST. Here
each operation's method, path template and body members are read once from botocore's own
service model, a request is a string format plus `json.dumps`, and the signature is botocore's
own SigV4 (`Signer`, or `FastSigner`: the same signature with the per-day and per-host work done
once), so the bytes are what botocore would send and the signature is what AWS expects;
tests/test_apc_backend.py checks both against `botocore.serialize` and `SigV4Auth`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any
from urllib.parse import quote, urlsplit

import botocore.session
from aiohttp import ClientResponse
from botocore.auth import EMPTY_SHA256_HASH, SIGV4_TIMESTAMP, SigV4Auth, _host_from_url
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials
from botocore.model import OperationModel, ServiceModel
from botocore.utils import normalize_url_path

from hsmlb.errors import InvalidArgument

DATA_SERVICE = "payment-cryptography-data"
CONTROL_SERVICE = "payment-cryptography"
SIGNING_NAME = "payment-cryptography"
JSON = "application/json"
# Front-door answers meaning "we could not authenticate you": a misconfigured node, not a bad request.
AUTH_FAILURES = frozenset({"InvalidSignatureException", "UnrecognizedClientException", "IncompleteSignatureException",
                           "MissingAuthenticationTokenException", "ExpiredTokenException", "InvalidClientTokenId",
                           "SignatureDoesNotMatch"})
_LABEL = re.compile(r"\{([A-Za-z0-9_]+)(\+?)\}")
_SAFE = "-._~"  # botocore.utils.SAFE_CHARS: what percent_encode leaves alone in a URI label


@cache
def service_model(name: str) -> ServiceModel:
    """botocore's bundled model (loaded once per process; loading costs tens of milliseconds)."""
    return botocore.session.get_session().get_service_model(name)


@dataclass(frozen=True, slots=True)
class RestJsonTemplate:
    """One rest-json operation, precompiled: `/keys/{KeyIdentifier}/encrypt` + its body members."""

    name: str
    method: str
    path_format: str  # requestUri with each label as a named format field
    labels: tuple[tuple[str, str, bool], ...]  # (format field, member, greedy)
    body_members: dict[str, str]  # member -> JSON name
    always_body: bool  # botocore sends `{}` when no body member is set but the shape has some
    uri_members: frozenset[str] = frozenset()
    out_required: tuple[str, ...] = ()  # output members a success answer must carry
    out_strings: frozenset[str] = frozenset()  # top-level output members modelled as strings
    errors: frozenset[str] = frozenset()  # the error shapes the model lists for this operation

    @classmethod
    def compile(cls, model: OperationModel) -> RestJsonTemplate:
        http = model.http
        uri = http["requestUri"]
        if "?" in uri:
            raise ValueError(f"{model.name}: query strings in requestUri are not supported")
        shape = model.input_shape
        members = shape.members if shape is not None else {}
        by_wire: dict[str, str] = {}
        body: dict[str, str] = {}
        for name, member in members.items():
            location = member.serialization.get("location")
            if location == "uri":
                by_wire[member.serialization.get("name", name)] = name
            elif location is None:
                body[name] = member.serialization.get("name", name)
            else:  # headers or query strings: none in the APC data plane today
                raise ValueError(f"{model.name}: member {name} in {location} is not supported")
        labels = []
        for match in _LABEL.finditer(uri):
            labels.append((match[1], by_wire.get(match[1], match[1]), bool(match[2])))
        path_format = _LABEL.sub(lambda m: "{" + m[1] + "}", uri)
        output = model.output_shape
        out_members = output.members if output is not None else {}
        return cls(model.name, http.get("method", "POST"), path_format, tuple(labels), body, bool(body),
                   frozenset(by_wire.values()),
                   tuple(output.required_members) if output is not None else (),
                   frozenset(name for name, member in out_members.items() if member.type_name == "string"),
                   frozenset(error.name for error in model.error_shapes))

    def bad_answer(self, answer: Any) -> str | None:
        """The first way a 2xx body misses the modelled output (a member name, never a value), else None.

        Why: a proxy or a broken front door may answer 200 with `{}`, `[]` or the wrong types; that is
        the node's fault, found here, not an INTERNAL error in the response encoder later."""
        if not isinstance(answer, dict):
            return "a JSON object"
        for name in self.out_required:
            if answer.get(name) is None:
                return name
        for name in self.out_strings:
            value = answer.get(name)
            if value is not None and not isinstance(value, str):
                return name
        return None

    def render(self, params: dict[str, Any]) -> tuple[str, bytes]:
        """(path, body), byte for byte what botocore's rest-json serializer produces (json.dumps with
        its default separators, members in the caller's order)."""
        values = {}
        for label, member, greedy in self.labels:
            value = params.get(member)
            if value is None:
                raise InvalidArgument(f"{member}: required")
            values[label] = _encode_label(str(value), greedy)
        payload = {}
        body_members = self.body_members
        for name, value in params.items():
            wire = body_members.get(name)
            if wire is not None:
                if value is not None:
                    payload[wire] = value
            elif name not in self.uri_members:
                raise InvalidArgument(f"{name}: not a member of {self.name}")
        body = json.dumps(payload).encode() if payload or self.always_body else b""
        return self.path_format.format(**values), body


_LABELS: dict[tuple[str, bool], str] = {}
_LABELS_MAX = 4096


def _encode_label(value: str, greedy: bool) -> str:
    """botocore's percent_encode of a URI label, remembered: a region has a bounded set of key ARNs."""
    encoded = _LABELS.get((value, greedy))
    if encoded is None:
        if len(_LABELS) >= _LABELS_MAX:
            _LABELS.clear()
        encoded = _LABELS[(value, greedy)] = quote(value.encode(), safe="/~" if greedy else _SAFE)
    return encoded


@cache
def verification_reasons() -> frozenset[str]:
    """VerificationFailedReason's enum in the model: the only reasons a region's answer may pass on."""
    return frozenset(service_model(DATA_SERVICE).shape_for("VerificationFailedReason").enum)


def compile_data_plane() -> dict[str, RestJsonTemplate]:
    model = service_model(DATA_SERVICE)
    return {name: RestJsonTemplate.compile(model.operation_model(name)) for name in model.operation_names}


@dataclass(frozen=True, slots=True)
class Json10Template:
    """The control plane's awsJson1_0 shape: POST / with X-Amz-Target and the whole input as JSON."""

    target_prefix: str
    content_type: str

    @classmethod
    def for_control_plane(cls) -> Json10Template:
        meta = service_model(CONTROL_SERVICE).metadata
        return cls(meta["targetPrefix"], f"application/x-amz-json-{meta.get('jsonVersion', '1.0')}")

    def render(self, operation: str, params: dict[str, Any]) -> tuple[dict[str, str], bytes]:
        headers = {"X-Amz-Target": f"{self.target_prefix}.{operation}", "Content-Type": self.content_type}
        return headers, json.dumps(params).encode()


class Signer:
    """SigV4 with botocore's own `SigV4Auth` on an `AWSRequest`: the reference, and what the
    control-plane requests (probes, warm-up without a canary key) use. ~100 us a request."""

    def __init__(self, credentials: ReadOnlyCredentials, region: str, service: str = SIGNING_NAME) -> None:
        self.region = region
        self.service = service
        self._auth = SigV4Auth(credentials, service, region)

    def update(self, credentials: ReadOnlyCredentials) -> None:
        self._auth = SigV4Auth(credentials, self.service, self.region)

    def sign(self, method: str, url: str, headers: dict[str, str], body: bytes) -> dict[str, str]:
        """Headers to send: `headers` plus X-Amz-Date, Authorization (and X-Amz-Security-Token)."""
        request = AWSRequest(method=method, url=url, data=body, headers=headers)
        self._auth.add_auth(request)
        return dict(request.headers.items())


class FastSigner:
    """The same SigV4 signature as `Signer`, for the hot path: ~10 us instead of ~100 us.

    Why: SigV4Auth rebuilds everything per request through email.message headers and urlsplit;
    for our own requests the host, the signed header set and the day's signing key are known in
    advance. Each step mirrors botocore.auth.SigV4Auth (canonical request, string to sign, key
    derivation) and uses botocore's own helpers for the host and path normalisation; the tests
    check that the Authorization header is byte-identical to SigV4Auth's for every operation.
    """

    _PATH_CACHE_MAX = 4096

    def __init__(self, credentials: ReadOnlyCredentials, region: str, base_url: str,
                 service: str = SIGNING_NAME, wall_clock: Callable[[], float] = time.time) -> None:
        self.region = region
        self.service = service
        self.host = _host_from_url(base_url)
        self.base_path = urlsplit(base_url).path.rstrip("/")  # an endpoint_url may carry a path prefix
        self._wall = wall_clock
        self._second = -1
        self._stamp = ""
        self._paths: dict[str, str] = {}
        self.update(credentials)

    def update(self, credentials: ReadOnlyCredentials) -> None:
        self._credentials = credentials
        self._day = ""
        self._key = b""
        self._plans: dict[tuple[tuple[str, str], ...], tuple[str, str]] = {}  # the token is in them

    def _signing_key(self, day: str) -> bytes:
        if day != self._day:  # derived once a day (and after a credential refresh), as SigV4 allows
            key = f"AWS4{self._credentials.secret_key}".encode()
            for part in (day, self.region, self.service, "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._day, self._key = day, key
        return self._key

    def timestamp(self) -> str:
        second = int(self._wall())
        if second != self._second:
            self._second = second
            self._stamp = time.strftime(SIGV4_TIMESTAMP, time.gmtime(second))
        return self._stamp

    def _canonical_path(self, path: str) -> str:
        canonical = self._paths.get(path)
        if canonical is None:
            if len(self._paths) >= self._PATH_CACHE_MAX:
                self._paths.clear()
            canonical = self._paths[path] = quote(normalize_url_path(path), safe="/~")
        return canonical

    def _plan(self, headers: dict[str, str]) -> tuple[str, str]:
        """(canonical header lines with NUL where the stamp goes, signed header names) for a header set:
        our requests use one or two fixed sets, so the lower-casing and sorting is done once per set."""
        key = tuple(headers.items())
        plan = self._plans.get(key)
        if plan is None:
            pairs = [(name.lower(), " ".join(value.split())) for name, value in headers.items()]
            pairs += [("host", self.host), ("x-amz-date", "\0")]
            token = self._credentials.token
            if token:
                pairs.append(("x-amz-security-token", " ".join(token.split())))
            pairs.sort()
            if len(self._plans) >= 64:
                self._plans.clear()
            plan = self._plans[key] = ("\n".join(f"{name}:{value}" for name, value in pairs) + "\n",
                                       ";".join(name for name, _ in pairs))
        return plan

    def sign(self, method: str, path: str, headers: dict[str, str], body: bytes,
             timestamp: str | None = None) -> dict[str, str]:
        """Headers to send for `method base_url+path`: `headers` plus X-Amz-Date, Authorization
        (and X-Amz-Security-Token). `headers` must not hold hop-by-hop or user-agent headers, nor a
        NUL (none of ours do)."""
        stamp = timestamp or self.timestamp()
        credentials = self._credentials
        out = dict(headers)
        out["X-Amz-Date"] = stamp
        if credentials.token:
            out["X-Amz-Security-Token"] = credentials.token
        lines, signed = self._plan(headers)
        canonical = "\n".join((method, self._canonical_path(self.base_path + path), "", lines.replace("\0", stamp),
                               signed, hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256_HASH))
        day = stamp[:8]
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.digest(self._signing_key(day), to_sign.encode(), "sha256").hex()  # one C call
        out["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
                                f"SignedHeaders={signed}, Signature={signature}")
        return out


MAX_ANSWER_BYTES = 1 << 20  # APC answers are a few KB; anything near this is a broken or hostile peer


async def read_answer(response: ClientResponse, limit: int = MAX_ANSWER_BYTES) -> bytes | None:
    """The body, or None when it is longer than `limit`: read whole only when its declared length is
    within the limit, else (chunked, or no length) piece by piece, so memory stays bounded."""
    length = response.content_length
    if length is not None:
        return await response.read() if length <= limit else None
    body = bytearray()
    async for chunk in response.content.iter_any():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


@dataclass(slots=True)
class ApiFailure:
    """An AWS error answer, parsed: code, message and the modelled members (fieldList, Reason, ...)."""

    status: int
    code: str
    message: str = ""
    members: dict[str, Any] = field(default_factory=dict)

    @property
    def field_paths(self) -> list[str]:
        fields = self.members.get("fieldList")
        if not isinstance(fields, list):
            return []
        # the region's paths are member names, but a front door could echo a value: mask and bound them
        return [scrub(str(f["path"]), 80) for f in fields[:10] if isinstance(f, dict) and f.get("path")]


def parse_failure(status: int, error_type: str | None, body: bytes) -> ApiFailure:
    """rest-json names the code in `x-amzn-ErrorType` (`Code:uri` at times); awsJson in `__type`
    (`namespace#Code`). Either may be missing behind a proxy, so fall back to the body, then the status."""
    try:
        members = json.loads(body) if body else {}
    except ValueError:
        members = {}
    if not isinstance(members, dict):
        members = {}
    code = (error_type or "").split(":", 1)[0].strip()
    if not code:
        raw = str(members.get("__type") or members.get("code") or members.get("Code") or "")
        code = raw.rsplit("#", 1)[-1].split(":", 1)[0]
    if not code:
        code = {403: "AccessDeniedException", 404: "ResourceNotFoundException", 429: "ThrottlingException"}.get(
            status, "InternalServerException" if status >= 500 else f"HTTP{status}")
    message = members.get("message") or members.get("Message") or ""
    return ApiFailure(status, code, str(message), members)


_SECRETISH = re.compile(r"[0-9A-Fa-f]{8,}|\d(?:[ -]?\d){5,}")  # hex runs; 6+ digits, maybe split by spaces/dashes


def scrub(text: str, limit: int = 400) -> str:
    """A service message, safe for our errors and logs: runs of hex or digits (a PAN, a PIN block,
    key bytes echoed back) are masked, and the length is bounded."""
    clean = _SECRETISH.sub("<redacted>", text)  # mask first: a cut could split a PAN below the mask's length
    return clean[:limit] + "..." if len(clean) > limit else clean
