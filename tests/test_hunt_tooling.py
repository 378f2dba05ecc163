"""Bug hunt: the capacity suite's verdict must tell the truth, and `hsmlb dev up` must leave tokens
that match the keys file and the state dir, however often and after whatever change it runs.

The verdict tests run in-process (pure functions; Locust is never imported here, it would
monkey-patch this process). The dev tooling tests run the real `hsmlb dev up` on real SoftHSM2
tokens in a child process, and read the tokens back in another child (python-pkcs11 binds one
SOFTHSM2_CONF per process). Nothing here prints key material: tokens are compared by KCV and by a
hash of the public key.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import stat
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from hsmlb.dev.cluster import default_keys_file, find_module
from loadtest import profiles, verdict
from loadtest.profiles import Thresholds
from loadtest.verdict import Latency, RunSummary

ROOT = Path(__file__).resolve().parents[1]
DEV_UP_TIMEOUT_S = 120

# --------------------------------------------------------------------------------- verdict


def _locust_bucket(ms: float) -> int:
    """Locust 2.x `bucket_response_time`, written out here so this process never imports Locust."""
    if ms < 100:
        return round(ms)
    if ms < 1000:
        return int(round(ms, -1))
    if ms < 10000:
        return int(round(ms, -2))
    return int(round(ms, -3))


def _exact_nearest_rank(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    rank = max(1, math.ceil(Fraction(str(q)) * len(ordered)))  # exact decimal arithmetic
    return ordered[rank - 1]


def test_locust_rounding_cannot_hide_a_missed_p99() -> None:
    """Every request took 10.4 ms against a 10 ms target: Locust files them all under 10."""
    hist = {_locust_bucket(10.4): 1000}
    assert hist == {10: 1000}
    summary = RunSummary(1000, 0, 0.1, {"sym": verdict.latency_from_histogram(hist)})
    rows = verdict.evaluate(summary, Thresholds(1, {"sym": 10.0}), {"sym"})
    p99_row = next(r for r in rows if r.metric == "p99 sym (ms)")
    assert not p99_row.passed and verdict.exit_code(rows) == 1


@pytest.mark.parametrize("scale", [1.0, 12.0, 150.0])
def test_histogram_percentiles_never_understate_exact_ones(scale: float) -> None:
    rng = random.Random(int(scale))
    for _ in range(20):
        samples = [rng.lognormvariate(0, 0.6) * scale for _ in range(rng.randint(1, 3000))]
        hist: dict[float, int] = {}
        for s in samples:
            hist[_locust_bucket(s)] = hist.get(_locust_bucket(s), 0) + 1
        lat = verdict.latency_from_histogram(hist)
        for key, q in verdict.QUANTILES.items():
            exact = _exact_nearest_rank(samples, q)
            got = getattr(lat, key)
            assert exact <= got <= exact + 2 * (verdict.bucket_upper(got) - got), (key, len(samples))


def test_stream_client_percentiles_are_exact_nearest_rank() -> None:
    rng = random.Random(5)
    for n in (1, 2, 7, 100, 999, 1000, 1001, 4096):
        samples = [rng.uniform(0.1, 50.0) for _ in range(n)]
        lat = verdict.latency_from_samples(samples)
        assert lat.count == n
        for key, q in verdict.QUANTILES.items():
            assert getattr(lat, key) == _exact_nearest_rank(samples, q), (n, key)


def test_throughput_counts_successful_requests_only() -> None:
    """5,000 requests/s of which 20% failed is 4,000 transactions/s: a 5,000 TPS target is missed,
    even where an override tolerates that many failures."""
    lat = {"sym": Latency(50_000, 1.0, 2.0, 3.0, 4.0)}
    summary = RunSummary(50_000, 10_000, 10.0, lat)
    rows = verdict.evaluate(summary, Thresholds(5000, {"sym": 10.0}, max_failure_ratio=0.25), {"sym"})
    tps = next(r for r in rows if r.metric == "throughput (TPS)")
    assert not tps.passed and tps.measured == "4,000"
    assert verdict.exit_code(rows) == 1
    all_failed = RunSummary(50_000, 50_000, 10.0, lat)
    rows = verdict.evaluate(all_failed, Thresholds(1, {"sym": 10.0}, max_failure_ratio=1.0), {"sym"})
    assert verdict.exit_code(rows) == 1


def test_a_loosened_override_is_marked_in_the_verdict() -> None:
    base = profiles.get("burst")
    loose = profiles.with_overrides(base, min_tps=1, p99_sym_ms=5000)
    summary = RunSummary(20_000, 0, 10.0, {"sym": Latency(20_000, 1.0, 2.0, 3.0, 4.0)})
    rows = verdict.evaluate(summary, loose.thresholds, {"sym"}, profile=base.thresholds)
    assert verdict.exit_code(rows) == 0
    assert [r.metric for r in rows if r.loosened] == ["throughput (TPS)", "p99 sym (ms)"]
    assert "(profile 10,000)" in rows[0].target
    text = verdict.render("burst", rows, summary)
    assert "profile burst: PASS (thresholds loosened" in text
    data = json.loads(verdict.to_json("burst", rows, summary))
    assert data["loosened"] is True and data["passed"] is True
    assert verdict.from_json(verdict.to_json("burst", rows, summary))[1] == rows
    # A tighter override is the profile's claim and then some: not marked.
    tight = profiles.with_overrides(base, min_tps=20_000, p99_sym_ms=5.0, max_failure_ratio=0.0)
    rows = verdict.evaluate(summary, tight.thresholds, {"sym"}, profile=base.thresholds)
    assert not any(r.loosened for r in rows)
    assert "loosened" not in verdict.render("burst", rows, summary)


def test_zero_requests_fail_even_with_every_threshold_zeroed() -> None:
    empty = RunSummary(0, 0, 0.0, {})
    rows = verdict.evaluate(empty, Thresholds(0, {"sym": math.inf}, max_failure_ratio=1.0), {"sym"})
    assert verdict.exit_code(rows) == 1 and not any(r.passed for r in rows)
    assert "FAIL" in verdict.render("smoke", rows, empty).splitlines()[0]


# ------------------------------------------------------------------------------- dev tooling
_DUMP = """
import hashlib, json, sys
import pkcs11
from pkcs11 import Attribute, ObjectClass
lib = pkcs11.lib(sys.argv[1])
pin = open(sys.argv[2]).read().strip()
out = {}
for token in [t for t in lib.get_tokens() if t.label.strip()]:
    with token.open(user_pin=pin) as session:
        found = []
        for obj in session.get_objects():
            kind = obj[Attribute.CLASS]
            if kind == ObjectClass.PUBLIC_KEY:
                try:
                    value = obj[Attribute.MODULUS]
                except pkcs11.exceptions.PKCS11Error:
                    value = obj[Attribute.EC_POINT]
                mark = "pub:" + hashlib.sha256(bytes(value)).hexdigest()[:16]
            elif kind == ObjectClass.SECRET_KEY:
                mark = "kcv:" + bytes(obj[Attribute.CHECK_VALUE]).hex()
            else:
                mark = "private"
            found.append([obj[Attribute.LABEL], mark])
        out[token.label.strip()] = sorted(found)
