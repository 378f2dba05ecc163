"""Region outages and throttling under short, bounded payment load, through the real daemon.

(a) A region that fails every request (emulator error_rate 1.0), and a region whose process is
    killed, while CVV / PIN translation / ARQC / encryption traffic runs: no request fails (the
    daemon retries on the other region or the host-side tokens), the region leaves rotation, and
    it is readmitted once healthy again.
(b) Ops that only a stopped region could serve (node-d holds cvk-1 as a strict token) answer
    UNAVAILABLE at once, while native ops go on on node-d.
(c) A throttling region is never ejected: requests still succeed, its `throttled` count rises and
    it serves a smaller share.

Load is a grpc.aio Stream with a bounded window; every loop here is bounded in count and time.
Figures (detection and readmission times, latencies, shares) are printed (`pytest -s`), never
asserted. Fault switches are restored in `finally` blocks: the session cluster is shared.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from hsmlb.dev.regions import Emulator, region_node_config, start_emulator
from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests._payment_backend import arqc_request, cvv1, fmt0, tdes
from tests._payment_common import MATERIAL, PUBLIC, h
from tests._routing_helpers import nodes, not_routable, wait_state
from tests.conftest import DaemonProcess, PaymentCluster, set_faults, start_daemon, sym

IN_FLIGHT = 32
LOAD_MAX_S = 30.0
DETECT_MAX_S = 10.0
READMIT_MAX_S = 30.0
RPC_TIMEOUT = 10


def figure(text: str) -> None:
    print(f"\nFIGURE {text}", flush=True)


# ------------------------------------------------------------------------------ the request mix

@dataclass(frozen=True)
class Template:
    field: str
    request: Any
    check: Callable[[Any], bool]


def _mix() -> list[Template]:
    cvv = PUBLIC["cvv-worked-example-111"]
    a4 = PUBLIC["dukpt-tdes-x9.24-1-2009-A4"]
    step, pan = a4["expected"]["sequence"][0], a4["inputs"]["pan"]
    zone_block = h(tdes(MATERIAL["alias/pek-tdes"], bytes.fromhex(a4["inputs"]["clear_pin_block_iso0"])))
    arqc, arpc = arqc_request("emv-pyemv-cvn10")
    return [
        Template("generate_card_validation_data", pb.GenerateCardValidationDataRequest(
            key_identifier="alias/cvk-1", primary_account_number=cvv["inputs"]["pan"],
            generation_attributes=cvv1(cvv["inputs"]["expiry"], cvv["inputs"]["service_code"])),
            lambda r: r.validation_data == cvv["expected"]["cvv"]),
        Template("translate_pin_data", pb.TranslatePinDataRequest(
            incoming_key_identifier="alias/bdk-tdes", outgoing_key_identifier="alias/pek-tdes",
            incoming_translation_attributes=fmt0(pan), outgoing_translation_attributes=fmt0(pan),
            encrypted_pin_block=step["encrypted_pin_block"],
            incoming_dukpt_attributes=pb.DukptDerivationAttributes(key_serial_number=step["ksn"])),
            lambda r: r.pin_block == zone_block),
        Template("verify_auth_request_cryptogram", arqc, lambda r: r.verified and r.auth_response_value == arpc),
        Template("encrypt_data", pb.EncryptDataRequest(
            key_identifier="alias/zek-aes128", plain_text="6BC1BEE22E409F96E93D7E117393172A",
            encryption_attributes=sym(pb.ECB)), lambda r: r.cipher_text == "3AD77BB40D7A3660A89ECAF32466EF97"),
    ]


MIX = _mix()
CVV_ONLY = MIX[:1]


@dataclass
class Tally:
    sent: int = 0
    ok: int = 0
    failures: Counter[str] = field(default_factory=Counter)

    @property
    def failed(self) -> int:
        return self.sent - self.ok  # errors, wrong results and unanswered requests alike


async def stream_load(ops: pb_grpc.OperationsStub, mix: list[Template], total: int, tally: Tally | None = None,
                      in_flight: int = IN_FLIGHT) -> Tally:
    """`total` requests over one Stream, at most `in_flight` unanswered; every answer checked."""
    tally = tally or Tally()
    window = asyncio.Semaphore(in_flight)
    deadline = time.monotonic() + LOAD_MAX_S

    async def requests():  # type: ignore[no-untyped-def]
        for i in range(total):
            if time.monotonic() > deadline:
                return
            await window.acquire()
            tally.sent += 1
            t = mix[i % len(mix)]
            yield pb.StreamRequest(request_id=i, **{t.field: t.request})

    call = ops.Stream(requests(), timeout=LOAD_MAX_S + RPC_TIMEOUT)
    async for response in call:
        window.release()
        t = mix[response.request_id % len(mix)]
        kind = response.WhichOneof("result")
        if kind == t.field and t.check(getattr(response, kind)):
            tally.ok += 1
        elif kind == "status":
            tally.failures[f"{t.field}: {_code(response.status.code)}: {response.status.message}"] += 1
        else:
            tally.failures[f"{t.field}: wrong result"] += 1
    return tally


def _code(value: int) -> str:
    return next((c.name for c in grpc.StatusCode if c.value[0] == value), str(value))


def shares(before: dict[str, pb.NodeStatus], after: dict[str, pb.NodeStatus]) -> dict[str, float]:
    served = {name: after[name].ops_ok - before[name].ops_ok for name in after}
    total = sum(served.values()) or 1
    return {name: count / total for name, count in served.items()}


async def poll_states(admin: pb_grpc.AdminStub, node: str, stop: asyncio.Event, seen: list[str],
                      step_s: float = 0.05) -> None:
    """Record `node`'s state every step_s until `stop` (bounded by LOAD_MAX_S)."""
    deadline = time.monotonic() + LOAD_MAX_S
    while not stop.is_set() and time.monotonic() < deadline:
        seen.append((await nodes(admin))[node].state)
        await asyncio.sleep(step_s)


