"""Shadowing through a real daemon: tokens primary, the emulated regions as the shadowed candidate.

Acceptance 1-3 of the shadowing issue: the symmetric and payment mix gives no discrepancy; what the
regions cannot serve is skipped (no capability); an ISO-4 translation is not comparable, never a
discrepancy; a region corrupting results is caught once per corrupted result while every client
answer stays byte-identical to a daemon without shadowing; a region slowed by 20 ms shows in the
candidate's p99, not the primary's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests._payment_common import PUBLIC
from tests._shadow_helpers import (
    REGIONS,
    emulator_injected,
    failed,
    report,
    shadow_config,
    stream,
    symmetric_and_payment_mix,
    unservable_by_regions,
)
from tests.conftest import PaymentCluster, set_faults, start_daemon

ROUNDS = 20
# (RPC field sent, the shadow report's op, the region operation that answers it): one each, so that a
# region's corrupted count per operation is the daemon's discrepancy count per op.
CORRUPTIBLE = (("encrypt_data", "encrypt", "EncryptData"), ("generate_mac", "generate_mac", "GenerateMac"),
               ("generate_card_validation_data", "generate_card_validation", "GenerateCardValidationData"))


def test_mix_at_full_shadow_has_no_discrepancy_and_skips_what_regions_cannot_serve(
        strict_payment_cluster: PaymentCluster, tmp_path: Path):
    mix = symmetric_and_payment_mix()
    config = shadow_config(strict_payment_cluster, f"full-{tmp_path.name}")
    daemon = start_daemon(config, tmp_path / "d.log")
    try:
        with daemon.channel() as channel:
            answers = stream(channel, (mix + unservable_by_regions()) * ROUNDS)
            assert failed(answers) == []
            batch = pb.BatchRequest(items=[pb.StreamRequest(request_id=i + 1, **{f: r})
                                           for i, (f, r) in enumerate(mix)])
            reply = pb_grpc.OperationsStub(channel).Batch(batch, timeout=30)  # the batched paths are shadowed too
            items = sorted(reply.items, key=lambda item: item.request_id)
            assert [item.WhichOneof("result") for item in items] == [f for f, _ in mix]
            by_op = report(channel)
        json_report = subprocess.run([sys.executable, "-m", "hsmlb", "shadow", "report", "--json", "--address",
                                      daemon.address], capture_output=True, text=True, timeout=30, check=True)
        status = subprocess.run([sys.executable, "-m", "hsmlb", "shadow", "status", "--address", daemon.address],
                                capture_output=True, text=True, timeout=30, check=True).stdout
    finally:
        daemon.stop()
    for op, r in by_op.items():
        assert (r.discrepancies, r.key_drift, sum(r.candidate_errors_by_status.values())) == (0, 0, 0), (op, r)
    for op in ("encrypt", "decrypt", "generate_mac", "generate_card_validation", "verify_arqc", "translate_pin"):
        assert by_op[op].matches >= ROUNDS + 1, (op, by_op[op])
    assert by_op["translate_pin"].not_comparable == ROUNDS + 1  # the ISO-4 one: randomized output
    assert dict(by_op["sign"].skipped) == {"no_capability": ROUNDS}
    assert dict(by_op["random"].skipped) == {"no_capability": ROUNDS}
    rows = {row["op"]: row for row in json.loads(json_report.stdout) if row["side"] == "candidate"}
    for name in ("op", "samples", "matches", "discrepancies", "key_drift", "candidate_errors", "not_comparable",
                 "skipped", "primary_p99_ms", "candidate_p99_ms"):
        assert name in rows["encrypt"], name
    assert rows["sign"]["skipped"] == {"no_capability": ROUNDS}
    assert rows["encrypt"]["samples"] == by_op["encrypt"].samples
    assert "*                          primary hsm    failover apc" in status and "candidate apc" in status
    assert "shadow calls in flight: 0/256" in status


def test_corrupted_candidate_results_are_each_caught_and_never_reach_a_client(
        strict_payment_cluster: PaymentCluster, tmp_path: Path):
    mix = [r for r in symmetric_and_payment_mix() if r[0] in {c[0] for c in CORRUPTIBLE}]
    assert len(mix) == 4  # two encrypts (ECB, CBC), one CMAC, one CVV
    quiet = {"health_check": {"interval_s": 60}}  # no region canary (an EncryptData) during the run
    plain = start_daemon(shadow_config(strict_payment_cluster, f"plain-{tmp_path.name}", shadow=False, router=quiet),
                         tmp_path / "plain.log")
    try:
        with plain.channel() as channel:
            expected = stream(channel, mix * ROUNDS)
    finally:
        plain.stop()
    daemon = start_daemon(shadow_config(strict_payment_cluster, f"corrupt-{tmp_path.name}", router=quiet),
                          tmp_path / "d.log")
    emulators = [strict_payment_cluster.emulator(name) for name in REGIONS]
    before = [emulator_injected(e) for e in emulators]
    try:
        for emulator in emulators:
            set_faults(emulator, corrupt_rate=0.3)
        with daemon.channel() as channel:
            answers = stream(channel, mix * ROUNDS)
            by_op = report(channel)
            records = str(pb_grpc.AdminStub(channel).GetShadowReport(pb.GetShadowReportRequest(), timeout=10))
    finally:
        for emulator in emulators:
            set_faults(emulator)
        daemon.stop()
    assert answers == expected  # byte for byte: the candidate never changes what a caller gets
    after = [emulator_injected(e) for e in emulators]
    for _field, op, operation in CORRUPTIBLE:
        key = f"corrupted:{operation}"
        corrupted = sum(a.get(key, 0) - b.get(key, 0) for a, b in zip(after, before, strict=True))
        assert corrupted > 0, op
        assert by_op[op].discrepancies == corrupted, (op, by_op[op].discrepancies, corrupted)
        assert by_op[op].samples == by_op[op].matches + corrupted
    log = (tmp_path / "d.log").read_text()
    assert "shadow discrepancy" in log
    pan = PUBLIC["cvv-worked-example-111"]["inputs"]["pan"]
    for text in (log, records):  # names and lengths only, never a result or a PAN
        assert "3AD77BB40D7A3660A89ECAF32466EF97" not in text and pan not in text


def test_slow_candidate_shows_in_its_p99_not_the_primarys(strict_payment_cluster: PaymentCluster, tmp_path: Path):
    mix = [r for r in symmetric_and_payment_mix() if r[0] == "encrypt_data"]
    daemon = start_daemon(shadow_config(strict_payment_cluster, f"slow-{tmp_path.name}"), tmp_path / "d.log")
    emulators = [strict_payment_cluster.emulator(name) for name in REGIONS]
    try:
        with daemon.channel() as channel:
            for emulator in emulators:
                set_faults(emulator, latency_ms=20)
            ops = pb_grpc.OperationsStub(channel)
            for _ in range(100):  # one at a time: the primary's latency is its service time, not a queue
                for _field, request in mix:
                    ops.EncryptData(request, timeout=10)
            slow = report(channel)["encrypt"]
    finally:
        for emulator in emulators:
            set_faults(emulator)
        daemon.stop()
    print(f"\nFIGURE +20 ms candidate: primary p50/p99 {slow.primary_p50_ms:.2f}/{slow.primary_p99_ms:.2f} ms, "
          f"candidate p50/p99 {slow.candidate_p50_ms:.2f}/{slow.candidate_p99_ms:.2f} ms ({slow.samples} samples)")
    assert slow.samples == 200
    assert slow.candidate_p50_ms >= 20 and slow.candidate_p99_ms >= 20  # a sleep: a lower bound, not a timing
    assert slow.primary_p99_ms < slow.candidate_p50_ms
