"""An AWS Payment Cryptography region as a node, the way a PKCS#11 token is one.

Why this shape: a region is remote, metered and shared. Requests are SigV4-signed rest-json over a
pool of warm keep-alive connections (hsmlb/apc/wire.py: botocore's model and signer, none of the
boto3 client's per-call CPU; hsmlb/apc/http.py: a lean HTTP/1.1 client for the data plane, aiohttp
for the rare control-plane calls); a local token bucket per key class keeps us under the account's
quota so the router moves excess traffic to another node instead of collecting ThrottlingExceptions;
and every HTTP outcome becomes an hsmlb.errors type here, once, with no request data in any message.
Start-up (credentials, endpoints, key inventory) runs in a thread and, when it fails, is retried in
the background with back-off, like a token worker's respawn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections import Counter
from typing import Any

import aiohttp
from botocore.credentials import ReadOnlyCredentials
from yarl import URL

from hsmlb.apc.discovery import Discovery, discover, resolve_credentials
from hsmlb.apc.http import AnswerTooLarge, HttpConnectionError, HttpPool
from hsmlb.apc.native import native_request, pick_canary
from hsmlb.apc.throttle import RegionQuotas, TokenBucket
from hsmlb.apc.wire import (
    AUTH_FAILURES,
    JSON,
    MAX_ANSWER_BYTES,
    ApiFailure,
    FastSigner,
    Json10Template,
    Signer,
    compile_data_plane,
    parse_failure,
    read_answer,
    scrub,
    verification_reasons,
)
from hsmlb.backends.base import BackendState
from hsmlb.clock import Clock, monotonic
from hsmlb.config import ApcRegionConfig
from hsmlb.errors import (
    DeadlineExceeded,
    InvalidArgument,
    KeyNotFound,
    NodeFault,
    PermissionDenied,
    Throttled,
    field_text,
    proto_name,
)
from hsmlb.ops import VERIFICATION_FAILED, Capability, Operation, map_key_identifiers

_MEMBER_PATH = re.compile(r"[A-Za-z0-9_.]*")
log = logging.getLogger("hsmlb.backends.apc")

THROTTLE_PAUSE_S = 0.1  # after a ThrottlingException, grant nothing locally for this long
CREDENTIAL_REFRESH_S = 60.0
KEEPALIVE_S = 30.0  # idle keep-alive connections live this long: under typical front-door idle timeouts
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 30.0
WARM_ROUNDS = 3
_JSON_HEADERS = {"Content-Type": JSON}
# A session default, so unsigned: aiohttp would offer gzip/deflate, but we read bodies raw
# (auto_decompress off), so a front door that honoured that offer would turn every answer into a fault.
_SESSION_HEADERS = {"Accept-Encoding": "identity"}


class ApcRegionBackend(BackendState):
    kind = "apc"
    capabilities = frozenset(Capability) - {Capability.SIGN, Capability.VERIFY, Capability.RANDOM}

    def __init__(self, config: ApcRegionConfig, fault_injection: bool = False, clock: Clock = monotonic) -> None:
        super().__init__()  # state "starting", no keys, no on_change callbacks yet
        self.config = config
        self.name = config.name
        self.fault_injection = fault_injection
        self.clock = clock
        q = config.quotas
        self.quotas = RegionQuotas(q.symmetric_per_s, q.asymmetric_per_s, q.burst_s, clock)
        self.templates = compile_data_plane()
        self.control_template = Json10Template.for_control_plane()
        self._arns: dict[str, str] = {}
        self._discovery: Discovery | None = None
        self._signer: Signer | None = None  # botocore's SigV4Auth: control-plane requests
        self._fast: FastSigner | None = None  # the same signature, precomputed: data-plane requests
        self._session: aiohttp.ClientSession | None = None  # the control plane (rare calls)
        self._data: HttpPool | None = None  # the data plane: hsmlb/apc/http.py, lean on the event loop
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = False
        # set when the region no longer matches discovery: keys gone (and "down"), or credentials rejected
        self._resync = asyncio.Event()
        self._canary: tuple[str, dict[str, Any]] | None = None
        self._timeout = aiohttp.ClientTimeout(total=config.request_timeout_s, connect=config.connect_timeout_s)
        self.counts: Counter[str] = Counter()
        self.warm_connections = 0
        self.restarts = 0
        self.credential_refreshes = 0

    # -- contract (state, keys and on_change come from BackendState) ---------------------------
    async def start(self) -> None:
        """Discover and pre-connect; if that fails the node is down and the supervisor retries."""
        try:
            await self._connect()
        except BaseException:
            self._set_state("down")
            raise
        finally:
            self._supervisor = asyncio.create_task(self._supervise(), name=f"supervise-{self.name}")

    def perform(self, op: Operation, slot: int) -> Any:
        return self._perform(op)

    async def probe(self) -> None:
        """A real signed request: the canary data-plane op, else a control-plane GetKey. Throttling
        or a caller-side answer still proves the region up; only node faults fail the probe."""
        if self._state != "up" or self._session is None:
            raise NodeFault(f"node {self.name} is {self._state}")
        await self._canary_call()

    async def inject_fault(self, fault: str, value: float = 0.0) -> None:
        raise InvalidArgument("fault injection for apc nodes is done at the emulator")

    async def close(self) -> None:
        self._closing = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._data is not None:
            self._data.close()
            self._data = None
        self._set_state("down")

    def stats(self) -> dict[str, Any]:
        return {"connections": self.config.connections, "warm_connections": self.warm_connections,
                "idle_connections": self.idle_connections(), "requests": dict(self.counts),
                "quotas": self.quotas.stats(), "restarts": self.restarts,
                "credential_refreshes": self.credential_refreshes}

    def idle_connections(self) -> int:
        """Idle keep-alive connections held now: the data plane's, and the control plane's where aiohttp's
        private pool can be read (it keeps no public count); -1 only when neither is known."""
        connector = self._session.connector if self._session is not None else None
        conns = getattr(connector, "_conns", None)
        control = sum(len(c) for c in conns.values()) if isinstance(conns, dict) else None
        data = self._data.idle_connections() if self._data is not None else None
        if control is None and data is None:
            return -1
        return (control or 0) + (data or 0)

    # -- request path -----------------------------------------------------------------------
    async def _perform(self, op: Operation) -> Any:
        if self._state != "up":
            raise NodeFault(f"node {self.name} is {self._state}")
        key = self._keys.get(op.key_alias) if op.key_alias else None
        if op.apc:
            operation, params = op.args
            params = map_key_identifiers(params, self._arns)
            extract = None
        else:  # an alias this region does not list goes through as is: the region answers NotFound
            operation, params, extract = native_request(op, key.label if key else op.key_alias or "")
        bucket = self.quotas.bucket(key.key_type if key else "AES")
        timeout = await self._admit(op, bucket)
        result = await self._call(operation, params, bucket, timeout, op)
        if extract is None:
            return result
        try:
            return bytes.fromhex(result[extract])
        except (KeyError, TypeError, ValueError):
            raise NodeFault(f"node {self.name}: {operation} answer has no valid {extract}") from None


    async def _admit(self, op: Operation, bucket: TokenBucket) -> float:
        """Take a quota token (waiting at most max_wait_s, within the deadline); the request timeout left."""
        timeout = self.config.request_timeout_s
        max_wait = self.config.quotas.max_wait_s
        if op.deadline is not None:
            remaining = op.deadline - self.clock()
            if remaining <= 0:
                raise DeadlineExceeded(f"node {self.name}: the deadline passed before the request was sent")
            max_wait = min(max_wait, remaining)
        wait = bucket.acquire(max_wait)
        if wait is None:
            self.counts["throttled_locally"] += 1
            raise Throttled(f"node {self.name}: {self.config.region} request quota ({bucket.rate:g}/s) in use")
        if wait > 0:
            await asyncio.sleep(wait)
        if op.deadline is not None:
            timeout = min(timeout, op.deadline - self.clock())
            if timeout <= 0:
                raise DeadlineExceeded(f"node {self.name}: the deadline passed while waiting for quota")
        return timeout

    async def _call(self, operation: str, params: dict[str, Any], bucket: TokenBucket | None, timeout: float,
                    op: Operation | None = None) -> dict[str, Any]:
        template = self.templates.get(operation)
        if template is None:
            raise InvalidArgument(f"{operation} is not an APC data-plane operation")
        path, body = template.render(params)
        status, error_type, raw = await self._send(template.method, path, _JSON_HEADERS, body, timeout, data=True)
        if status < 300:
            try:
                answer = json.loads(raw)
            except ValueError:
                answer = None
            problem = "a JSON object" if answer is None else template.bad_answer(answer)
            if problem is not None:
                self.counts["malformed_answer"] += 1
                raise NodeFault(f"node {self.name}: {operation} answer lacks {problem}")
            self.counts["ok"] += 1
            return answer
        return self._failure(parse_failure(status, error_type, raw), operation, bucket, op)

    async def _send(self, method: str, path: str, headers: dict[str, str], body: bytes, timeout: float,
                    data: bool) -> tuple[int, str | None, bytes]:
        session, pool, found, fast, signer = self._session, self._data, self._discovery, self._fast, self._signer
        if session is None or pool is None or found is None or fast is None or signer is None:
            raise NodeFault(f"node {self.name} is {self._state}")
        clipped = timeout < self.config.request_timeout_s
        try:
            if data:
                return await pool.request(method, path, fast.sign(method, path, headers, body), body, timeout)
            signed = signer.sign(method, found.control_url + path, headers, body)
            async with session.request(method, URL(found.control_url + path, encoded=True), data=body,
                                       headers=signed,
                                       timeout=aiohttp.ClientTimeout(total=timeout) if clipped else self._timeout
                                       ) as response:
                raw = await read_answer(response)
                if raw is None:
                    raise AnswerTooLarge()
                return response.status, response.headers.get("x-amzn-ErrorType"), raw
        except AnswerTooLarge:
            self.counts["oversized_answer"] += 1
            raise NodeFault(f"node {self.name}: answer over {MAX_ANSWER_BYTES} bytes") from None
        except TimeoutError:
            self.counts["timeout"] += 1
            if clipped:  # the caller's deadline, not the region, ran out
                raise DeadlineExceeded(f"node {self.name}: no answer before the deadline") from None
            raise NodeFault(f"node {self.name}: no answer within {timeout:g}s") from None
        except (aiohttp.ClientError, HttpConnectionError) as exc:
            self.counts["connection_error"] += 1
            raise NodeFault(f"node {self.name}: connection failed ({type(exc).__name__})") from None

    def _failure(self, failure: ApiFailure, operation: str, bucket: TokenBucket | None,
                 op: Operation | None) -> dict[str, Any]:
        """One place that turns an AWS error answer into a result or an hsmlb error."""
        code = failure.code
        self.counts[code] += 1
        message = scrub(failure.message)
        if code == "VerificationFailedException":
            template = self.templates.get(operation)
            if template is None or code not in template.errors:  # only Verify* model it: any other is garbled
                raise NodeFault(f"node {self.name}: {operation} answered {code}, which it does not model")
            reason = failure.members.get("Reason")  # a front door could echo request values here: enum only
            return {VERIFICATION_FAILED: reason if reason in verification_reasons() else "VERIFICATION_FAILED"}
        if code == "ValidationException":
            # APC's text may quote short values (a CVV, a PIN length) the mask cannot catch: paths only,
            # each cut at its first character that cannot be in a member path
            paths = [_MEMBER_PATH.match(path)[0] or "(request)" for path in failure.field_paths]  # type: ignore[index]
            rule = "the region refused this value"
            if paths:
                raise InvalidArgument("; ".join(field_text(path, rule) for path in paths),
                                      [(proto_name(path), rule) for path in paths])
            raise InvalidArgument("(request): the region refused the request as invalid")
        if code == "ResourceNotFoundException":
            if op is not None and op.key_alias in self._keys and all(a in self._keys for a in op.other_keys):
                # we sent ARNs discovery found here: the inventory is stale, not the caller wrong
                self._lost_sync(f"key {op.key_alias} is gone from the region")
                raise NodeFault(f"node {self.name}: region {self.config.region} no longer has key {op.key_alias}")
            what = f"key {op.key_alias}" if op is not None and op.key_alias else "the key"
            raise KeyNotFound(f"node {self.name}: region {self.config.region} has no {what}")
        if code == "AccessDeniedException":
            raise PermissionDenied(f"node {self.name}: {operation} denied by the region: {message}")
        if code == "ThrottlingException" or failure.status == 429:
            if bucket is not None:
                bucket.drain(THROTTLE_PAUSE_S)
            raise Throttled(f"node {self.name}: region {self.config.region} throttled {operation}")
        if code in AUTH_FAILURES or failure.status in (401, 403):
            if self._state == "up":  # rotated under us? the supervisor re-reads the credential chain
                self._resync.set()
            raise NodeFault(f"node {self.name}: region rejected our credentials ({code})")
        if failure.status >= 500:
            raise NodeFault(f"node {self.name}: {code} (HTTP {failure.status}) on {operation}")
        raise NodeFault(f"node {self.name}: unexpected {code} (HTTP {failure.status}) on {operation}")

    async def _control_call(self) -> dict[str, Any]:
        """A signed awsJson1_0 control-plane request through the same pool: GetKey, or one alias."""
        first = next(iter(self._keys.values()), None)
        operation, params = ("GetKey", {"KeyIdentifier": first.label}) if first else ("ListAliases", {"MaxResults": 1})
        headers, body = self.control_template.render(operation, params)
        status, error_type, raw = await self._send("POST", "/", headers, body, self.config.request_timeout_s,
                                                   data=False)
        if status < 300:
            try:
                answer = json.loads(raw or b"{}")
            except ValueError:
                answer = None
            if not isinstance(answer, dict):
                raise NodeFault(f"node {self.name}: {operation} answer is not a JSON object")
            return answer
        return self._failure(parse_failure(status, error_type, raw), operation, None, None)

    # -- lifecycle --------------------------------------------------------------------------
    async def _connect(self) -> None:
        found = await asyncio.to_thread(discover, self.config)
        self._discovery = found
        self._signer = Signer(found.frozen, self.config.region)
        self._fast = FastSigner(found.frozen, self.config.region, found.data_url)
        if self._data is not None and self._data.base_url != found.data_url:  # the endpoint moved
            self._data.close()
            self._data = None
        self._data = self._data or HttpPool(found.data_url, self.config.connections, host_header=self._fast.host,
                              connect_timeout_s=self.config.connect_timeout_s, keepalive_s=KEEPALIVE_S,
                              max_answer=MAX_ANSWER_BYTES, extra_headers=_SESSION_HEADERS)
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.config.connections, keepalive_timeout=KEEPALIVE_S)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout, trust_env=False,
                                                  auto_decompress=False, headers=_SESSION_HEADERS)
        self._canary = pick_canary(found.keys)
        self._keys = found.keys
        self._arns = {alias: key.label for alias, key in found.keys.items()}  # alias -> key ARN
        await self._warm()
        self._set_state("up")
        log.info("node %s up: region %s, %d keys, %d/%d warm connections", self.name, self.config.region,
                 len(self._keys), self.warm_connections, self.config.connections)

    async def _warm(self) -> None:
        """Open `connections` keep-alive connections now (that many concurrent signed canaries), so the
        first burst of traffic pays no TCP/TLS handshakes; a node fault here fails the start."""
        want = self.config.connections
        for _ in range(WARM_ROUNDS):
            missing = want - max(self.idle_connections(), 0)
            if missing <= 0:
                break
            results = await asyncio.gather(*(self._canary_call() for _ in range(missing)), return_exceptions=True)
            failure = next((r for r in results if isinstance(r, BaseException)), None)
            if failure is not None:
                raise failure
        self.warm_connections = self.idle_connections()

    async def _canary_call(self) -> None:
        """Outside the quota buckets (a few a second); any answer but a node fault means "up". The
        canary's key came from discovery, so "not found" means the inventory is stale: rediscover."""
        with contextlib.suppress(Throttled, InvalidArgument, PermissionDenied):
            try:
                if self._canary is not None:
                    await self._call(*self._canary, None, self.config.request_timeout_s)
                else:
                    await self._control_call()
            except KeyNotFound:
                self._lost_sync("the canary key is gone from the region")

    def _lost_sync(self, why: str) -> None:
        """The region no longer holds keys discovery found there: go down (the router drops the stale
        inventory on that change) and have the supervisor rediscover now."""
        if self._state != "up" or self._closing:
            return
        log.warning("node %s: %s; rediscovering", self.name, why)
        self._set_state("down")
        self._resync.set()

    async def _supervise(self) -> None:
        """Down: reconnect with back-off. Up: refresh the frozen credentials now and then, and re-read
        the credential chain (with back-off) when the region rejects them: a rotated file, say."""
        delay = reread_delay = RETRY_FIRST_S  # reconnects; credential re-reads while up
        while not self._closing:
            if self._state == "up":
                self._resync.clear()
                try:
                    await asyncio.wait_for(self._resync.wait(), CREDENTIAL_REFRESH_S)
                except TimeoutError:
                    await self._refresh_credentials()
                    continue
                if self._state == "up":
                    await asyncio.sleep(reread_delay)
                    fresh = await self._reload_credentials()
                    reread_delay = RETRY_FIRST_S if fresh else min(reread_delay * 2, RETRY_MAX_S)
                continue
            await asyncio.sleep(delay)
            try:
                await self._connect()
                self.restarts += 1
                delay = RETRY_FIRST_S
            except Exception as exc:  # anything: stay down, try again later
                delay = min(delay * 2, RETRY_MAX_S)
                log.warning("node %s: reconnect failed (%s); next try in %.1fs", self.name,
                            getattr(exc, "message", type(exc).__name__), delay)

    async def _refresh_credentials(self) -> None:
        found = self._discovery
        if found is None:
            return
        try:
            frozen = await asyncio.to_thread(found.credentials.get_frozen_credentials)
        except Exception as exc:  # keep signing with the old ones; the region will say when they expire
            log.warning("node %s: credential refresh failed (%s)", self.name, type(exc).__name__)
            return
        self._apply_credentials(frozen)
        self.credential_refreshes += 1

    async def _reload_credentials(self) -> bool:
        """The credential chain resolved again (static credentials never refresh themselves); True
        when it gave different credentials, now applied."""
        found = self._discovery
        try:
            fresh = await asyncio.to_thread(resolve_credentials, self.config)
        except Exception as exc:  # keep the old ones; the next rejection tries again, later
            log.warning("node %s: credential re-read failed (%s)", self.name, type(exc).__name__)
            return False
        if found is None or fresh is None or fresh[1] == found.frozen:
            return False
        found.credentials, found.frozen = fresh
        self._apply_credentials(found.frozen)
        self.credential_refreshes += 1
        log.info("node %s: new credentials from the chain after the region rejected the old ones", self.name)
        return True

    def _apply_credentials(self, frozen: ReadOnlyCredentials) -> None:
        for signer in (self._signer, self._fast):
            if signer is not None:
                signer.update(frozen)