async def faults(emulator: Emulator, **settings: float) -> None:
    await asyncio.to_thread(set_faults, emulator, **settings)


@pytest.fixture
def full_daemon(strict_payment_cluster: PaymentCluster, tmp_path: Path) -> Iterator[DaemonProcess]:
    """Tokens node-a..d and regions apc-east/apc-west, a daemon of the test's own."""
    daemon = start_daemon(strict_payment_cluster.config, tmp_path / "full.log")
    yield daemon
    daemon.stop()


def own_region_config(cluster: PaymentCluster, keep: list[str], emulator: Emulator, name: str) -> Path:
    """A config of some cluster nodes plus a region served by an emulator of the test's own."""
    return cluster.variant(keep, name, extra_nodes=[region_node_config(emulator, cluster.state_dir)])


# ------------------------------------------------------------------------------ (a) outages

async def test_region_failing_every_request_fails_no_request(strict_payment_cluster: PaymentCluster,
                                                              full_daemon: DaemonProcess) -> None:
    east = strict_payment_cluster.emulator("apc-east")
    async with grpc.aio.insecure_channel(full_daemon.address) as channel:
        ops, admin = pb_grpc.OperationsStub(channel), pb_grpc.AdminStub(channel)
        start = await nodes(admin)
        warm = await stream_load(ops, MIX, 400)
        assert warm.failed == 0, warm.failures
        before = await nodes(admin)
        assert before["apc-east"].ops_ok > start["apc-east"].ops_ok, "apc-east served nothing before the outage"
        try:
            await faults(east, error_rate=1.0)
            fault_at = time.monotonic()
            out = asyncio.create_task(wait_state(admin, "apc-east", lambda s: not_routable(s.state), DETECT_MAX_S))
            load = await stream_load(ops, MIX, 1500)
            out_at, out_status = await out
            during = await nodes(admin)
        finally:
            await faults(east)
        healed_at = time.monotonic()
        back_at, back_status = await wait_state(admin, "apc-east", lambda s: s.state.startswith("healthy"),
                                                READMIT_MAX_S)
        served_again = await _served_again(ops, admin, "apc-east")
    east_before, east_during = before["apc-east"], during["apc-east"]
    figure(f"error-rate outage: {load.sent} requests, {load.failed} failed; apc-east out of rotation "
           f"{'never' if out_at is None else f'{(out_at - fault_at) * 1000:.0f} ms'} after the fault "
           f"({out_status.state!r}), ejections {east_before.ejections}->{east_during.ejections}, "
           f"faults seen by live traffic {east_during.ops_failed - east_before.ops_failed}, retried elsewhere "
           f"{east_during.retries_from - east_before.retries_from}; readmitted "
           f"{'never' if back_at is None else f'{back_at - healed_at:.2f} s'} after the fault was cleared "
           f"({back_status.state!r})")
    assert load.sent == 1500 and load.failed == 0, load.failures
    assert out_at is not None, out_status.state
    assert east_during.ops_failed > east_before.ops_failed  # live traffic did meet the fault ...
    assert east_during.retries_from > east_before.retries_from  # ... and was retried elsewhere
    assert back_at is not None, back_status.state
    assert served_again


