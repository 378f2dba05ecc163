"""The shadow budget through a real daemon (tokens primary, emulated regions candidate, shadow 100%):
at light load every primary answer is shadowed; under a saturating closed-loop load the client sees no
error and no wrong answer while the budget cuts the shadow rate and counts what it skips as
skipped{budget}; light load afterwards is fully shadowed again."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests._shadow_helpers import report, shadow_config
from tests.conftest import PaymentCluster, start_daemon

ROOT = Path(__file__).resolve().parent.parent
LIGHT = 100


def _light(channel: grpc.Channel) -> None:
    """One request at a time: the daemon is mostly idle."""
    stub = pb_grpc.OperationsStub(channel)
    request = pb.EncryptDataRequest(key_identifier="alias/zek-aes128", plain_text="6BC1BEE22E409F96E93D7E117393172A",
                                    encryption_attributes=pb.EncryptionDecryptionAttributes(
                                        symmetric=pb.SymmetricEncryptionAttributes(mode=pb.ECB)))
    for _ in range(LIGHT):
        assert stub.EncryptData(request, timeout=10).cipher_text == "3AD77BB40D7A3660A89ECAF32466EF97"


def _saturate(address: str, seconds: float = 3.0) -> dict[str, Any]:
    """bench/_load.py: StreamBatch, 16 operations a message, 128 outstanding (closed loop: the primary always
    has a backlog, and under the queue wait that sheds, so an error here would be the shadow's), answers checked."""
    load = subprocess.Popen([sys.executable, str(ROOT / "bench" / "_load.py"), "--address", address, "--mode",
                             "batch", "--seconds", str(seconds), "--window", "128", "--items", "16", "--check"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        out, _ = load.communicate("GO\n", timeout=180)
    finally:
        load.kill()
    assert load.returncode == 0, out
    return json.loads(out.strip().splitlines()[-1])


def _encrypt(channel: grpc.Channel) -> tuple[int, dict[str, int], Any]:
    """(shadow calls made, skipped by reason) of EncryptData, and the whole report."""
    rows = report(channel)
    r = rows.get("encrypt")
    reply = pb_grpc.AdminStub(channel).GetShadowReport(pb.GetShadowReportRequest(), timeout=10)
    if r is None:
        return 0, {}, reply
    return r.samples + r.candidate_errors, dict(r.skipped), reply


def test_saturation_shrinks_the_shadow_sample_not_the_primary(strict_payment_cluster: PaymentCluster,
                                                               tmp_path: Path):
    config = shadow_config(strict_payment_cluster, f"budget-{tmp_path.name}", budget_adaptive=True)
    daemon = start_daemon(config, tmp_path / "d.log")
    try:
        with daemon.channel() as channel:
            _light(channel)
            called, skipped, _ = _encrypt(channel)
            assert (called, skipped) == (LIGHT, {}), "light load: every answer shadowed"

            load = _saturate(daemon.address)
            assert load["ops"] > 0 and (load["errors"], load["wrong"]) == (0, 0), load
            called_sat, skipped_sat, reply = _encrypt(channel)
            assert skipped_sat.get("budget", 0) > 0, skipped_sat
            assert reply.budget_cuts > 0
            # every answer got a shadow decision, counted (the load's warm-up is served and counted too)
            assert called_sat - called + sum(skipped_sat.values()) >= load["ops"]

            time.sleep(1.0)  # a second without load: the rate is back at its ceiling (the probes it would have made)
            _light(channel)
            called_after, skipped_after, reply_after = _encrypt(channel)
            assert called_after - called_sat == LIGHT and skipped_after == skipped_sat, \
                f"light load after saturation: all shadowed again: {skipped_sat} -> {skipped_after}, {reply_after}"
        status = subprocess.run([sys.executable, "-m", "hsmlb", "shadow", "status", "--address", daemon.address],
                                capture_output=True, text=True, timeout=30, check=True).stdout
    finally:
        daemon.stop()
    assert "budget=" in status and "cut " in status

