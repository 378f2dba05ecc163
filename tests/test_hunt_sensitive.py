"""Bug hunt: a dynamic audit for sensitive data across every RPC and every failure path.

Distinctive PANs, PIN blocks and key-like hex are planted in EVERY string field of every request
type (valid and invalid spellings: wrong length, non-hex, separators, full-width digits), sent
unary and over the Stream, to a token daemon and to a region daemon, both logging at DEBUG. The
region sits behind a small aiohttp proxy on 127.0.0.1 that answers with bodies echoing the request
(5xx, ValidationException, AccessDenied, error types made of request values); tokens fail through
`error_rate` and `delay` faults with short deadlines; the Stream meets an undecodable message.
Then every error text, ListNodes and the whole of both daemons' and the emulator's output are
searched for the planted values, and for any 13-19 digit run or 16+ hex run not known to be safe.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from hsmlb.dev.regions import Emulator, dev_credentials, start_emulator
from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests._daemon_helpers import inject, wait_for
from tests._echo_proxy import ECHO_MODES, EchoProxy
from tests._sensitive_plant import PAN16, PANS, STREAM_FIELDS, VARIANTS, base_requests, leaks, planted_requests
from tests.conftest import Cluster, DaemonProcess, debug_logging, node_table, set_faults, start_daemon
from tests.test_sensitive_data import luhn_valid

RPC_S = 10
TOKEN_NODES = ("node-a", "node-b")
CODE_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}


def test_detector_sees_every_spelling() -> None:
    assert all(luhn_valid(p) for p in PANS)
    for value in VARIANTS:
        assert leaks(f"bad value {value!r}"), value
    assert not leaks(f"card {PAN16[:6]}******{PAN16[-4:]}; KCV 08D7B4; account 111122223333")


# ------------------------------------------------------------------------------ traffic

@dataclass
class Capture:
    errors: list[str] = field(default_factory=list)
    codes: dict[str, int] = field(default_factory=dict)
    replies: list[str] = field(default_factory=list)  # text fields of successful replies that are not results
    list_nodes: list[str] = field(default_factory=list)

    def error(self, code: str, text: str) -> None:
        self.errors.append(f"{code} {text}")
        self.codes[code] = self.codes.get(code, 0) + 1

    def reply(self, message: Any) -> None:
        reason = getattr(message, "reason", "")
        if reason:
            self.replies.append(reason)


def _unary(ops: pb_grpc.OperationsStub, cap: Capture, method: str, request: Any, timeout: float = RPC_S) -> None:
    try:
        cap.reply(getattr(ops, method)(request, timeout=timeout))
    except grpc.RpcError as err:
        cap.error(err.code().name, f"{err.details()} {err.debug_error_string()}")


def _stream(ops: pb_grpc.OperationsStub, cap: Capture, requests: list[tuple[str, Any]], timeout_ms: int = 0) -> None:
    messages = [pb.StreamRequest(request_id=i, timeout_ms=timeout_ms, **{STREAM_FIELDS[m]: r})
                for i, (m, r) in enumerate(requests, start=1)]
    try:
        for reply in ops.Stream(iter(messages), timeout=60):
            which = reply.WhichOneof("result")
            if which == "status":
                cap.error(CODE_NAMES.get(reply.status.code, str(reply.status.code)), reply.status.message)
            else:
                cap.reply(getattr(reply, which))
    except grpc.RpcError as err:
        cap.error(err.code().name, f"{err.details()} {err.debug_error_string()}")


def _garbage_stream(channel: grpc.Channel, cap: Capture) -> None:
    """A good message, then one whose key_identifier is not UTF-8 and carries a PAN: the reader fails."""
    good = pb.StreamRequest(request_id=1, encrypt_data=base_requests()["EncryptData"]).SerializeToString()
    inner = b"\x0a" + bytes([len(PAN16) + 2]) + b"\xff\xfe" + PAN16.encode()
    bad = b"\x08\x02" + b"\x52" + bytes([len(inner)]) + inner  # request_id 2, encrypt_data {key_identifier: ...}
    call = channel.stream_stream("/hsmlb.v1.Operations/Stream", request_serializer=lambda b: b,
                                 response_deserializer=pb.StreamResponse.FromString)
    try:
        for reply in call(iter([good, bad]), timeout=RPC_S):
            cap.reply(reply)
    except grpc.RpcError as err:
        cap.error(err.code().name, f"{err.details()} {err.debug_error_string()}")
    try:
        channel.unary_unary("/hsmlb.v1.Operations/TranslatePinData")(inner + b"\x12\x02\xc3", timeout=RPC_S)
    except grpc.RpcError as err:
        cap.error(err.code().name, f"{err.details()} {err.debug_error_string()}")


def _wait_up(channel: grpc.Channel, timeout: float) -> bool:
    """Bounded: until every node is up again (a NotFound for a listed key sends the region to rediscovery)."""
    admin = pb_grpc.AdminStub(channel)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(n.backend_state == "up" for n in admin.ListNodes(pb.ListNodesRequest(), timeout=RPC_S).nodes):
            return True
        time.sleep(0.1)
    return False


def _list_nodes(channel: grpc.Channel, cap: Capture) -> None:
    cap.list_nodes.append(str(pb_grpc.AdminStub(channel).ListNodes(pb.ListNodesRequest(), timeout=RPC_S)))


def _planted(ops: pb_grpc.OperationsStub, cap: Capture) -> None:
    requests = planted_requests()
    for method, request in requests:
        _unary(ops, cap, method, request)
    for start in range(0, len(requests), 200):
        _stream(ops, cap, requests[start:start + 200])


def drive_tokens(daemon: DaemonProcess) -> Capture:
    cap = Capture()
    bases = list(base_requests().items())
    with daemon.channel() as channel:
        ops = pb_grpc.OperationsStub(channel)
        _planted(ops, cap)
        _garbage_stream(channel, cap)
        inject(channel, TOKEN_NODES, "delay", 0.5)  # timeouts: the caller's deadline passes while the token sleeps
        for method, request in bases:
            _unary(ops, cap, method, request, timeout=0.1)
        _stream(ops, cap, bases, timeout_ms=50)
        inject(channel, TOKEN_NODES, "delay", 0.0)
        wait_for(lambda: all(n.sessions_in_use == n.queued == 0 for n in node_table(daemon).values()), 5)
        _list_nodes(channel, cap)
        inject(channel, TOKEN_NODES, "error_rate", 1.0)  # last: at 1.0 the worker fails the reset too
        for method, request in bases:
            _unary(ops, cap, method, request)
        _stream(ops, cap, bases)
        # health checks fail too, and leave their reasons
        wait_for(lambda: all(node_table(daemon)[n].detail for n in TOKEN_NODES), 5)
        _list_nodes(channel, cap)
    return cap


def drive_region(daemon: DaemonProcess, proxy: EchoProxy, region: Emulator) -> Capture:
    cap = Capture()
    bases = list(base_requests().items())
    with daemon.channel() as channel:
        ops = pb_grpc.OperationsStub(channel)
        _planted(ops, cap)
        _garbage_stream(channel, cap)
        for mode in ECHO_MODES:
            proxy.mode = mode
            try:
                for method, request in bases:
                    _unary(ops, cap, method, request)
                _stream(ops, cap, bases)
            finally:
                proxy.mode = "pass"
            _list_nodes(channel, cap)
            assert _wait_up(channel, 15), f"the region node did not come back after {mode}"
        for faults, timeout in (({"error_rate": 1.0}, RPC_S), ({"latency_ms": 400.0}, 0.15)):
            set_faults(region, **faults)
            try:
                for method, request in bases:
                    _unary(ops, cap, method, request, timeout=timeout)
                _stream(ops, cap, bases, timeout_ms=int(timeout * 1000) if timeout < 1 else 0)
            finally:
                set_faults(region)
            _list_nodes(channel, cap)
    return cap


# ------------------------------------------------------------------------------ the run

@dataclass
class Run:
    captures: dict[str, Capture]
    logs: dict[str, str]
    emulator: list[str]
    proxy_hits: dict[str, int]


@pytest.fixture(scope="module")
def run(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    directory = tmp_path_factory.mktemp("hunt-sensitive")
    with debug_logging():  # the daemons and the emulator log everything
        started: list[Callable[[], object]] = []
        try:
            region = start_emulator("apc-audit", "eu-west-1", cluster.keys_file, cluster.state_dir,
                                    fault_injection=True)
            started.append(region.stop)
            proxy = EchoProxy(region.endpoint_url)
            proxy.start()
            started.append(proxy.stop)
            tokens = start_daemon(cluster.write_variant(directory / "tokens.yaml", TOKEN_NODES, router={}),
                                  directory / "tokens.log")
            started.append(tokens.stop)
            node = {"name": "apc-audit", "kind": "apc", "region": "eu-west-1", "endpoint_url": proxy.url,
                    "credentials_file": str(dev_credentials(cluster.state_dir)[2]), "connections": 2,
                    "request_timeout_s": 1.0}
            # the region keeps taking requests through every failure: no ejection, a breaker that never opens
            regional = start_daemon(cluster.write_variant(directory / "region.yaml", (), [node], router={
                "outlier": {"observe_only": True}, "breaker": {"fail_max": 1_000_000}}), directory / "region.log")
            started.append(regional.stop)
        except BaseException:
            for stop in reversed(started):
                stop()
            raise
    try:
        captures = {"tokens": drive_tokens(tokens), "region": drive_region(regional, proxy, region)}
    finally:
        for stop in reversed(started):
            stop()  # the daemons flush everything, shutdown included
    yield Run(captures, {"tokens": tokens.log_text(), "region": regional.log_text()}, list(region.log),
              dict(proxy.hits))


def test_traffic_reached_every_path(run: Run) -> None:
    assert set(run.proxy_hits) == set(ECHO_MODES), run.proxy_hits
    tokens, region = run.captures["tokens"], run.captures["region"]
    for name, cap in run.captures.items():
        wanted = {"INVALID_ARGUMENT", "NOT_FOUND", "UNAVAILABLE", "DEADLINE_EXCEEDED"}
        assert wanted <= set(cap.codes), (name, cap.codes)
        assert len(cap.errors) > 1000, name
        assert "DEBUG" in run.logs[name], name
    assert "PERMISSION_DENIED" in region.codes
    assert "InjectedDeviceError" in "\n".join(tokens.errors)
    assert "stream message is not a valid StreamRequest" in "\n".join(tokens.errors)
    assert "faults now" in "\n".join(run.emulator)


def test_debug_logs_carry_no_signed_requests(run: Run) -> None:
    """botocore at DEBUG prints whole signed control-plane requests (Authorization, session tokens)."""
    for name, text in run.logs.items():
        assert "AWS4-HMAC-SHA256 Credential=" not in text and "X-Amz-Security-Token" not in text, name


@pytest.mark.parametrize("daemon", ["tokens", "region"])
def test_errors_carry_nothing_sensitive(run: Run, daemon: str) -> None:
    found = {e[:300]: leaks(e) for e in run.captures[daemon].errors if leaks(e)}
    assert found == {}


@pytest.mark.parametrize("daemon", ["tokens", "region"])
def test_list_nodes_carries_nothing_sensitive(run: Run, daemon: str) -> None:
    text = "\n".join(run.captures[daemon].list_nodes)
    assert "detail" in text
    assert leaks(text) == []


@pytest.mark.parametrize("daemon", ["tokens", "region"])
def test_daemon_log_carries_nothing_sensitive(run: Run, daemon: str) -> None:
    lines = run.logs[daemon].splitlines()
    assert len(lines) > 5
    assert {line[:300]: leaks(line) for line in lines if leaks(line)} == {}


def test_emulator_output_carries_nothing_sensitive(run: Run) -> None:
    assert {line[:300]: leaks(line) for line in run.emulator if leaks(line)} == {}


def test_verification_reasons_carry_nothing_sensitive(run: Run) -> None:
    """A failed verification's `reason` comes from the region's answer: a front door could put anything there."""
    reasons = run.captures["region"].replies
    assert reasons
    assert {r[:300]: leaks(r) for r in reasons if leaks(r)} == {}


def test_verification_failure_for_a_non_verify_op_is_not_internal(run: Run) -> None:
    assert "INTERNAL" not in run.captures["region"].codes, run.captures["region"].codes


def test_undecodable_unary_request_is_invalid_argument(run: Run) -> None:
    tokens = run.captures["tokens"]
    assert any(e.startswith("INVALID_ARGUMENT (request): the request is not a valid hsmlb.v1.TranslatePinDataRequest")
               for e in tokens.errors), tokens.codes
    assert all("UNKNOWN" not in cap.codes for cap in run.captures.values()), tokens.codes