async def _served_again(ops: pb_grpc.OperationsStub, admin: pb_grpc.AdminStub, node: str, rounds: int = 8) -> bool:
    """Bounded rounds of load until `node` answers some of it again (slow start gives it a small share)."""
    for _ in range(rounds):
        before = (await nodes(admin))[node].ops_ok
        tally = await stream_load(ops, MIX, 300)
        assert tally.failed == 0, tally.failures
        if (await nodes(admin))[node].ops_ok > before:
            return True
        await asyncio.sleep(0.5)
    return False


async def test_killed_region_process_fails_no_request(strict_payment_cluster: PaymentCluster,
                                                      tmp_path: Path) -> None:
    cluster = strict_payment_cluster
    own = start_emulator("apc-own", "eu-west-1", cluster.keys_file, cluster.state_dir, fault_injection=True)
    try:
        config = own_region_config(cluster, ["node-a", "node-b", "apc-west"], own, "own-region")
        daemon = start_daemon(config, tmp_path / "own-region.log")
        try:
            async with grpc.aio.insecure_channel(daemon.address) as channel:
                ops, admin = pb_grpc.OperationsStub(channel), pb_grpc.AdminStub(channel)
                warm = await stream_load(ops, MIX, 300)
                before = await nodes(admin)
                assert warm.failed == 0 and before["apc-own"].ops_ok > 0, (warm.failures, before["apc-own"].ops_ok)
                tally = Tally()
                load = asyncio.create_task(stream_load(ops, MIX, 2000, tally))
                for _ in range(200):  # let it run a little, then kill the region mid-load
                    if tally.ok >= 300 or load.done():
                        break
                    await asyncio.sleep(0.01)
                own.process.kill()
                killed_at, answered_at_kill = time.monotonic(), tally.ok
                out = asyncio.create_task(wait_state(admin, "apc-own", lambda s: not_routable(s.state),
                                                     DETECT_MAX_S))
                await load
                out_at, out_status = await out
                after = await nodes(admin)
        finally:
            daemon.stop()
    finally:
        own.stop()
    figure(f"killed region process: {tally.sent} requests ({answered_at_kill} answered before the kill), "
           f"{tally.failed} failed; apc-own out of rotation "
           f"{'never' if out_at is None else f'{(out_at - killed_at) * 1000:.0f} ms'} after SIGKILL "
           f"({out_status.state!r}); faults seen by live traffic "
           f"{after['apc-own'].ops_failed - before['apc-own'].ops_failed}, retried elsewhere "
           f"{after['apc-own'].retries_from - before['apc-own'].retries_from}")
    assert tally.sent == 2000 and tally.failed == 0, tally.failures
    assert out_at is not None, out_status.state
    assert own.process.returncode is not None


# ------------------------------------------------------------------------------ (b) nothing else can serve

