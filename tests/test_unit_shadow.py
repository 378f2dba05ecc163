"""The shadow comparator and its counters, as pure policy: scripted stand-in nodes and a fake clock."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from hsmlb.errors import NodeFault, Throttled
from hsmlb.ops import NATIVE_CAPABILITIES, VERIFICATION_FAILED, Capability, KeyInfo, Operation, OpKind
from hsmlb.router.routes_config import RouteConfig
from hsmlb.shadow.compare import DISCREPANCY, MATCH, NOT_COMPARABLE, compare
from hsmlb.shadow.histogram import LatencyHistogram
from hsmlb.shadow.shadower import STARTS_PER_TURN
from tests.test_unit_routes import AES, _enc, _setup

SHADOW = RouteConfig(op="*", primary="hsm", failover=["apc"], candidate="apc", shadow_percent=100)
PIN = "041234FFFFFFFFFF"


async def _settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_every_answer_is_compared_and_a_differing_candidate_is_a_discrepancy_without_values():
    router, _, backends, _ = _setup(route=SHADOW)
    shadow = router.shadow
    assert shadow is not None
    for _ in range(20):
        result, _key = await router.execute(_enc())
        assert result == b"\x01" * 16
    await _settle()
    assert shadow.stats.of("encrypt").matches == 20
    backends["r1"].outcome = backends["r2"].outcome = b"\x02" * 16
    result, _key = await router.execute(_enc())
    assert result == b"\x01" * 16  # the caller gets the primary's answer, whatever the candidate says
    await _settle()
    stats = shadow.stats.of("encrypt")
    assert (stats.samples, stats.discrepancies) == (21, 1)
    record = shadow.stats.discrepancy_records()[0]
    assert (record.field, record.primary_length, record.candidate_length) == ("cipher_text", 16, 16)
    assert record.primary_kcv == record.candidate_kcv == "ABCDEF"
    assert "0101" not in repr(record) and "0202" not in repr(record)


async def test_candidate_errors_throttles_and_missing_capabilities_are_counted_not_returned():
    router, _, backends, _ = _setup(route=SHADOW)
    shadow = router.shadow
    assert shadow is not None
    backends["r1"].outcome = backends["r2"].outcome = NodeFault("region down")
    await router.execute(_enc())
    await _settle()  # a scripted node reads its outcome when its attempt runs
    backends["r1"].outcome = backends["r2"].outcome = Throttled("quota")
    await router.execute(_enc())
    await _settle()
    for name in ("r1", "r2"):
        backends[name].capabilities = NATIVE_CAPABILITIES - {Capability.RANDOM}
    await router.execute(Operation(OpKind.RANDOM, None, (8,)))
    await _settle()
    assert shadow.stats.of("encrypt").candidate_errors == {"UNAVAILABLE": 1}
    assert shadow.stats.of("encrypt").skipped == {"quota": 1}
    assert shadow.stats.of("random").skipped == {"no_capability": 1}
    report = {(r["op"], r["side"]): r for r in shadow.stats.report()}
    assert report[("encrypt", "candidate")]["candidate_errors"] == 1


async def test_stream_entry_is_shadowed_once():
    router, _, _, _ = _setup(route=SHADOW)
    attempt = router.start(_enc())
    await attempt.future
    router.succeeded(_enc(), attempt)
    await _settle()
    assert router.shadow is not None and router.shadow.stats.of("encrypt").matches == 1


async def test_a_batch_of_answers_starts_its_shadow_calls_a_few_per_loop_turn():
    """A batch's answers arrive in one turn; their shadow calls must not all start in the next one (each
    first step costs ~0.25 ms of loop CPU that the primary's next messages would wait behind)."""
    router, _, backends, _ = _setup(route=SHADOW)
    shadow = router.shadow
    assert shadow is not None
    ops = [_enc() for _ in range(10)]
    attempts = [router.start(op) for op in ops]
    await asyncio.gather(*(attempt.future for attempt in attempts))
    for op, attempt in zip(ops, attempts, strict=True):  # one loop turn, as a batch's answers
        router.succeeded(op, attempt)
    assert shadow.in_flight == 0  # nothing decided yet: the answers' writers go first
    await asyncio.sleep(0)  # the writers' turn
    await asyncio.sleep(0)
    assert shadow.in_flight == 10  # every one decided, in one turn
    started = [0]
    for _ in range(30):
        await asyncio.sleep(0)
        started.append(backends["r1"].calls + backends["r2"].calls)
    steps = [b - a for a, b in itertools.pairwise(started)]
    assert started[-1] == 10 and max(steps) <= STARTS_PER_TURN, started
    await _settle()
    assert (shadow.stats.of("encrypt").matches, shadow.in_flight) == (10, 0)