print(json.dumps(out))
"""


def _dev_up(state_dir: Path, keys_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "hsmlb", "dev", "up", "--state-dir", str(state_dir), "--listen", "127.0.0.1:0"]
    if keys_file is not None:
        argv += ["--keys", str(keys_file)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=DEV_UP_TIMEOUT_S, cwd=ROOT, check=False)


def _tokens(state_dir: Path) -> dict[str, list[list[str]]]:
    env = {**os.environ, "SOFTHSM2_CONF": str(state_dir / "softhsm2.conf")}
    done = subprocess.run([sys.executable, "-c", _DUMP, str(find_module()), str(state_dir / "user.pin")],
                          capture_output=True, text=True, timeout=60, env=env, check=False)
    assert done.returncode == 0, done.stderr[-1500:]
    return json.loads(done.stdout)


def _rsa_public_mark(der: bytes) -> str:
    key = serialization.load_der_private_key(der, password=None)
    modulus = key.public_key().public_numbers().n  # type: ignore[union-attr]
    return "pub:" + hashlib.sha256(modulus.to_bytes(256, "big")).hexdigest()[:16]


def _marks(tokens: dict[str, list[list[str]]], node: str, alias: str) -> list[str]:
    return [mark for label, mark in tokens[node] if label == alias]


@pytest.fixture
def state(tmp_path: Path) -> Path:
    state_dir = tmp_path / "state"
    done = _dev_up(state_dir)
    assert done.returncode == 0, done.stderr[-1500:]
    return state_dir


def test_dev_up_twice_changes_nothing_and_keeps_secrets_private(state: Path) -> None:
    first = _tokens(state)
    done = _dev_up(state)
    assert done.returncode == 0, done.stderr[-1500:]
    assert _tokens(state) == first
    for node in ("node-a", "node-b", "node-c"):
        labels = [label for label, _ in first[node]]
        assert len(_marks(first, node, "alias/sign-rsa")) == 2  # one pair, no duplicates
        assert len(labels) == len(set(labels)) + 2  # only the two pairs share a label
    for name in ("user.pin", "so.pin", "generated/alias_sign-rsa.der", "generated/alias_sign-ec.der"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(state.stat().st_mode) == 0o700


def test_dev_up_replaces_a_pair_whose_state_dir_key_was_lost(state: Path) -> None:
    """The state dir's generated key is what tests verify signatures with; a token must hold the same."""
    der_path = state / "generated" / "alias_sign-rsa.der"
    before = _rsa_public_mark(der_path.read_bytes())
    assert _marks(_tokens(state), "node-a", "alias/sign-rsa") == sorted([before, "private"])
    der_path.unlink()
    done = _dev_up(state)
    assert done.returncode == 0, done.stderr[-1500:]
    now = _rsa_public_mark(der_path.read_bytes())
    assert now != before
    tokens = _tokens(state)
    for node in ("node-a", "node-b", "node-c"):
        assert _marks(tokens, node, "alias/sign-rsa") == sorted([now, "private"]), node