async def test_op_only_a_stopped_region_could_serve_is_unavailable(strict_payment_cluster: PaymentCluster,
                                                                   tmp_path: Path) -> None:
    cluster = strict_payment_cluster
    mix_cvv, encrypt = MIX[0], MIX[3]
    own = start_emulator("apc-solo", "eu-central-1", cluster.keys_file, cluster.state_dir, fault_injection=True)
    try:
        daemon = start_daemon(own_region_config(cluster, ["node-d"], own, "solo-region"), tmp_path / "solo.log")
        try:
            async with grpc.aio.insecure_channel(daemon.address) as channel:
                ops, admin = pb_grpc.OperationsStub(channel), pb_grpc.AdminStub(channel)
                reply = await ops.GenerateCardValidationData(mix_cvv.request, timeout=RPC_TIMEOUT)
                assert mix_cvv.check(reply)  # served by the region while it runs
                own.stop()
                before = await nodes(admin)
                codes: Counter[str] = Counter()
                latencies: list[float] = []
                for _ in range(60):
                    started = time.monotonic()
                    try:
                        await ops.GenerateCardValidationData(mix_cvv.request, timeout=RPC_TIMEOUT)
                        codes["OK"] += 1
                    except grpc.aio.AioRpcError as exc:
                        codes[exc.code().name] += 1
                        assert mix_cvv.request.primary_account_number not in (exc.details() or "")
                    latencies.append(time.monotonic() - started)
                encrypted = 0
                for _ in range(60):
                    reply = await ops.EncryptData(encrypt.request, timeout=RPC_TIMEOUT)
                    encrypted += encrypt.check(reply)
                after = await nodes(admin)
        finally:
            daemon.stop()
    finally:
        own.stop()
    ms = sorted(x * 1000 for x in latencies)
    figure(f"UNAVAILABLE for cvk-1 with its only capable holder stopped: {dict(codes)}; latency median "
           f"{statistics.median(ms):.2f} ms (min {ms[0]:.2f}, max {ms[-1]:.2f}); EncryptData on node-d {encrypted}/60 "
           f"(apc-solo then {after['apc-solo'].state!r})")
    assert codes == Counter({"UNAVAILABLE": 60})
    assert encrypted == 60
    assert after["node-d"].ops_ok - before["node-d"].ops_ok == 60  # every encryption answered by node-d
    skipped = after["node-d"].skipped_ops["card_validation"] - before["node-d"].skipped_ops["card_validation"]
    assert skipped == 60
    assert after["node-d"].state.startswith("healthy") and after["node-d"].ops_failed == 0


# ------------------------------------------------------------------------------ (c) throttling

async def test_throttling_region_is_never_ejected(strict_payment_cluster: PaymentCluster,
                                                  full_daemon: DaemonProcess) -> None:
    east = strict_payment_cluster.emulator("apc-east")
    async with grpc.aio.insecure_channel(full_daemon.address) as channel:
        ops, admin = pb_grpc.OperationsStub(channel), pb_grpc.AdminStub(channel)
        start = await nodes(admin)
        baseline = await stream_load(ops, MIX, 1000)
        before = await nodes(admin)
        seen: list[str] = []
        stop = asyncio.Event()
        try:
            await faults(east, throttle_rate=0.5)
            poller = asyncio.create_task(poll_states(admin, "apc-east", stop, seen))
            throttled = await stream_load(ops, MIX, 1000)
            stop.set()
            await poller
            after = await nodes(admin)
        finally:
            stop.set()
            await faults(east)
    share_before, share_during = shares(start, before), shares(before, after)
    figure(f"throttling (apc-east throttle_rate 0.5): baseline {baseline.sent} requests, {baseline.failed} failed; "
           f"throttled {throttled.sent} requests, {throttled.failed} failed; apc-east throttled "
           f"{before['apc-east'].throttled}->{after['apc-east'].throttled}, ejections "
           f"{before['apc-east'].ejections}->{after['apc-east'].ejections}, states seen {sorted(set(seen))}; "
           f"shares before {_fmt(share_before)}; while throttled {_fmt(share_during)}")
    assert baseline.failed == 0 and throttled.failed == 0, (baseline.failures, throttled.failures)
    assert after["apc-east"].throttled > before["apc-east"].throttled
    assert after["apc-east"].ejections == start["apc-east"].ejections
    assert seen and all(state.startswith("healthy") for state in seen), sorted(set(seen))
    assert after["apc-east"].state.startswith("healthy") and after["apc-east"].breaker == "closed"
    assert after["apc-east"].ops_failed == start["apc-east"].ops_failed  # throttling is not a fault
    assert share_during["apc-east"] < share_before["apc-east"]


def _fmt(share: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.1%}" for name, value in share.items())
