"""The Locust capacity suite: verdict functions, payload generators, and the one command end to end.

The end-to-end runs use a real dev cluster and daemon on loopback; nothing here asserts on timing
except through the verdict machinery itself (the smoke profile's lenient thresholds).
"""

from __future__ import annotations

import json
import math
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest import ops, paycrypto, profiles, verdict
from loadtest import payloads as pl
from loadtest.profiles import Thresholds
from loadtest.verdict import Latency, RunSummary

ROOT = Path(__file__).resolve().parents[1]
VECTORS = json.loads((ROOT / "tests" / "vectors" / "public_kat.json").read_text())["vectors"]
PAYMENT_OPS = "CardValidation,TranslatePin,AuthRequestCryptogram"


def _vectors(category: str) -> list[dict]:
    found = [v for v in VECTORS if v["category"] == category]
    assert found, category
    return found


def _summary(requests: int = 60_000, failures: int = 0, seconds: float = 10.0, sym_p99: float = 8.0,
             asym_p99: float | None = 20.0) -> RunSummary:
    latency = {"sym": Latency(requests, 2.0, 4.0, sym_p99, sym_p99 * 2)}
    if asym_p99 is not None:
        latency["asym"] = Latency(100, 10.0, 20.0, asym_p99, asym_p99)
    return RunSummary(requests, failures, seconds, latency)


# --------------------------------------------------------------------------------- verdict
def test_verdict_passes_when_every_threshold_holds() -> None:
    rows = verdict.evaluate(_summary(), Thresholds(5000, {"sym": 10.0}), {"sym"})
    assert [r.metric for r in rows] == ["throughput (TPS)", "p99 sym (ms)", "failure ratio"]
    assert all(r.passed for r in rows) and verdict.exit_code(rows) == 0
    text = verdict.render("symmetric", rows, _summary())
    assert "profile symmetric: PASS" in text and "FAIL" not in text


@pytest.mark.parametrize(("summary", "failing"), [
    (_summary(requests=40_000), "throughput (TPS)"),  # 4,000 TPS < 5,000
    (_summary(sym_p99=12.0), "p99 sym (ms)"),
    (_summary(failures=1), "failure ratio"),
    (_summary(asym_p99=None), "p99 asym (ms)"),  # the profile drives asym, but nothing was measured
    (_summary(asym_p99=51.0), "p99 asym (ms)"),
])
def test_verdict_fails_on_the_broken_threshold_only(summary: RunSummary, failing: str) -> None:
    rows = verdict.evaluate(summary, Thresholds(5000, {"sym": 10.0, "asym": 50.0}), {"sym", "asym"})
    assert [r.metric for r in rows if not r.passed] == [failing]
    assert verdict.exit_code(rows) == 1
    assert "FAIL" in verdict.render("p", rows)


def test_verdict_with_no_requests_fails_every_row() -> None:
    empty = RunSummary(0, 0, 0.0, {})
    rows = verdict.evaluate(empty, Thresholds(0, {"sym": 10.0}, max_failure_ratio=1.0), {"sym"})
    assert not any(r.passed for r in rows)


def test_verdict_extra_rows_and_json_round_trip() -> None:
    extra = [verdict.Row("drill node-a fail+restore", "failed -> active", "failed -> -", False)]
    rows = verdict.evaluate(_summary(), Thresholds(5000, {"sym": 10.0}), {"sym"}, extra)
    assert verdict.exit_code(rows) == 1
    name, back, summary = verdict.from_json(verdict.to_json("failover", rows, _summary()))
    assert (name, back, summary.requests, summary.latency) == ("failover", rows, 60_000, _summary().latency)


def test_percentiles_nearest_rank() -> None:
    hist = {1: 90, 5: 9, 40: 1}  # Locust-style {rounded ms: count}
    assert verdict.percentile_from_histogram(hist, 0.50) == 1
    assert verdict.percentile_from_histogram(hist, 0.99) == 5
    assert verdict.percentile_from_histogram(hist, 0.999) == 40
    assert math.isnan(verdict.percentile_from_histogram({}, 0.99))
    assert verdict.latency_from_samples(float(i) for i in range(1, 1001)).p99_ms == 990.0


def test_merge_by_class_keeps_rows_that_share_a_name() -> None:
    pairs = [("sym:EncryptData/X", {1: 2}), ("sym:EncryptData/X", {1: 3, 2: 1}), ("asym:Sign/Y", {9: 1})]
    assert verdict.merge_by_class(pairs) == {"sym": {1: 5, 2: 1}, "asym": {9: 1}}