async def test_shadow_calls_in_flight_are_bounded_and_the_rest_skipped_as_shed():
    router, _, backends, _ = _setup(route=SHADOW)
    shadow = router.shadow
    assert shadow is not None
    shadow.max_in_flight = 3
    gate = asyncio.Event()
    backends["r1"].gate = backends["r2"].gate = gate
    for _ in range(10):
        await router.execute(_enc())  # never waits for the gated candidate
    await _settle()
    assert shadow.in_flight == 3
    gate.set()
    await _settle()
    stats = shadow.stats.of("encrypt")
    assert (stats.matches, stats.skipped) == (3, {"shed": 7})
    assert shadow.in_flight == 0


async def test_key_drift_is_its_own_outcome():
    """A region holding another key under the alias is excluded from it (the KCV majority is the tokens')
    and its shadow samples are key drift, with both KCVs in the record, not discrepancies."""
    router, _, backends, _ = _setup(route=SHADOW)
    backends["r1"].keys = {AES.alias: KeyInfo(AES.alias, AES.label, "AES", "999999", AES.usages)}
    backends["r2"].keys = {}
    router.cluster.rebuild()
    await router.execute(_enc())
    await _settle()
    assert router.shadow is not None
    stats = router.shadow.stats.of("encrypt")
    assert stats.key_drift == 1 and stats.discrepancies == 0
    record = router.shadow.stats.discrepancy_records()[0]
    assert (record.outcome, record.primary_kcv, record.candidate_kcv) == ("key_drift", "ABCDEF", "999999")


def test_compare_classes():
    enc = _enc()
    assert compare(enc, b"\x01" * 16, b"\x01" * 16)[0] == MATCH
    assert compare(enc, b"\x01" * 16, b"\x01" * 15 + b"\x00") == (DISCREPANCY, "cipher_text", 16, 16)
    mac = Operation(OpKind.GENERATE_MAC, "alias/m", ("CMAC", b"x", 4))
    assert compare(mac, b"\x01\x02\x03\x04\x05", b"\x01\x02\x03\x04")[0] == MATCH  # truncation as encoded
    vmac = Operation(OpKind.VERIFY_MAC, "alias/m", ("CMAC", b"x", b"\x01\x02"))
    assert compare(vmac, b"\x01\x02\x03", b"\x01\x03\x03")[:2] == (DISCREPANCY, "verified")

    def pin(fmt: str) -> Operation:
        return Operation(OpKind.TRANSLATE_PIN, "alias/pek", ("TranslatePinData", {
            "OutgoingTranslationAttributes": {fmt: {}}}), capability=Capability.PIN_TRANSLATION)

    assert compare(pin("IsoFormat0"), {"PinBlock": PIN}, {"PinBlock": PIN.lower()})[0] == MATCH
    assert compare(pin("IsoFormat0"), {"PinBlock": PIN}, {"PinBlock": "1" + PIN[1:]})[:2] == (DISCREPANCY, "PinBlock")
    assert compare(pin("IsoFormat4"), {"PinBlock": PIN}, {"PinBlock": "1" + PIN[1:]})[0] == NOT_COMPARABLE
    cvv = Operation(OpKind.VERIFY_CARD_VALIDATION, "alias/cvk", ("VerifyCardValidationData", {}), capability="c")
    assert compare(cvv, {}, {VERIFICATION_FAILED: "INVALID_VALIDATION_DATA"})[:2] == (DISCREPANCY, "reason")
    arqc = Operation(OpKind.VERIFY_ARQC, "alias/imk", ("VerifyAuthRequestCryptogram", {}), capability="e")
    assert compare(arqc, {"AuthResponseValue": "AB"}, {"AuthResponseValue": "AC"})[:2] == (DISCREPANCY,
                                                                                           "AuthResponseValue")
    assert compare(Operation(OpKind.RANDOM, None, (8,)), b"1", b"2")[0] == NOT_COMPARABLE
    pss = Operation(OpKind.SIGN, "alias/rsa", ("RSASSA_PSS_SHA_256", b"m"))
    assert compare(pss, b"1", b"2")[0] == NOT_COMPARABLE


def test_histogram_percentiles_are_close():
    h = LatencyHistogram()
    for i in range(1, 1001):
        h.record(i / 1000)  # 1 ms .. 1 s
    assert 0.47 <= h.quantile(0.5) <= 0.53
    assert 0.98 <= h.quantile(0.99) <= 1.04


async def test_primary_errors_are_counted_and_the_noise_baseline_compares_two_primary_nodes():
    noise = RouteConfig(op="*", primary="hsm", candidate="apc", shadow_percent=100, noise_percent=100)
    router, _, backends, _ = _setup(route=noise)
    assert router.shadow is not None
    for _ in range(10):
        await router.execute(_enc())
    await _settle()
    assert router.shadow.stats.of("encrypt", "noise").matches == 10
    backends["t2"].outcome = b"\x03" * 16  # one token disagrees: a finding in itself
    for _ in range(20):
        await router.execute(_enc())
    await _settle()
    assert router.shadow.stats.of("encrypt", "noise").discrepancies > 0
    backends["t1"].outcome = backends["t2"].outcome = NodeFault("tokens down")
    with pytest.raises(NodeFault):  # no failover pool in this route
        await router.execute(_enc())
    assert router.shadow.stats.of("encrypt").primary_errors == 1