def test_dev_up_survives_a_truncated_generated_key(state: Path) -> None:
    der_path = state / "generated" / "alias_sign-ec.der"
    der_path.write_bytes(der_path.read_bytes()[:40])  # a write cut short
    done = _dev_up(state)
    assert done.returncode == 0, done.stderr[-1500:]
    serialization.load_der_private_key(der_path.read_bytes(), password=None)
    assert stat.S_IMODE(der_path.stat().st_mode) == 0o600
    assert len(_marks(_tokens(state), "node-b", "alias/sign-ec")) == 2


def test_dev_up_follows_a_changed_keys_file(state: Path, tmp_path: Path) -> None:
    """Changed material gets the new KCV; a removed alias and a narrowed `nodes` leave no old key behind."""
    before = _tokens(state)
    entries = yaml.safe_load(default_keys_file().read_text())
    entries = [e for e in entries if e["alias"] != "alias/only-node-a"]
    for entry in entries:
        if entry["alias"] == "alias/zek-aes128":
            entry["nodes"] = ["node-a"]
        if entry["alias"] == "alias/dek-aes256":
            entry["material_hex"] = "11" * 32
        if entry["alias"] == "alias/sign-ec":
            entry["algorithm"] = "RSA_2048"
    keys_file = tmp_path / "keys-changed.yaml"
    keys_file.write_text(yaml.safe_dump(entries))
    done = _dev_up(state, keys_file)
    assert done.returncode == 0, done.stderr[-1500:]
    after = _tokens(state)
    assert _marks(before, "node-a", "alias/only-node-a")
    assert not _marks(after, "node-a", "alias/only-node-a")
    assert _marks(after, "node-a", "alias/zek-aes128")
    assert all(not _marks(after, n, "alias/zek-aes128") for n in ("node-b", "node-c", "node-d"))
    new_kcv = _marks(after, "node-c", "alias/dek-aes256")
    assert new_kcv and new_kcv != _marks(before, "node-c", "alias/dek-aes256")
    der = (state / "generated" / "alias_sign-ec.der").read_bytes()
    assert _marks(after, "node-a", "alias/sign-ec") == sorted([_rsa_public_mark(der), "private"])  # RSA now
    unchanged = [label for label, _ in before["node-a"] if label not in (
        "alias/only-node-a", "alias/dek-aes256", "alias/sign-ec")]
    assert all(_marks(after, "node-a", a) == _marks(before, "node-a", a) for a in unchanged)