def test_threshold_overrides() -> None:
    p = profiles.with_overrides(profiles.get("symmetric"), min_tps=1e8, p99_sym_ms=2.5, duration_s=3)
    assert (p.thresholds.min_tps, p.thresholds.p99_ms["sym"], p.duration_s) == (1e8, 2.5, 3)
    assert profiles.get("symmetric").thresholds.min_tps == 5000


# -------------------------------------------------------------------------------- payloads
def test_pans_are_luhn_valid_with_bin_prefixes() -> None:
    assert pl.luhn_check_digit("7992739871") == "3" and pl.luhn_valid("79927398713")
    assert not pl.luhn_valid("79927398710")
    rng = random.Random(5)
    for length in (16, 19):
        for _ in range(200):
            pan = pl.pan(rng, length)
            assert len(pan) == length and pl.luhn_valid(pan)
            assert pan.startswith(pl.BINS_16 if length == 16 else pl.BINS_19)


@pytest.mark.parametrize("vector", _vectors("PIN_BLOCK_ISO0"), ids=lambda v: v["id"])
def test_iso0_pin_block_matches_public_vectors(vector: dict) -> None:
    inputs = vector["inputs"]
    assert pl.iso0_pin_block(inputs["pin"], inputs["pan"]) == vector["expected"]["clear_pin_block"]


def test_generated_pin_blocks_are_well_formed() -> None:
    rng = random.Random(9)
    for _ in range(200):
        pan, pin = pl.pan(rng, rng.choice((16, 19))), pl.pin(rng)
        block = pl.iso0_pin_block(pin, pan)
        assert len(block) == 16 and all(c in "0123456789ABCDEF" for c in block)
        pin_field = f"{int(block, 16) ^ int('0000' + pan[-13:-1], 16):016X}"
        assert pin_field == f"0{len(pin)}{pin}".ljust(16, "F")


def test_other_payloads_are_well_formed() -> None:
    rng = random.Random(3)
    for _ in range(100):
        exp = pl.expiry(rng)
        assert len(exp) == 4 and 1 <= int(exp[2:]) <= 12 and pl.service_code(rng) in pl.SERVICE_CODES
        a = pl.arqc_input(rng)
        assert pl.luhn_valid(a.pan) and len(a.atc) == 4 and len(a.unpredictable_number) == 8
        assert len(bytes.fromhex(a.transaction_data)) == 37 and a.unpredictable_number in a.transaction_data
    for size in pl.mac_message_sizes(rng, 200):
        assert 64 <= size <= 512 and len(pl.iso8583_message(rng, size)) == size
    assert len(pl.data_blocks(rng, 16)) % 16 == 0 and len(pl.data_blocks(rng, 8)) % 8 == 0


def test_payment_crypto_matches_public_vectors() -> None:
    cvv = _vectors("CVV")[0]
    i = cvv["inputs"]
    assert paycrypto.cvv(bytes.fromhex(i["cvk"]), i["pan"], i["expiry"], i["service_code"]) == cvv["expected"]["cvv"]
    emv = next(v for v in _vectors("EMV_ARQC") if v["id"] == "emv-optA-csk-arqc-arpc")
    i, e = emv["inputs"], emv["expected"]
    mk = paycrypto.icc_master_key_option_a(bytes.fromhex(i["imk_ac"]), i["pan"], i["psn"])
    sk = paycrypto.common_session_key(mk, bytes.fromhex(i["csk_r"]))
    assert (paycrypto.kcv(mk), paycrypto.kcv(sk)) == (e["icc_mk_kcv"], e["sk_kcv"])
    assert paycrypto.iso9797_alg3(sk, bytes.fromhex(i["data_unpadded"])).hex().upper() == e["arqc"]


# ------------------------------------------------------------------------- ops and profiles
def test_every_profile_resolves_to_runnable_ops() -> None:
    for profile in profiles.PROFILES.values():
        assert set(profile.mix) <= set(ops.OPS), profile.name
        for group in profile.groups:
            runnable, notices = ops.resolve_mix(group.mix, stream=group.kind != "unary")
            required = {n for n in group.mix if not ops.OPS[n].optional}
            assert required <= set(runnable) and len(runnable) + len(notices) == len(group.mix)
        pools = ops.build_pools(sorted(ops.resolve_mix(profile.mix)[0]), size=2)
        assert all(len(p) == 2 for p in pools.values())


def test_schedule_follows_weights_and_make_tolerates_naming() -> None:
    order = ops.schedule({"a": 3, "b": 1}, length=1000)
    assert (order.count("a"), order.count("b")) == (750, 250)
    from hsmlb.v1 import hsmlb_pb2 as pb

    msg = ops.make(pb.EncryptDataRequest, KeyIdentifier="alias/x", encryption_attributes={"symmetric": {"mode": "CBC"}})
    assert msg.key_identifier == "alias/x" and msg.encryption_attributes.symmetric.mode == pb.CBC
    with pytest.raises(ops.Unavailable):
        ops.make(pb.EncryptDataRequest, no_such_field="x")


# ------------------------------------------------------------------------------ end to end
def _run(tmp_path: Path, *args: str, timeout: float = 80) -> subprocess.CompletedProcess[str]:
    """`python -m loadtest run`; past `timeout` it gets SIGINT, so its own teardown stops the daemon and
    workers it started (they live in their own session, which a plain kill of the runner would orphan)."""
    proc = subprocess.Popen([sys.executable, "-m", "loadtest", "run", "--report-dir", str(tmp_path), *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"loadtest ran past {timeout:.0f}s and was interrupted:\n{out[-2000:]}\n{err[-2000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _verdict(tmp_path: Path) -> dict:
    (report,) = tmp_path.iterdir()
    return json.loads((report / "verdict.json").read_text())


@pytest.mark.timeout(180)
def test_smoke_profile_end_to_end_passes(tmp_path: Path) -> None:
    done = _run(tmp_path, "--profile", "smoke", timeout=130)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "profile smoke: PASS" in done.stdout
    assert "FAIL" not in done.stdout.split("=== loadtest verdict", 1)[1]
    result = _verdict(tmp_path)
    assert result["passed"] and result["summary"]["failures"] == 0 and result["summary"]["requests"] > 0
    assert {"sym", "asym"} <= set(result["summary"]["latency"])
    assert any(k.startswith("grpc-stream ") for k in result["summary"]["ops"])  # the Stream users ran too
    assert any(k.startswith("batched ") for k in result["summary"]["ops"])  # and the SDK's gateway users
    assert "TPS = crypto operations completed successfully per second" in done.stdout
    assert "loadtest: daemon stopped (exit 0)" in done.stdout
    assert {"metric": "user exceptions", "target": "== 0", "measured": "0", "passed": True, "loosened": False} \
        in result["rows"]  # collected from the Locust worker processes, and none raised


@pytest.mark.timeout(120)
def test_impossible_threshold_fails_with_exit_1(tmp_path: Path) -> None:
    done = _run(tmp_path, "--profile", "smoke", "--duration", "3", "--min-tps", "100000000")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "profile smoke: FAIL" in done.stdout
    row = next(line for line in done.stdout.splitlines() if line.startswith("throughput (TPS)"))
    assert row.rstrip().endswith("FAIL")
    assert _verdict(tmp_path)["summary"]["failures"] == 0  # it failed on TPS only


@pytest.mark.timeout(120)
def test_burst_async_profile_drives_the_sdks_async_client(tmp_path: Path) -> None:
    done = _run(tmp_path, "--profile", "burst-async", "--duration", "2", "--min-tps", "1", "--p99-sym-ms", "5000",
                "--exclude", PAYMENT_OPS)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "profile burst-async: PASS" in done.stdout
    result = _verdict(tmp_path)
    assert result["summary"]["failures"] == 0 and result["client"]["kind"] == "sdk"
    assert 0 < result["client"]["batches"] < result["client"]["operations"]  # operations travelled batched


def test_user_exceptions_fail_the_verdict() -> None:
    summary = RunSummary(requests=10_000, failures=0, duration_s=1.0,
                         latency={"sym": Latency(10_000, 1.0, 2.0, 3.0, 4.0)})
    thresholds = Thresholds(min_tps=100, p99_ms={"sym": 10}, max_failure_ratio=0)
    clean = verdict.evaluate(summary, thresholds, {"sym"}, [verdict.exceptions_row(0)])
    raised = verdict.evaluate(summary, thresholds, {"sym"}, [verdict.exceptions_row(3)])
    assert verdict.exit_code(clean) == 0 and verdict.exit_code(raised) == 1
    assert [r.metric for r in raised if not r.passed] == ["user exceptions"]
